//! Hand-written OpenAI `chat.completion.chunk` SSE lines.
//!
//! The constant part of every chunk (`id`, `object`, `created`, `model`) is
//! built once; each delta is then one escape pass over its text. One id for
//! the whole response; `role` only on the first chunk; reasoning as
//! `reasoning_content`, inline `<think>…</think>\n\n` in content, or dropped
//! ([`ReasoningMode`]); no empty deltas.

pub use crate::core::json::{write_json_str, write_json_str_body, write_u64};
use crate::core::{Delta, Deltas, Encoder, ReasoningMode, ToolCall, Usage};
use crate::pipeline::tokens::Estimate;
use crate::sse;

const DELTA_END: &[u8] = b",\"logprobs\":null,\"finish_reason\":null}]}";

/// Writes chunks for one response.
#[derive(Debug, Clone)]
pub struct ChunkEncoder {
    /// `{"id":…,"object":"chat.completion.chunk","created":…,"model":…,`
    head: Vec<u8>,
    reasoning: ReasoningMode,
    /// Write the usage chunk (`stream_options.include_usage`) when usage is known.
    include_usage: bool,
    /// The reasoning so far, counted for the usage chunk's `reasoning_tokens` when the
    /// upstream gives none (only with `include_usage`).
    reasoning_seen: Estimate,
    think_open: bool,
    output_started: bool,
}

impl ChunkEncoder {
    /// `id` is written as given (e.g. `chatcmpl-…`).
    pub fn new(id: &str, created: u64, model: &str, reasoning: ReasoningMode) -> Self {
        let mut head = Vec::with_capacity(96 + id.len() + model.len());
        head.extend_from_slice(b"{\"id\":");
        write_json_str(&mut head, id);
        head.extend_from_slice(b",\"object\":\"chat.completion.chunk\",\"created\":");
        write_u64(&mut head, created);
        head.extend_from_slice(b",\"model\":");
        write_json_str(&mut head, model);
        head.push(b',');
        ChunkEncoder {
            head,
            reasoning,
            include_usage: false,
            reasoning_seen: Estimate::default(),
            think_open: false,
            output_started: false,
        }
    }

    /// Also write the usage chunk at the end (when the upstream reported usage).
    pub fn with_usage(mut self, include_usage: bool) -> Self {
        self.include_usage = include_usage;
        self
    }

    fn open_delta(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(&self.head);
        out.extend_from_slice(b"\"choices\":[{\"index\":0,\"delta\":");
    }

    fn text_chunk(&mut self, field: &[u8], parts: &[&str], out: &mut Vec<u8>) {
        if parts.iter().all(|p| p.is_empty()) {
            return;
        }
        self.open_delta(out);
        out.extend_from_slice(b"{\"");
        out.extend_from_slice(field);
        out.extend_from_slice(b"\":\"");
        for p in parts {
            write_json_str_body(out, p);
        }
        out.extend_from_slice(b"\"}");
        out.extend_from_slice(DELTA_END);
        out.extend_from_slice(b"\n\n");
        self.output_started = true;
    }

    /// The first chunk: `{"role":"assistant","content":""}`.
    pub fn role(&mut self, out: &mut Vec<u8>) {
        self.open_delta(out);
        out.extend_from_slice(b"{\"role\":\"assistant\",\"content\":\"\"}");
        out.extend_from_slice(DELTA_END);
        out.extend_from_slice(b"\n\n");
    }

    /// A reasoning delta, per the reasoning mode.
    pub fn reasoning(&mut self, text: &str, out: &mut Vec<u8>) {
        if text.is_empty() {
            return;
        }
        if self.include_usage {
            self.reasoning_seen.add(text);
        }
        match self.reasoning {
            ReasoningMode::Field => self.text_chunk(b"reasoning_content", &[text], out),
            ReasoningMode::Inline => {
                let open = if self.think_open { "" } else { "<think>" };
                self.think_open = true;
                self.text_chunk(b"content", &[open, text], out);
            }
            ReasoningMode::Drop => {}
        }
    }

    /// A content delta (closes an inline `<think>` first).
    pub fn content(&mut self, text: &str, out: &mut Vec<u8>) {
        if text.is_empty() {
            return;
        }
        let close = if self.think_open { "</think>\n\n" } else { "" };
        self.think_open = false;
        self.text_chunk(b"content", &[close, text], out);
    }

