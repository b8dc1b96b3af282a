//! Non-stream aggregation: the same decoder as the stream, collected into one
//! OpenAI `chat.completion`.
//!
//! Speculative reasoning (see [`crate::pipeline::split`], `implicit_think`)
//! that was retracted is kept as content only.

use std::sync::Arc;

use serde::Serialize;

use crate::core::decode::NOT_AN_ANSWER;
use crate::core::events::ToolCall;
use crate::core::Decoder;
use crate::core::ReasoningMode;
use crate::pipeline::split::{Delta, Deltas};
use crate::pipeline::stream::{Routed, ToolStage, Usage};
use crate::pipeline::tokens::Estimate;
use crate::pipeline::tools::ToolSet;

/// Collects one upstream body, decoded by `D` (a K2Think decoder unless a provider gives
/// its own through [`Completion::with_decoder`]).
#[derive(Debug)]
pub struct Completion<D: Decoder> {
    pub(crate) decoder: D,
    deltas: Deltas,
    reasoning: String,
    content: String,
    tools: Option<Box<ToolStage>>,
    calls: Vec<ToolCall>,
}

/// The assembled answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompletionResult {
    pub reasoning: String,
    pub content: String,
    pub finish_reason: String,
    pub usage: Option<Usage>,
    /// Parsed tool calls (tool emulation only); `finish_reason` is then
    /// `"tool_calls"`.
    pub tool_calls: Vec<ToolCall>,
}

impl<D: Decoder> Completion<D> {
    /// An aggregator for one upstream body read by `decoder`.
    pub fn with_decoder(decoder: D) -> Self {
        Completion {
            decoder,
            deltas: Deltas::new(),
            reasoning: String::new(),
            content: String::new(),
            tools: None,
            calls: Vec::new(),
        }
    }

    /// Enable tool-call emulation (`None`, or `tool_choice: "none"`: plain
    /// text).
    pub fn with_tools(mut self, tools: Option<Arc<ToolSet>>) -> Self {
        self.tools = ToolStage::new(tools.as_ref());
        self
    }

    /// Tool calls parsed so far.
    pub fn tool_calls_emitted(&self) -> usize {
        self.tools.as_ref().map_or(0, |t| t.calls())
    }

    /// Tool-call blocks that were malformed and kept as content.
    pub fn malformed_tool_blocks(&self) -> u64 {
        self.tools.as_ref().map_or(0, |t| t.malformed())
    }

    /// The decoder (for `done_seen`, `usable`, …).
    pub fn decoder(&self) -> &D {
        &self.decoder
    }

    /// Feed the next piece of the body.
    pub fn push(&mut self, bytes: &[u8]) {
        self.decoder.push(bytes, &mut self.deltas);
        self.drain(None);
    }

    fn drain(&mut self, end: Option<bool>) {
        if let Some(tools) = self.tools.as_mut() {
            let (reasoning, content, calls) =
                (&mut self.reasoning, &mut self.content, &mut self.calls);
            tools.route(&self.deltas, end, |r| match r {
                Routed::Reasoning(t) => reasoning.push_str(t),
                Routed::Content(t) => content.push_str(t),
                Routed::Call(_, c) => calls.push(c),
            });
            self.deltas.clear();
            return;
        }
        for d in &self.deltas {
            match d {
                Delta::Reasoning(t) => self.reasoning.push_str(t),
                Delta::Content(t) => self.content.push_str(t),
            }
        }
        self.deltas.clear();
    }

