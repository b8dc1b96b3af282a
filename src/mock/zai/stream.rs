//! Deterministic Z.AI answers and their SSE event script (`providers-protocol.md` §A.6):
//! thinking deltas inside an Open WebUI `<details>` block, one `edit_index`/`edit_content`
//! transition, answer deltas, the done event with usage.

use base64::Engine;
use bytes::Bytes;
use serde_json::{json, Value};

use super::directives::{EditAt, EditMode, Envelope, ToolStyle, ZaiDirectives, ZaiFault};
use crate::mock::directives::{strip_directives, Directives};
use crate::mock::script::{content_text, pieces, rough_tokens, sse_event, tool_call_answer};

const FILLER: [&str; 8] = [
    "amber", "birch", "cedar", "dune", "ember", "fjord", "grove", "heath",
];

fn filler(n: usize) -> impl Iterator<Item = &'static str> {
    (0..n).map(|i| FILLER[i % FILLER.len()])
}

/// The head of the first thinking delta.
pub const THINKING_HEAD: &str =
    "<details type=\"reasoning\" done=\"false\">\n<summary>Thinking…</summary>\n> ";

/// The search citation markers `search=on` puts into the answer, in order.
pub const SEARCH_MARKERS: [&str; 2] = ["【turn0search0】", "【turn0search1】"];

/// The inline error `fault=concurrency` sends (code 429).
pub const CONCURRENCY_DETAIL: &str =
    "并发请求过多，请稍后再试 (too many concurrent requests: concurrency limit reached)";

/// The inline error `fault=inline_error` / `fault=nested_error` sends (code 500).
pub const INLINE_ERROR_DETAIL: &str = "Internal Server Error";

/// The deterministic `(reasoning, answer)` for the last user message, without tool calls.
///
/// `[[mock: ...]]` blocks are removed first. The reasoning is two lines plus
/// `reasoning_words` filler words (ten per line); the answer is `Echo — <text>` plus
/// `answer_words` filler words, and with `search=on` two citation markers and a sources line.
/// Both always hold a non-ASCII character, so character and byte offsets differ.
pub fn reply_for(last_user_text: &str, d: &ZaiDirectives) -> (String, String) {
    let text = strip_directives(last_user_text);
    let n = text.chars().count();
    let mut reasoning = format!("The user wrote {n} characters → echo them.\nKeep it short.");
    let words: Vec<&str> = filler(d.reasoning_words).collect();
    for line in words.chunks(10) {
        reasoning.push('\n');
        reasoning.push_str(&line.join(" "));
    }
    let mut answer = format!("Echo — {text}");
    for w in filler(d.answer_words) {
        answer.push(' ');
        answer.push_str(w);
    }
    if d.search {
        answer.push_str(SEARCH_MARKERS[0]);
        answer.push_str("\nSources: web.");
        answer.push_str(SEARCH_MARKERS[1]);
    }
    (reasoning, answer)
}

/// Every message's text, joined with newlines.
fn messages_text(body: &Value) -> String {
    body.get("messages")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|m| content_text(m.get("content").unwrap_or(&Value::Null)))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}

/// The tool name to call: the directive, else the request's first declared tool, else the
/// first tool listed as `1. name` (k2proxy's tool prompt), else `get_weather`.
fn tool_name(body: &Value, text: &str, d: &ZaiDirectives) -> String {
    if let Some(n) = &d.tool_name {
        return n.clone();
    }
    let declared = body
        .pointer("/tools/0/function/name")
        .or_else(|| body.pointer("/tools/0/name"))
        .and_then(Value::as_str);
    if let Some(n) = declared {
        return n.to_string();
    }
    let listed = text.split("\n1. ").nth(1).and_then(|rest| {
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'))
            .collect();
        Some(name).filter(|n| !n.is_empty())
    });
    listed.unwrap_or_else(|| "get_weather".to_string())
}

fn tool_args(d: &ZaiDirectives) -> Value {
    d.tool_args
        .as_deref()
        .and_then(|b| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(b.trim_end_matches('='))
                .ok()
        })
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .filter(Value::is_object)
        .unwrap_or_else(|| json!({}))
}

/// With `tool=…`, the answer that calls a tool in that format; `None` without `tool`, or
/// for `tool=k2` when the request carries no trigger.
pub fn tool_answer(body: &Value, d: &ZaiDirectives) -> Option<String> {
    let style = d.tool?;
    let text = messages_text(body);
    let name = tool_name(body, &text, d);
    let args = tool_args(d);
    Some(match style {
        ToolStyle::Gfa => format!(
            "I will call a tool.\n<<<TOOL_CALL>>>{{\"name\":{},\"arguments\":{args}}}<<<END_TOOL_CALL>>>",
            Value::String(name)
        ),
        ToolStyle::Json => format!(
            "I will call a tool.\n{}",
            json!({"tool_calls": [{"id": "call_zai_mock_0", "type": "function",
                "function": {"name": name, "arguments": args.to_string()}}]})
        ),
        ToolStyle::K2 => {
            // The trigger comes from the messages; the block from the directives.
            let k2 = Directives {
                tool_call: Some(name),
                tool_args: Some(
                    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(args.to_string()),
                ),
                ..Directives::default()
            };
            return tool_call_answer(&text, &k2);
        }
    })
}

