//! The client APIs side by side: OpenAI chat ([`chat`]), Anthropic Messages ([`messages`])
//! and OpenAI Responses ([`responses`]), with [`fields`] for the hand-converted requests.
//!
//! [`Surface`] is everything the proxy needs to know per API: how to read a request, which
//! encoder writes its stream ([`Wire`], one [`Encoder`] per surface), how its non-stream
//! answer and its errors look. The shared middle is [`crate::pipeline`].

use serde_json::{Map, Value};

pub mod chat;
pub mod convert;
pub mod fields;
pub mod messages;
pub mod responses;

use crate::core::error::ApiError;
use crate::core::events::ToolCall;
use crate::core::ids::random_id;
use crate::core::Encoder;
use crate::core::ReasoningMode;
use crate::pipeline::complete::CompletionResult;
use crate::pipeline::stream::Usage;
use crate::surface::chat::request::ChatRequest;
use crate::surface::chat::stream::ChunkEncoder;
use crate::surface::convert::Origin;
use crate::surface::messages::MessagesEncoder;
use crate::surface::responses::{Dialect, Hosted, ResponsesEncoder};

/// The API a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Surface {
    /// OpenAI `POST /v1/chat/completions`.
    #[default]
    Chat,
    /// Anthropic `POST /v1/messages`.
    Messages,
    /// OpenAI `POST /v1/responses`.
    Responses,
}

/// A request read by its surface: the shared chat request, the request fields the
/// surface's answer repeats (Responses; empty for the others), and where the converted
/// messages came from (Messages, Responses; the identity for chat).
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    pub req: ChatRequest,
    pub echo: Map<String, Value>,
    pub origin: Origin,
    /// Messages: whether the request turned thinking on (`thinking.type` `enabled` or
    /// `adaptive`); `None` on the surfaces without such a switch.
    pub thinking: Option<bool>,
    /// Responses: how the answer names the calls and writes the reasoning.
    pub dialect: Dialect,
    /// Responses: the tools the emulation cannot run (`responses.hosted_tools`).
    pub hosted: Vec<Hosted>,
}

/// What one answer repeats on every surface.
#[derive(Debug, Clone)]
pub struct Reply {
    /// `chatcmpl-…`, `msg_…` or `resp_…`.
    pub id: String,
    /// Unix seconds.
    pub created: u64,
    /// The model name the client asked for.
    pub model: String,
    pub reasoning: ReasoningMode,
    /// Our estimate of the prompt's tokens (for surfaces that report usage themselves).
    pub input_tokens: u64,
    /// OpenAI chat: `stream_options.include_usage`.
    pub include_usage: bool,
    /// See [`Parsed::echo`].
    pub echo: Map<String, Value>,
    /// See [`Parsed::dialect`].
    pub dialect: Dialect,
}

impl Surface {
    /// A fresh id for one answer: `chatcmpl-…`, `msg_…` or `resp_…`.
    pub fn new_id(self) -> String {
        match self {
            Surface::Chat => random_id("chatcmpl-"),
            Surface::Messages => random_id("msg_"),
            Surface::Responses => random_id("resp_"),
        }
    }

    /// Read a request body (`count_tokens`: an Anthropic token count, which needs no
    /// `max_tokens`).
    pub fn parse(self, body: &[u8], count_tokens: bool) -> Result<Parsed, ApiError> {
        Ok(match self {
            Surface::Chat => Parsed {
                req: ChatRequest::parse(body)?,
                echo: Map::new(),
                origin: Origin::default(),
                thinking: None,
                dialect: Dialect::default(),
                hosted: Vec::new(),
            },
            Surface::Messages => {
                let r = messages::parse_request(body, count_tokens)?;
                Parsed {
                    req: r.chat,
                    echo: Map::new(),
                    origin: r.origin,
                    thinking: Some(r.thinking),
                    dialect: Dialect::default(),
                    hosted: Vec::new(),
                }
            }
            Surface::Responses => {
                let r = responses::parse_request(body)?;
                Parsed {
                    req: r.chat,
                    echo: r.echo,
                    origin: r.origin,
                    thinking: None,
                    dialect: r.dialect,
                    hosted: r.hosted,
                }
            }
        })
    }

    /// Whether the answer reports input tokens even when the upstream does not (then
    /// [`Reply::input_tokens`] is worth estimating).
    pub fn reports_input_tokens(self) -> bool {
        self != Surface::Chat
    }

    /// The stream encoder for one answer.
    pub fn encoder(self, reply: &Reply) -> Wire {
        match self {
            Surface::Chat => Wire::Chat(
                ChunkEncoder::new(&reply.id, reply.created, &reply.model, reply.reasoning)
                    .with_usage(reply.include_usage),
            ),
            Surface::Messages => Wire::Messages(MessagesEncoder::new(
                &reply.id,
                &reply.model,
                reply.reasoning,
                reply.input_tokens,
            )),
            Surface::Responses => Wire::Responses(Box::new(ResponsesEncoder::new(reply.clone()))),
        }
    }