    /// All deltas in order.
    pub fn deltas(&mut self, deltas: &Deltas, out: &mut Vec<u8>) {
        for d in deltas {
            match d {
                Delta::Reasoning(t) => self.reasoning(t, out),
                Delta::Content(t) => self.content(t, out),
            }
        }
    }

    /// One tool call: `{"tool_calls":[{"index":i,"id":…,"type":"function",
    /// "function":{"name":…,"arguments":…}}]}` (closes an inline `<think>`
    /// first).
    pub fn tool_call(&mut self, index: usize, call: &ToolCall, out: &mut Vec<u8>) {
        if self.think_open {
            self.think_open = false;
            self.text_chunk(b"content", &["</think>\n\n"], out);
        }
        self.open_delta(out);
        out.extend_from_slice(b"{\"tool_calls\":[{\"index\":");
        write_u64(out, index as u64);
        out.extend_from_slice(b",\"id\":");
        write_json_str(out, &call.id);
        out.extend_from_slice(b",\"type\":\"function\",\"function\":{\"name\":");
        write_json_str(out, &call.name);
        out.extend_from_slice(b",\"arguments\":");
        write_json_str(out, &call.arguments);
        out.extend_from_slice(b"}}]}");
        out.extend_from_slice(DELTA_END);
        out.extend_from_slice(b"\n\n");
        self.output_started = true;
    }

    fn finish_chunk(&mut self, reason: &str, out: &mut Vec<u8>) {
        if self.think_open {
            self.think_open = false;
            self.text_chunk(b"content", &["</think>"], out);
        }
        self.open_delta(out);
        out.extend_from_slice(b"{},\"logprobs\":null,\"finish_reason\":");
        write_json_str(out, reason);
        out.extend_from_slice(b"}]}\n\n");
    }

    /// The last choice chunk: empty delta and `finish_reason`.
    pub fn finish_reason(&mut self, finish_reason: &str, out: &mut Vec<u8>) {
        self.finish_chunk(finish_reason, out);
    }

    /// The usage chunk (`choices: []`), after the finish chunk.
    pub fn usage(&mut self, usage: &Usage, out: &mut Vec<u8>) {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(&self.head);
        out.extend_from_slice(b"\"choices\":[],\"usage\":");
        write_usage(out, usage);
        out.extend_from_slice(b"}\n\n");
    }

    /// The error ending: `finish_reason: "error"` and an OpenAI error event whose `code`
    /// says what broke (`upstream_stream_error`, `upstream_timeout`, `request_timeout`).
    pub fn error_ending(&mut self, code: &str, message: &str, out: &mut Vec<u8>) {
        self.finish_chunk("error", out);
        let mut payload = Vec::with_capacity(message.len() + 96);
        payload.extend_from_slice(b"{\"error\":{\"message\":");
        write_json_str(&mut payload, message);
        payload.extend_from_slice(b",\"type\":\"upstream_error\",\"param\":null,\"code\":");
        write_json_str(&mut payload, code);
        payload.extend_from_slice(b"}}");
        sse::write_data(out, &payload);
    }
}

impl Encoder for ChunkEncoder {
    fn start(&mut self, out: &mut Vec<u8>) {
        self.role(out);
    }

    fn reasoning(&mut self, text: &str, out: &mut Vec<u8>) {
        ChunkEncoder::reasoning(self, text, out);
    }

    fn content(&mut self, text: &str, out: &mut Vec<u8>) {
        ChunkEncoder::content(self, text, out);
    }

    fn tool_call(&mut self, index: usize, call: &ToolCall, out: &mut Vec<u8>) {
        ChunkEncoder::tool_call(self, index, call, out);
    }

    /// The finish chunk, the usage chunk when asked for and known (with
    /// `completion_tokens_details.reasoning_tokens`, estimated when the upstream gives
    /// none), and `[DONE]`.
    fn finish(&mut self, finish_reason: &str, usage: Option<&Usage>, out: &mut Vec<u8>) {
        self.finish_chunk(finish_reason, out);
        if let (true, Some(u)) = (self.include_usage, usage) {
            let u = u.with_reasoning_estimate(self.reasoning_seen.tokens());
            self.usage(&u, out);
        }
        sse::write_data(out, b"[DONE]");
    }

    fn error(&mut self, code: &str, message: &str, out: &mut Vec<u8>) {
        self.error_ending(code, message, out);
    }

    fn output_started(&self) -> bool {
        self.output_started
    }
}

