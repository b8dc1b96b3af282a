//! OpenAI chat request → K2Think payload. Pure: nothing here knows HTTP or config.
//!
//! Nothing the client sent is dropped (k2think-protocol.md §3.1 and §6.3 list what the seed
//! proxies lose):
//! - messages keep their order; `system` messages stay separate (`developer` becomes
//!   `system`);
//! - string content passes through; text parts are joined with a newline unless an image
//!   is present, in which case the parts go up as an OpenAI-style content list with
//!   `image_url` parts carried unchanged (http(s) or `data:` URLs);
//! - assistant `tool_calls` are appended to the message text as a `<function_calls>`
//!   block (behind this request's trigger when it carries tools), and `tool` (or legacy
//!   `function`) results become `user` messages carrying the tool's name, found from the
//!   matching `tool_call_id` earlier in this conversation;
//! - with `tools`, the tool instructions go first, as a system message;
//! - sampling parameters go into `params`;
//! - every assistant message carries a thinking field (the client's own reasoning, else
//!   `""`), which the new upstream requires (k2think-protocol.md §0.5 #3);
//! - the reasoning effort (the client's, else the configured default) goes into
//!   `chat_template_kwargs.reasoning_effort` (§0.5 #4).

use crate::core::request::Effort;
use crate::core::request::{Turn, TurnContent};
use crate::pipeline::tools::ToolSet;
use crate::provider::k2think::{BodyStyle, KwargsPlacement, Payload};
use crate::surface::chat::request::ChatRequest;
use crate::surface::chat::turns::{convert_messages, params};

/// What the caller decides about the upstream request.
#[derive(Debug, Clone, Copy)]
pub struct RewriteOptions<'a> {
    pub upstream_model: &'a str,
    pub stream: bool,
    pub style: BodyStyle,
    /// The request's tools (from [`ToolSet::from_request`]).
    pub tools: Option<&'a ToolSet>,
    /// `tools.prompt_template` from the config.
    pub template: Option<&'a str>,
    /// The thinking field of assistant messages (`None`: send none).
    pub thinking_field: Option<&'static str>,
    /// The effort sent when the client asks for none.
    pub default_effort: Option<Effort>,
    /// Where the effort goes.
    pub effort_placement: KwargsPlacement,
}