    /// The non-stream answer's body.
    pub fn complete(self, result: &CompletionResult, reply: &Reply) -> Vec<u8> {
        match self {
            Surface::Chat => {
                result.to_json(&reply.id, reply.created, &reply.model, reply.reasoning)
            }
            Surface::Messages => messages::message_json(
                result,
                &reply.id,
                &reply.model,
                reply.reasoning,
                reply.input_tokens,
            ),
            Surface::Responses => responses::response_json(result, reply),
        }
    }

    /// An error body in the surface's shape (Responses errors are OpenAI's).
    pub fn error_body(self, e: &ApiError) -> Vec<u8> {
        match self {
            Surface::Chat | Surface::Responses => e.body(),
            Surface::Messages => messages::error_body(e),
        }
    }
}

/// The encoder of the surface a request came in on.
#[derive(Debug)]
pub enum Wire {
    /// `POST /v1/chat/completions`.
    Chat(ChunkEncoder),
    /// `POST /v1/messages`.
    Messages(MessagesEncoder),
    /// `POST /v1/responses` (boxed: it keeps the request's echo and finished items, and
    /// would make every surface's stream state as big).
    Responses(Box<ResponsesEncoder>),
}

macro_rules! each {
    ($self:ident, $e:ident => $call:expr) => {
        match $self {
            Wire::Chat($e) => $call,
            Wire::Messages($e) => $call,
            Wire::Responses($e) => $call,
        }
    };
}

impl Encoder for Wire {
    fn start(&mut self, out: &mut Vec<u8>) {
        each!(self, e => e.start(out))
    }

    fn reasoning(&mut self, text: &str, out: &mut Vec<u8>) {
        each!(self, e => e.reasoning(text, out))
    }

    fn content(&mut self, text: &str, out: &mut Vec<u8>) {
        each!(self, e => Encoder::content(e, text, out))
    }

    fn tool_call(&mut self, index: usize, call: &ToolCall, out: &mut Vec<u8>) {
        each!(self, e => e.tool_call(index, call, out))
    }

    fn finish(&mut self, finish_reason: &str, usage: Option<&Usage>, out: &mut Vec<u8>) {
        each!(self, e => Encoder::finish(e, finish_reason, usage, out))
    }

    fn error(&mut self, code: &str, message: &str, out: &mut Vec<u8>) {
        each!(self, e => Encoder::error(e, code, message, out))
    }

    fn output_started(&self) -> bool {
        each!(self, e => e.output_started())
    }
}

/// Helpers for the encoders' unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use serde_json::Value;

    use crate::core::events::ToolCall;
    use crate::pipeline::complete::CompletionResult;
    use crate::sse::SseDecoder;

    /// A non-stream result with no usage.
    pub fn result(
        reasoning: &str,
        content: &str,
        finish: &str,
        calls: Vec<ToolCall>,
    ) -> CompletionResult {
        CompletionResult {
            reasoning: reasoning.into(),
            content: content.into(),
            finish_reason: finish.into(),
            usage: None,
            tool_calls: calls,
        }
    }

    pub fn call(id: &str, name: &str, args: &str) -> ToolCall {
        ToolCall {
            id: id.into(),
            name: name.into(),
            arguments: args.into(),
        }
    }

    /// The `(event name, data)` of each event in `out`; each is named, its data is JSON and
    /// its `type` is its name.
    pub fn events(out: &[u8]) -> Vec<(String, Value)> {
        let mut d = SseDecoder::new();
        let mut evs = Vec::new();
        d.push(out, |e| {
            let v: Value = serde_json::from_slice(e.data).expect("data is JSON");
            evs.push((e.event.to_string(), v));
        })
        .expect("sse");
        d.finish(|_| panic!("trailing event")).expect("sse");
        for (name, v) in &evs {
            assert!(!name.is_empty(), "every event is named");
            assert_eq!(v["type"], name.as_str());
        }
        evs
    }

    pub fn names(evs: &[(String, Value)]) -> Vec<&str> {
        evs.iter().map(|(n, _)| n.as_str()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_their_prefix_and_24_random_characters() {
        for (surface, prefix) in [
            (Surface::Chat, "chatcmpl-"),
            (Surface::Messages, "msg_"),
            (Surface::Responses, "resp_"),
        ] {
            let (a, b) = (surface.new_id(), surface.new_id());
            assert_ne!(a, b);
            let tail = a.strip_prefix(prefix).expect("prefix");
            assert_eq!(tail.len(), 24);
            assert!(tail.bytes().all(|c| c.is_ascii_alphanumeric()));
        }
    }
}