    /// The body ended cleanly. `Err` carries the upstream error message (or
    /// [`NOT_AN_ANSWER`] when nothing usable arrived).
    pub fn finish(&mut self) -> Result<CompletionResult, String> {
        self.decoder.finish(&mut self.deltas);
        let ok = self.decoder.error().is_none() && self.decoder.usable();
        self.drain(Some(ok));
        if let Some(e) = self.decoder.error() {
            return Err(e.to_string());
        }
        if !self.decoder.usable() {
            return Err(NOT_AN_ANSWER.to_string());
        }
        let mut reasoning = std::mem::take(&mut self.reasoning);
        if self.decoder.reasoning_retracted() {
            let n = self.decoder.retracted_len().min(reasoning.len());
            if reasoning.is_char_boundary(n) {
                reasoning.drain(..n);
            }
            let kept = reasoning.trim_start().len();
            reasoning.drain(..reasoning.len() - kept);
        }
        Ok(CompletionResult {
            reasoning,
            content: std::mem::take(&mut self.content),
            finish_reason: if self.calls.is_empty() {
                self.decoder.finish_reason().unwrap_or("stop").to_string()
            } else {
                "tool_calls".to_string()
            },
            usage: self.decoder.usage().cloned(),
            tool_calls: std::mem::take(&mut self.calls),
        })
    }
}

#[derive(Serialize)]
struct Body<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: [Choice<'a>; 1],
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<&'a Usage>,
}

#[derive(Serialize)]
struct Choice<'a> {
    index: u32,
    message: Message<'a>,
    logprobs: Option<()>,
    finish_reason: &'a str,
}

#[derive(Serialize)]
struct Message<'a> {
    role: &'static str,
    /// `null` only when there are tool calls and no text.
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_content: Option<&'a str>,
    #[serde(skip_serializing_if = "<[WireCall<'a>]>::is_empty")]
    tool_calls: Vec<WireCall<'a>>,
}

#[derive(Serialize)]
struct WireCall<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    function: WireFunction<'a>,
}

#[derive(Serialize)]
struct WireFunction<'a> {
    name: &'a str,
    arguments: &'a str,
}