/// `usage` object as OpenAI writes it.
pub fn write_usage(out: &mut Vec<u8>, u: &Usage) {
    out.extend_from_slice(b"{\"prompt_tokens\":");
    write_u64(out, u.prompt_tokens);
    out.extend_from_slice(b",\"completion_tokens\":");
    write_u64(out, u.completion_tokens);
    out.extend_from_slice(b",\"total_tokens\":");
    write_u64(out, u.total_tokens);
    if let Some(r) = u
        .completion_tokens_details
        .as_ref()
        .and_then(|d| d.reasoning_tokens)
    {
        out.extend_from_slice(b",\"completion_tokens_details\":{\"reasoning_tokens\":");
        write_u64(out, r);
        out.push(b'}');
    }
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::events::UPSTREAM_STREAM_ERROR;
    use serde_json::Value;

    #[test]
    fn escaping_round_trips_through_serde() {
        let samples = [
            "",
            "plain",
            "q\"b\\s",
            "\n\r\t\u{8}\u{c}\u{0}\u{1f}\u{7f}",
            "你好 👋 \u{2028}",
        ];
        for s in samples {
            let mut out = Vec::new();
            write_json_str(&mut out, s);
            let back: String = serde_json::from_slice(&out).unwrap();
            assert_eq!(back, s);
            assert_eq!(out, serde_json::to_vec(s).unwrap());
        }
    }

    #[test]
    fn numbers() {
        for n in [0u64, 7, 10, 1234567890, u64::MAX] {
            let mut out = Vec::new();
            write_u64(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
        }
    }

    fn data_lines(out: &[u8]) -> Vec<Value> {
        let s = std::str::from_utf8(out).unwrap();
        s.split("\n\n")
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_str(l.strip_prefix("data: ").unwrap()).unwrap())
            .collect()
    }

    #[test]
    fn chunk_shapes() {
        let mut e = ChunkEncoder::new("chatcmpl-1\"x", 42, "M/\u{e9}", ReasoningMode::Field);
        let mut out = Vec::new();
        e.role(&mut out);
        e.reasoning("r", &mut out);
        e.content("", &mut out);
        e.content("c\n", &mut out);
        e.finish_reason("length", &mut out);
        e.usage(
            &Usage {
                prompt_tokens: 1,
                completion_tokens: 2,
                total_tokens: 3,
                completion_tokens_details: None,
            },
            &mut out,
        );
        let v = data_lines(&out);
        assert_eq!(v.len(), 5);
        for c in &v {
            assert_eq!(c["id"], "chatcmpl-1\"x");
            assert_eq!(c["object"], "chat.completion.chunk");
            assert_eq!(c["created"], 42);
            assert_eq!(c["model"], "M/\u{e9}");
        }
        assert_eq!(
            v[0]["choices"][0]["delta"],
            serde_json::json!({"role":"assistant","content":""})
        );
        assert_eq!(
            v[1]["choices"][0]["delta"],
            serde_json::json!({"reasoning_content":"r"})
        );
        assert_eq!(
            v[2]["choices"][0]["delta"],
            serde_json::json!({"content":"c\n"})
        );
        assert_eq!(v[2]["choices"][0]["finish_reason"], Value::Null);
        assert_eq!(v[3]["choices"][0]["finish_reason"], "length");
        assert_eq!(v[3]["choices"][0]["delta"], serde_json::json!({}));
        assert_eq!(v[4]["choices"], serde_json::json!([]));
        assert_eq!(
            v[4]["usage"],
            serde_json::json!({"prompt_tokens":1,"completion_tokens":2,"total_tokens":3})
        );
    }

    /// Issue 17: the usage chunk counts reasoning tokens; the upstream's count when it gave
    /// one, else our estimate of the reasoning (dropped reasoning too), at most the
    /// completion tokens.
    #[test]
    fn the_usage_chunk_counts_reasoning_tokens() {
        let usage = |completion, reasoning: Option<u64>| Usage {
            prompt_tokens: 5,
            completion_tokens: completion,
            total_tokens: 5 + completion,
            completion_tokens_details: reasoning.map(|r| {
                crate::pipeline::stream::CompletionTokensDetails {
                    reasoning_tokens: Some(r),
                }
            }),
        };
        let run = |mode, u: &Usage| {
            let mut e = ChunkEncoder::new("i", 1, "m", mode).with_usage(true);
            let mut out = Vec::new();
            Encoder::start(&mut e, &mut out);
            // 9 ASCII + 2 other characters: 3 + 2 tokens.
            Encoder::reasoning(&mut e, "think", &mut out);
            Encoder::reasoning(&mut e, " hard你好", &mut out);
            Encoder::content(&mut e, "answer", &mut out);
            Encoder::finish(&mut e, "stop", Some(u), &mut out);
            let s = std::str::from_utf8(&out).unwrap();
            let line = s
                .split("\n\n")
                .find(|l| l.contains("\"usage\""))
                .expect("a usage chunk");
            let v: Value = serde_json::from_str(line.strip_prefix("data: ").unwrap()).unwrap();
            v["usage"].clone()
        };
        for mode in [
            ReasoningMode::Field,
            ReasoningMode::Inline,
            ReasoningMode::Drop,
        ] {
            let u = run(mode, &usage(40, None));
            assert_eq!(u["completion_tokens_details"]["reasoning_tokens"], 5, "{u}");
            assert_eq!(u["completion_tokens"], 40);
        }
        let u = run(ReasoningMode::Field, &usage(3, None));
        assert_eq!(
            u["completion_tokens_details"]["reasoning_tokens"], 3,
            "never more than the completion"
        );
        let u = run(ReasoningMode::Field, &usage(40, Some(17)));
        assert_eq!(
            u["completion_tokens_details"]["reasoning_tokens"], 17,
            "the upstream's count wins"
        );
        let mut e = ChunkEncoder::new("i", 1, "m", ReasoningMode::Field).with_usage(true);
        let mut out = Vec::new();
        Encoder::content(&mut e, "no reasoning", &mut out);
        Encoder::finish(&mut e, "stop", Some(&usage(4, None)), &mut out);
        assert!(
            std::str::from_utf8(&out)
                .unwrap()
                .contains("\"completion_tokens_details\":{\"reasoning_tokens\":0}"),
            "zero when there was none"
        );
    }

    #[test]
    fn inline_and_drop() {
        let mut e = ChunkEncoder::new("i", 1, "m", ReasoningMode::Inline);
        let mut out = Vec::new();
        e.reasoning("a", &mut out);
        e.reasoning("b", &mut out);
        e.content("c", &mut out);
        let v = data_lines(&out);
        let text: String = v
            .iter()
            .map(|c| {
                c["choices"][0]["delta"]["content"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(text, "<think>ab</think>\n\nc");
        // Reasoning only: closed at finish.
        let mut e = ChunkEncoder::new("i", 1, "m", ReasoningMode::Inline);
        let mut out = Vec::new();
        e.reasoning("a", &mut out);
        e.finish_reason("stop", &mut out);
        let v = data_lines(&out);
        assert_eq!(v[1]["choices"][0]["delta"]["content"], "</think>");
        assert_eq!(v[2]["choices"][0]["finish_reason"], "stop");
        let mut e = ChunkEncoder::new("i", 1, "m", ReasoningMode::Drop);
        let mut out = Vec::new();
        e.reasoning("secret", &mut out);
        assert!(out.is_empty());
        assert!(!e.output_started());
    }

    #[test]
    fn tool_call_chunk() {
        let mut e = ChunkEncoder::new("i", 1, "m", ReasoningMode::Inline);
        let mut out = Vec::new();
        e.reasoning("r", &mut out);
        let call = ToolCall {
            id: "call_x".into(),
            name: "get_weather".into(),
            arguments: "{\"city\":\"P\\\"aris\"}".into(),
        };
        e.tool_call(3, &call, &mut out);
        e.finish_reason("tool_calls", &mut out);
        let v = data_lines(&out);
        assert_eq!(v[1]["choices"][0]["delta"]["content"], "</think>\n\n");
        assert_eq!(
            v[2]["choices"][0]["delta"],
            serde_json::json!({"tool_calls":[{"index":3,"id":"call_x","type":"function",
                "function":{"name":"get_weather","arguments":"{\"city\":\"P\\\"aris\"}"}}]})
        );
        assert_eq!(v[2]["choices"][0]["finish_reason"], Value::Null);
        assert_eq!(v[3]["choices"][0]["finish_reason"], "tool_calls");
        assert!(e.output_started());
    }

    #[test]
    fn error_ending() {
        let mut e = ChunkEncoder::new("i", 1, "m", ReasoningMode::Field);
        let mut out = Vec::new();
        e.error_ending(UPSTREAM_STREAM_ERROR, "cut \"here\"", &mut out);
        let v = data_lines(&out);
        assert_eq!(v[0]["choices"][0]["finish_reason"], "error");
        assert_eq!(
            v[1],
            serde_json::json!({"error":{"message":"cut \"here\"","type":"upstream_error","param":null,"code":"upstream_stream_error"}})
        );
    }
}