fn quote_lines(text: &str) -> String {
    text.replace('\n', "\n> ")
}

/// The closed reasoning block the transition writes: `…</details>\n`.
pub fn closed_block(reasoning: &str, duration: u64) -> String {
    format!(
        "<details type=\"reasoning\" done=\"true\" duration=\"{duration}\">\n<summary>Thought for {duration} seconds</summary>\n> {}\n</details>\n",
        quote_lines(reasoning)
    )
}

/// The message text a client rebuilds from the stream: the closed block (when thinking)
/// followed by the answer.
pub fn full_text(reasoning: &str, answer: &str, thinking: bool, duration: u64) -> String {
    if thinking {
        format!("{}{answer}", closed_block(reasoning, duration))
    } else {
        answer.to_string()
    }
}

/// Prompt size in characters: every message's text.
pub fn prompt_chars(messages: &Value) -> usize {
    messages.as_array().map_or(0, |a| {
        a.iter()
            .map(|m| {
                content_text(m.get("content").unwrap_or(&Value::Null))
                    .chars()
                    .count()
            })
            .sum()
    })
}

/// Usage of the done event: rough tokens (chars / 4) of the prompt and of reasoning plus
/// answer; `total_tokens` is their sum.
pub fn usage(prompt_chars: usize, reasoning: &str, answer: &str, thinking: bool) -> Value {
    let p = rough_tokens(prompt_chars);
    let r = if thinking {
        reasoning.chars().count()
    } else {
        0
    };
    let c = rough_tokens(r + answer.chars().count());
    json!({"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c})
}

/// An edit index into `before_text` at its end, per the edit semantics.
fn index_of_end(before: &str, mode: EditMode) -> usize {
    match mode {
        EditMode::Rune => before.chars().count(),
        EditMode::Byte => before.len(),
    }
}

/// The `data` objects of a successful stream, in order, ending with the done event.
pub fn data_events(
    reasoning: &str,
    answer: &str,
    thinking: bool,
    d: &ZaiDirectives,
    usage: Value,
) -> Vec<Value> {
    let mut out = Vec::new();
    let ans = pieces(answer, d.piece);
    let prefix = if thinking {
        let quoted = quote_lines(reasoning);
        for (i, p) in pieces(&quoted, d.piece).into_iter().enumerate() {
            let text = if i == 0 {
                format!("{THINKING_HEAD}{p}")
            } else {
                p
            };
            out.push(json!({"phase": "thinking", "delta_content": text}));
        }
        let closed = closed_block(reasoning, d.duration);
        out.push(json!({
            "phase": "answer", "edit_index": 0,
            "edit_content": format!("{closed}{}", ans[0]),
        }));
        closed
    } else {
        out.push(json!({"phase": "answer", "delta_content": ans[0]}));
        String::new()
    };
    // With edit_at=middle: halfway through, go back up to 3 characters and write them again
    // with the next piece.
    let mid = (ans.len() / 2).max(1);
    let mut sent = ans[0].clone();
    let rewrite = |sent: &str, next: &str, out: &mut Vec<Value>| {
        let keep = sent.chars().count().saturating_sub(3);
        let cut = sent.char_indices().nth(keep).map_or(sent.len(), |(i, _)| i);
        let before = format!("{prefix}{}", &sent[..cut]);
        out.push(json!({
            "phase": "answer",
            "edit_index": index_of_end(&before, d.edit),
            "edit_content": format!("{}{next}", &sent[cut..]),
        }));
    };
    for (i, p) in ans.iter().enumerate().skip(1) {
        if d.edit_at == EditAt::Middle && i == mid {
            rewrite(&sent, p, &mut out);
        } else {
            out.push(json!({"phase": "answer", "delta_content": p}));
        }
        sent.push_str(p);
    }
    if d.edit_at == EditAt::Middle && ans.len() == 1 {
        rewrite(&sent, "", &mut out);
    }
    out.push(json!({"phase": "done", "done": true, "usage": usage}));
    out
}

/// An inline error event's `data` (`nested`: under `data.data.error`).
pub fn error_data(detail: &str, code: u16, nested: bool) -> Value {
    let error = json!({"detail": detail, "code": code});
    if nested {
        json!({"data": {"error": error}, "done": true})
    } else {
        json!({"error": error, "done": true})
    }
}

/// One SSE event for a `data` object, in the envelope asked for.
pub fn sse(data: Value, envelope: Envelope) -> Bytes {
    let v = match envelope {
        Envelope::Wrapped => json!({"type": "chat:completion", "data": data}),
        Envelope::Bare => data,
    };
    sse_event(&serde_json::to_vec(&v).unwrap_or_default(), false)
}

/// The `[DONE]` line.
pub fn done_marker() -> Bytes {
    sse_event(b"[DONE]", false)
}

/// The events of a stream that passed every check, with a stream fault applied; the bool
/// says whether the body is aborted after them (`fault=cut`).
pub fn script(
    reasoning: &str,
    answer: &str,
    thinking: bool,
    d: &ZaiDirectives,
    usage: Value,
) -> (Vec<Bytes>, bool) {
    let data = data_events(reasoning, answer, thinking, d, usage);
    let mut events: Vec<Bytes> = data.into_iter().map(|v| sse(v, d.envelope)).collect();
    let error =
        |detail: &str, code: u16, nested: bool| sse(error_data(detail, code, nested), d.envelope);
    match d.fault {
        ZaiFault::Cut => {
            let keep = d.cut_after.unwrap_or(events.len().saturating_sub(1));
            events.truncate(keep);
            return (events, true);
        }
        ZaiFault::Concurrency => {
            events.clear();
            events.push(error(CONCURRENCY_DETAIL, 429, false));
        }
        ZaiFault::InlineError | ZaiFault::NestedError => {
            events.truncate(d.cut_after.unwrap_or(0));
            let nested = d.fault == ZaiFault::NestedError;
            events.push(error(INLINE_ERROR_DETAIL, 500, nested));
        }
        _ => {}
    }
    if d.done_marker {
        events.push(done_marker());
    }
    (events, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// GFA's reconstruction (rune index, truncate + append) or GO-DOC's (byte offset,
    /// overwrite in place).
    fn rebuild(events: &[Value], mode: EditMode) -> String {
        let mut buf: Vec<u8> = Vec::new();
        for e in events {
            if let Some(c) = e.get("edit_content").and_then(Value::as_str) {
                let at = e["edit_index"].as_u64().unwrap() as usize;
                match mode {
                    EditMode::Rune => {
                        let s = String::from_utf8(buf).unwrap();
                        let mut t: String = s.chars().take(at).collect();
                        t.push_str(c);
                        buf = t.into_bytes();
                    }
                    EditMode::Byte => {
                        if buf.len() < at + c.len() {
                            buf.resize(at + c.len(), 0);
                        }
                        buf[at..at + c.len()].copy_from_slice(c.as_bytes());
                    }
                }
            } else if let Some(c) = e.get("delta_content").and_then(Value::as_str) {
                buf.extend_from_slice(c.as_bytes());
            }
        }
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn every_shape_rebuilds_to_the_full_text() {
        for text in ["hi", "héllo 世界, a longer line of text 🙂", ""] {
            for mode in ["edit=rune", "edit=byte"] {
                for at in ["edit_at=start", "edit_at=middle"] {
                    for piece in ["piece=1", "piece=4", "piece=500"] {
                        for thinking in [true, false] {
                            let d = ZaiDirectives::parse(&format!("{mode} {at} {piece}"));
                            let (r, a) = reply_for(text, &d);
                            let ev = data_events(&r, &a, thinking, &d, json!({}));
                            let want = full_text(&r, &a, thinking, d.duration);
                            assert_eq!(rebuild(&ev, d.edit), want, "{text:?} {mode} {at} {piece}");
                            let edits = ev.iter().filter(|e| e.get("edit_index").is_some()).count();
                            let expect =
                                usize::from(thinking) + usize::from(d.edit_at == EditAt::Middle);
                            assert_eq!(edits, expect);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn wrong_semantics_garble_the_middle_edit() {
        let d = ZaiDirectives::parse("edit=byte edit_at=middle piece=3");
        let (r, a) = reply_for("ünïcödé text here", &d);
        let ev = data_events(&r, &a, true, &d, json!({}));
        assert_ne!(rebuild(&ev, EditMode::Rune), full_text(&r, &a, true, 1));
    }

    #[test]
    fn tool_answers() {
        let d = ZaiDirectives::parse("tool=gfa tool_name=lookup tool_args=eyJxIjoxfQ");
        let body = json!({});
        assert_eq!(
            tool_answer(&body, &d).unwrap(),
            "I will call a tool.\n<<<TOOL_CALL>>>{\"name\":\"lookup\",\"arguments\":{\"q\":1}}<<<END_TOOL_CALL>>>"
        );
        let d = ZaiDirectives::parse("tool=json");
        let body = json!({"messages": [{"role": "user", "content": "Tools:\n1. find_it\n   Arguments: none"}]});
        let a = tool_answer(&body, &d).unwrap();
        assert!(
            a.contains(r#""name":"find_it""#) && a.contains(r#""arguments":"{}""#),
            "{a}"
        );
        let d = ZaiDirectives::parse("tool=k2 tool_name=f");
        assert_eq!(tool_answer(&json!({"messages": []}), &d), None);
        let body =
            json!({"messages": [{"role": "user", "content": "use <Function_Ab12_Start/> then"}]});
        let a = tool_answer(&body, &d).unwrap();
        assert!(
            a.contains("<Function_Ab12_Start/>\n<function_calls>\n<function_call>\n<tool>f</tool>"),
            "{a}"
        );
    }
}