impl<'a> RewriteOptions<'a> {
    /// The defaults: a streamed minimal body, no tools, no template.
    pub fn streamed(upstream_model: &'a str) -> RewriteOptions<'a> {
        RewriteOptions {
            upstream_model,
            stream: true,
            style: BodyStyle::Minimal,
            tools: None,
            template: None,
            thinking_field: Some("reasoning"),
            default_effort: None,
            effort_placement: KwargsPlacement::ExtraBody,
        }
    }
}

pub fn to_k2think(req: &ChatRequest, opts: RewriteOptions<'_>) -> Payload {
    let mut messages = convert_messages(&req.messages, opts.tools, opts.thinking_field);
    if let Some(set) = opts.tools {
        messages.insert(
            0,
            Turn {
                role: "system",
                content: TurnContent::Text(set.instructions(opts.template)),
                thinking: None,
            },
        );
    }
    Payload {
        stream: opts.stream,
        model: opts.upstream_model.to_string(),
        messages,
        params: params(req),
        effort: req
            .reasoning_effort
            .or(opts.default_effort)
            .map(|e| (e.as_str(), opts.effort_placement)),
        style: opts.style,
        chat_id: crate::core::ids::uuid_v4(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn rewrite(body: Value) -> Value {
        let req = ChatRequest::parse(body.to_string().as_bytes()).unwrap();
        let p = to_k2think(&req, RewriteOptions::streamed("MBZUAI-IFM/K2-Think-v2"));
        serde_json::from_slice(&p.to_bytes()).unwrap()
    }

    #[test]
    fn keeps_order_system_and_params() {
        let v = rewrite(json!({
            "model": "public", "temperature": 0.3, "top_p": 0.9, "max_completion_tokens": 50,
            "stop": "END", "seed": 7,
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "developer", "content": "dev rule"},
                {"role": "user", "content": "q1"},
                {"role": "assistant", "content": "a1"},
                {"role": "system", "content": "late system"},
                {"role": "user", "content": [{"type": "text", "text": "x"}, {"type": "text", "text": "y"}]}
            ]
        }));
        assert_eq!(v["model"], "MBZUAI-IFM/K2-Think-v2");
        assert_eq!(v["stream"], true);
        assert_eq!(
            v["params"],
            json!({"temperature": 0.3, "top_p": 0.9, "max_tokens": 50, "stop": ["END"], "seed": 7})
        );
        let roles: Vec<&str> = v["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["role"].as_str().unwrap())
            .collect();
        assert_eq!(
            roles,
            ["system", "system", "user", "assistant", "system", "user"]
        );
        assert_eq!(v["messages"][1]["content"], "dev rule");
        assert_eq!(v["messages"][5]["content"], "x\ny");
    }

    #[test]
    fn images_are_carried_as_parts() {
        let v = rewrite(
            json!({"model": "m", "messages": [{"role": "user", "content": [
                {"type": "text", "text": "what is this"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "high"}},
                {"type": "image_url", "image_url": "https://example.com/cat.jpg"}
            ]}]}),
        );
        let parts = &v["messages"][0]["content"];
        assert_eq!(parts[0], json!({"type": "text", "text": "what is this"}));
        assert_eq!(
            parts[1],
            json!({"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "high"}})
        );
        assert_eq!(parts[2]["image_url"]["url"], "https://example.com/cat.jpg");
    }

    #[test]
    fn tool_history_is_carried_as_text() {
        let v = rewrite(json!({"model": "m", "messages": [
            {"role": "user", "content": "weather in Paris and Rome?"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                {"id": "call_b", "type": "function", "function": {"name": "get_time", "arguments": "not json"}}
            ]},
            {"role": "tool", "tool_call_id": "call_b", "content": "12:00"},
            {"role": "tool", "tool_call_id": "call_a", "content": "sunny"},
            {"role": "tool", "tool_call_id": "call_zzz", "content": "orphan"}
        ]}));
        let msgs = v["messages"].as_array().unwrap();
        assert_eq!(msgs.len(), 5);
        let call = msgs[1]["content"].as_str().unwrap();
        assert!(call.contains("<tool>get_weather</tool>"), "{call}");
        assert!(call.contains("<city>\"Paris\"</city>"), "{call}");
        assert!(
            call.contains("<raw_arguments>\"not json\"</raw_arguments>"),
            "{call}"
        );
        assert_eq!(msgs[2]["role"], "user");
        let r = msgs[2]["content"].as_str().unwrap();
        assert!(
            r.contains("- Tool name: get_time")
                && r.contains("<tool_result>\n12:00\n</tool_result>"),
            "{r}"
        );
        assert!(msgs[3]["content"]
            .as_str()
            .unwrap()
            .contains("- Tool name: get_weather"));
        let orphan = msgs[4]["content"].as_str().unwrap();
        assert!(!orphan.contains("Tool name") && orphan.contains("orphan"));
    }
    #[test]
    fn assistant_messages_carry_a_thinking_field_and_effort_goes_where_configured() {
        let req = ChatRequest::parse(
            json!({"model": "m", "reasoning_effort": "xhigh", "messages": [
                {"role": "user", "content": "q1"},
                {"role": "assistant", "content": "a1", "reasoning_content": "r1"},
                {"role": "user", "content": "q2"},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                ]},
                {"role": "tool", "tool_call_id": "c1", "content": "ok"},
                {"role": "assistant", "content": "a3", "reasoning": "r3"}
            ]})
            .to_string()
            .as_bytes(),
        )
        .unwrap();
        let body = |opts: RewriteOptions<'_>| -> Value {
            serde_json::from_slice(&to_k2think(&req, opts).to_bytes()).unwrap()
        };
        let v = body(RewriteOptions::streamed("up"));
        let thinking: Vec<&Value> = v["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m.get("reasoning").unwrap_or(&Value::Null))
            .collect();
        assert_eq!(
            thinking,
            [
                &Value::Null,
                &json!("r1"),
                &Value::Null,
                &json!(""),
                &Value::Null,
                &json!("r3")
            ],
            "assistant messages only, the client's own reasoning else \"\", never null"
        );
        assert_eq!(
            v["extra_body"],
            json!({"chat_template_kwargs": {"reasoning_effort": "high"}})
        );
        assert!(v.get("chat_template_kwargs").is_none());
        // Another field name, no field at all; the configured default when the client
        // asks for nothing, at the top level.
        let v = body(RewriteOptions {
            thinking_field: Some("think_fast"),
            ..RewriteOptions::streamed("up")
        });
        assert_eq!(v["messages"][1]["think_fast"], "r1");
        assert!(v["messages"][1].get("reasoning").is_none());
        let v = body(RewriteOptions {
            thinking_field: None,
            ..RewriteOptions::streamed("up")
        });
        assert!(v["messages"][1].as_object().unwrap().len() == 2);
        let mut plain = req.clone();
        plain.reasoning_effort = None;
        let p = to_k2think(
            &plain,
            RewriteOptions {
                default_effort: Some(Effort::Medium),
                effort_placement: KwargsPlacement::TopLevel,
                ..RewriteOptions::streamed("up")
            },
        );
        let v: Value = serde_json::from_slice(&p.to_bytes()).unwrap();
        assert_eq!(v["chat_template_kwargs"]["reasoning_effort"], "medium");
        assert!(v.get("extra_body").is_none());
        let p = to_k2think(&plain, RewriteOptions::streamed("up"));
        let v: Value = serde_json::from_slice(&p.to_bytes()).unwrap();
        assert!(v.get("chat_template_kwargs").is_none() && v.get("extra_body").is_none());
    }
}