impl CompletionResult {
    /// OpenAI `chat.completion` JSON. `reasoning_content` is omitted when
    /// empty or dropped; inline mode puts `<think>…</think>\n\n` before the
    /// content. With tool calls: `message.tool_calls` and `content: null`
    /// when there is no text.
    pub fn to_json(
        &self,
        id: &str,
        created: u64,
        model: &str,
        reasoning: ReasoningMode,
    ) -> Vec<u8> {
        let inline;
        let (content, reasoning_content) = match reasoning {
            ReasoningMode::Field => (
                self.content.as_str(),
                Some(self.reasoning.as_str()).filter(|r| !r.is_empty()),
            ),
            ReasoningMode::Inline if !self.reasoning.is_empty() => {
                inline = format!("<think>{}</think>\n\n{}", self.reasoning, self.content);
                (inline.as_str(), None)
            }
            ReasoningMode::Inline | ReasoningMode::Drop => (self.content.as_str(), None),
        };
        // `reasoning_tokens` estimated when the upstream counts none (dropped reasoning
        // still counts).
        let usage = self.usage.as_ref().map(|u| {
            let mut reasoning = Estimate::default();
            reasoning.add(&self.reasoning);
            u.with_reasoning_estimate(reasoning.tokens())
        });
        let body = Body {
            id,
            object: "chat.completion",
            created,
            model,
            choices: [Choice {
                index: 0,
                message: Message {
                    role: "assistant",
                    content: Some(content).filter(|c| !c.is_empty() || self.tool_calls.is_empty()),
                    reasoning_content,
                    tool_calls: self
                        .tool_calls
                        .iter()
                        .map(|c| WireCall {
                            id: &c.id,
                            kind: "function",
                            function: WireFunction {
                                name: &c.name,
                                arguments: &c.arguments,
                            },
                        })
                        .collect(),
                },
                logprobs: None,
                finish_reason: &self.finish_reason,
            }],
            usage: usage.as_ref(),
        };
        serde_json::to_vec(&body).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::k2think::decode::UpstreamFormat;
    use serde_json::{json, Value};

    fn collect(body: &str, implicit: bool) -> Result<CompletionResult, String> {
        let mut c = Completion::new(UpstreamFormat::Sse, implicit);
        c.push(body.as_bytes());
        c.finish()
    }

    #[test]
    fn speculative_reasoning_becomes_content_only() {
        let r = collect(
            "data: {\"content\":\"Just an answer.\"}\n\ndata: [DONE]\n\n",
            true,
        )
        .unwrap();
        assert_eq!(
            (r.reasoning.as_str(), r.content.as_str()),
            ("", "Just an answer.")
        );
        // Proved speculation stays reasoning.
        let r = collect(
            "data: {\"content\":\"R\"}\n\ndata: {\"content\":\"R</think>A\"}\n\n",
            true,
        )
        .unwrap();
        assert_eq!((r.reasoning.as_str(), r.content.as_str()), ("R", "A"));
        // Speculation resolved by upstream reasoning_content keeps that reasoning.
        let body = concat!(
            "data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"reasoning_content\":\" why\"}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"content\":\" there\"}}]}\n\n",
        );
        let r = collect(body, true).unwrap();
        assert_eq!(
            (r.reasoning.as_str(), r.content.as_str()),
            ("why", "Hi there")
        );
    }

    #[test]
    fn to_json_shapes() {
        let r = CompletionResult {
            reasoning: "R \"q\"".into(),
            content: "A\n".into(),
            finish_reason: "stop".into(),
            usage: Some(Usage {
                prompt_tokens: 1,
                completion_tokens: 2,
                total_tokens: 3,
                completion_tokens_details: Some(crate::pipeline::stream::CompletionTokensDetails {
                    reasoning_tokens: Some(1),
                }),
            }),
            tool_calls: Vec::new(),
        };
        let v: Value =
            serde_json::from_slice(&r.to_json("chatcmpl-9", 5, "m", ReasoningMode::Field)).unwrap();
        assert_eq!(
            v,
            json!({"id":"chatcmpl-9","object":"chat.completion","created":5,"model":"m",
                "choices":[{"index":0,"message":{"role":"assistant","content":"A\n","reasoning_content":"R \"q\""},
                "logprobs":null,"finish_reason":"stop"}],
                "usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3,
                "completion_tokens_details":{"reasoning_tokens":1}}})
        );
        let v: Value =
            serde_json::from_slice(&r.to_json("i", 5, "m", ReasoningMode::Inline)).unwrap();
        assert_eq!(
            v["choices"][0]["message"],
            json!({"role":"assistant","content":"<think>R \"q\"</think>\n\nA\n"})
        );
        let v: Value =
            serde_json::from_slice(&r.to_json("i", 5, "m", ReasoningMode::Drop)).unwrap();
        assert_eq!(
            v["choices"][0]["message"],
            json!({"role":"assistant","content":"A\n"})
        );
        // Issue 17: without the upstream's count, the reasoning is estimated (4 ASCII
        // characters a token), dropped or not, at most the completion tokens.
        let mut counted = r.clone();
        counted.reasoning = "twelve chars".into();
        counted.usage = Some(Usage {
            prompt_tokens: 1,
            completion_tokens: 20,
            total_tokens: 21,
            completion_tokens_details: None,
        });
        for mode in [ReasoningMode::Field, ReasoningMode::Drop] {
            let v: Value = serde_json::from_slice(&counted.to_json("i", 5, "m", mode)).unwrap();
            assert_eq!(
                v["usage"]["completion_tokens_details"],
                json!({"reasoning_tokens": 3})
            );
        }
        if let Some(u) = counted.usage.as_mut() {
            u.completion_tokens = 2;
        }
        let v: Value =
            serde_json::from_slice(&counted.to_json("i", 5, "m", ReasoningMode::Field)).unwrap();
        assert_eq!(
            v["usage"]["completion_tokens_details"]["reasoning_tokens"],
            2
        );
        let plain = CompletionResult {
            reasoning: String::new(),
            usage: None,
            ..r
        };
        let v: Value =
            serde_json::from_slice(&plain.to_json("i", 5, "m", ReasoningMode::Field)).unwrap();
        assert_eq!(
            v["choices"][0]["message"],
            json!({"role":"assistant","content":"A\n"})
        );
        assert!(v.get("usage").is_none());
    }

    #[test]
    fn errors_are_err() {
        let e = collect(
            "data: {\"content\":\"x\"}\n\ndata: {\"error\":\"bad token\"}\n\n",
            true,
        );
        assert_eq!(e, Err("bad token".to_string()));
        assert_eq!(
            collect("<html></html>", true),
            Err(NOT_AN_ANSWER.to_string())
        );
    }
}
