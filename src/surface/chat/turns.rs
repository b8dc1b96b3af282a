//! The chat request's conversation as the neutral request: messages → [`Turn`]s (tool
//! calls and results in the emulation's text form, images as parts, an assistant turn's
//! reasoning under the provider's thinking field) and sampling → [`Sampling`].

use crate::core::request::{ImageUrl, Sampling, Thinking, Turn, TurnContent, TurnPart};
use crate::pipeline::tools::{encode_result, function_calls_block, ToolSet};
use crate::surface::chat::request::{ChatRequest, Content, Message, Part, Role, Stop};

pub fn params(req: &ChatRequest) -> Sampling {
    Sampling {
        temperature: req.temperature,
        top_p: req.top_p,
        max_tokens: req.max_completion_tokens.or(req.max_tokens),
        stop: req.stop.as_ref().map(|s| match s {
            Stop::One(s) => vec![s.clone()],
            Stop::Many(v) => v.clone(),
        }),
        presence_penalty: req.presence_penalty,
        frequency_penalty: req.frequency_penalty,
        seed: req.seed,
    }
}

/// The client's messages as the upstream's history; `thinking_field` names the field every
/// assistant message carries (`None`: none).
pub fn convert_messages(
    messages: &[Message],
    tools: Option<&ToolSet>,
    thinking_field: Option<&'static str>,
) -> Vec<Turn> {
    messages
        .iter()
        .enumerate()
        .map(|(i, m)| match m.role {
            Role::System | Role::Developer => Turn {
                role: "system",
                content: convert_content(&m.content),
                thinking: None,
            },
            Role::User => Turn {
                role: "user",
                content: convert_content(&m.content),
                thinking: None,
            },
            Role::Assistant => Turn {
                role: "assistant",
                content: assistant_content(m, tools),
                thinking: thinking_field.map(|field| Thinking {
                    field,
                    text: m.reasoning_content.clone().unwrap_or_default(),
                }),
            },
            Role::Tool | Role::Function => Turn {
                role: "user",
                content: TurnContent::Text(encode_result(
                    tool_name(messages, i, m),
                    &m.content.text(),
                )),
                thinking: None,
            },
        })
        .collect()
}

fn convert_content(c: &Content) -> TurnContent {
    match c {
        Content::Parts(parts) if parts.iter().any(|p| matches!(p, Part::Image { .. })) => {
            TurnContent::Parts(
                parts
                    .iter()
                    .filter_map(|p| match p {
                        Part::Text(t) if !t.is_empty() => Some(TurnPart::Text { text: t.clone() }),
                        Part::Image { url, detail } => Some(TurnPart::ImageUrl {
                            image_url: ImageUrl {
                                url: url.clone(),
                                detail: detail.clone(),
                            },
                        }),
                        _ => None,
                    })
                    .collect(),
            )
        }
        other => TurnContent::Text(other.text()),
    }
}

fn assistant_content(m: &Message, tools: Option<&ToolSet>) -> TurnContent {
    if m.tool_calls.is_empty() {
        return convert_content(&m.content);
    }
    let calls: Vec<(String, String)> = m
        .tool_calls
        .iter()
        .map(|c| (c.function.name.clone(), c.function.arguments.clone()))
        .collect();
    let text = m.content.text();
    if let Some(set) = tools {
        let text = (!text.is_empty()).then_some(text.as_str());
        return TurnContent::Text(set.encode_assistant(text, &calls));
    }
    // No tools this turn: the calls stay in the history as the plain block, no trigger.
    let block = function_calls_block(&calls);
    TurnContent::Text(if text.is_empty() {
        block
    } else {
        format!("{text}\n{block}")
    })
}

/// The name of the tool whose result message `i` carries: its own `name`, else the
/// assistant call with the same id earlier in the conversation.
fn tool_name<'a>(messages: &'a [Message], i: usize, m: &'a Message) -> Option<&'a str> {
    if let Some(n) = m.name.as_deref() {
        return Some(n);
    }
    let id = m.tool_call_id.as_deref()?;
    messages[..i]
        .iter()
        .rev()
        .flat_map(|prev| prev.tool_calls.iter())
        .find(|c| c.id == id)
        .map(|c| c.function.name.as_str())
}
