//! Deterministic answer text, its markup forms and the SSE event script.

use std::io;

use bytes::Bytes;
use serde::Serialize;
use serde_json::{json, Value};

use super::directives::{strip_directives, Delivery, Directives, End, Fault, Form, JsonStyle};

const FILLER: [&str; 12] = [
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet",
    "kilo", "lima",
];

fn filler(n: usize) -> Vec<&'static str> {
    (0..n).map(|i| FILLER[i % FILLER.len()]).collect()
}

/// Text of the last `user` message: a string content, or its `text` parts joined with `\n`.
pub fn last_user_text(messages: &Value) -> String {
    let Some(list) = messages.as_array() else {
        return String::new();
    };
    let Some(msg) = list
        .iter()
        .rev()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
    else {
        return String::new();
    };
    content_text(msg.get("content").unwrap_or(&Value::Null))
}

/// Text of one message content (string, or array of parts).
pub fn content_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| {
                if p.get("type").and_then(Value::as_str) == Some("text") {
                    p.get("text").and_then(Value::as_str)
                } else {
                    p.as_str()
                }
            })
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// The deterministic `(reasoning, answer)` for the last user message.
///
/// `[[mock: ...]]` blocks are removed from the text first. The reasoning has two lines, then
/// `reasoning_words` filler words, ten per line; the answer is `Echo: <text>` plus
/// `answer_words` filler words.
pub fn reply_for(last_user_text: &str, d: &Directives) -> (String, String) {
    let text = strip_directives(last_user_text);
    let n = text.chars().count();
    let mut reasoning = format!("The user wrote {n} characters.\nI should reply with an echo.");
    for line in filler(d.reasoning_words).chunks(10) {
        reasoning.push('\n');
        reasoning.push_str(&line.join(" "));
    }
    let mut answer = d
        .answer_override
        .clone()
        .unwrap_or_else(|| format!("Echo: {text}"));
    for w in filler(d.answer_words) {
        answer.push(' ');
        answer.push_str(w);
    }
    (reasoning, answer)
}

fn quote(text: &str) -> String {
    text.split('\n')
        .map(|l| format!("> {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn details_pending(reasoning_so_far: &str) -> String {
    format!(
        "<details type=\"reasoning\" done=\"false\">\n<summary>Thinking…</summary>\n{}",
        quote(reasoning_so_far)
    )
}

fn details_done_head(reasoning: &str, duration: u64) -> String {
    format!(
        "<details type=\"reasoning\" done=\"true\" duration=\"{duration}\">\n<summary>Thought for {duration} seconds</summary>\n{}\n</details>\n",
        quote(reasoning)
    )
}

/// The full markup text for a reasoning/answer pair; `tag` is the v2 forms' reasoning tag
/// (`think`, or `think_fast` / `think_faster` for the lower efforts).
pub fn render(form: Form, reasoning: &str, answer: &str, duration: u64, tag: &str) -> String {
    match form {
        Form::V1 => format!("<think>{reasoning}</think>\n<answer>{answer}</answer>"),
        Form::V2 => format!("<{tag} duration=\"{duration}\">{reasoning}</{tag}>\n{answer}"),
        Form::V2Answer => {
            format!("<{tag} duration=\"{duration}\">{reasoning}</{tag}>\n<answer>{answer}</answer>")
        }
        Form::V2NoOpen => format!("{reasoning}</{tag}>\n\n{answer}"),
        Form::Details => format!(
            "{}<answer>{answer}</answer>",
            details_done_head(reasoning, duration)
        ),
        Form::DetailsBare => format!("{}{answer}", details_done_head(reasoning, duration)),
        Form::None => answer.to_string(),
    }
}

/// The final markup the mock produces for this prompt and these directives.
pub fn markup_for(last_user_text: &str, d: &Directives) -> String {
    let (r, a) = reply_for(last_user_text, d);
    render(d.form, &r, &a, d.duration, d.think_tag())
}

/// With `tool_call`, the answer of a model that follows the tool prompt: a short preface,
/// the request's trigger, and a `<function_calls>` block. `None` when the request carries no
/// trigger (no tools) or no `tool_call` directive.
pub fn tool_call_answer(body: &str, d: &Directives) -> Option<String> {
    use base64::Engine;
    let name = d.tool_call.as_deref()?;
    let at = body.find("<Function_")?;
    let rest = &body[at..];
    let end = rest.find("_Start/>")? + "_Start/>".len();
    let trigger = &rest[..end];
    let args: Value = d
        .tool_args
        .as_deref()
        .and_then(|b| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(b.trim_end_matches('='))
                .ok()
        })
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_else(|| serde_json::json!({}));
    let mut block = format!("I will use a tool.\n{trigger}\n<function_calls>\n<function_call>\n<tool>{name}</tool>\n<args>\n");
    if let Some(map) = args.as_object() {
        for (k, v) in map {
            block.push_str(&format!("<{k}>{v}</{k}>\n"));
        }
    }
    block.push_str("</args>\n</function_call>\n</function_calls>");
    Some(block)
}

/// Byte offsets of every `chunk`-th char boundary, ending with `text.len()`.
fn cuts(text: &str, chunk: usize) -> Vec<usize> {
    let chunk = chunk.max(1);
    let mut out: Vec<usize> = text
        .char_indices()
        .map(|(i, _)| i)
        .enumerate()
        .filter(|(n, _)| *n > 0 && n % chunk == 0)
        .map(|(_, i)| i)
        .collect();
    out.push(text.len());
    out
}

/// Splits `text` into pieces of `chunk` chars (one empty piece for an empty text).
pub fn pieces(text: &str, chunk: usize) -> Vec<String> {
    let mut prev = 0;
    cuts(text, chunk)
        .into_iter()
        .map(|c| {
            let p = text[prev..c].to_string();
            prev = c;
            p
        })
        .collect()
}

/// Cumulative snapshots; the last one is the full markup. For `details` (and
/// `details-bare`) the reasoning grows under a `done="false"` head, then the head is
/// rewritten and the answer grows.
pub fn snapshots(
    form: Form,
    reasoning: &str,
    answer: &str,
    duration: u64,
    chunk: usize,
    tag: &str,
) -> Vec<String> {
    if !matches!(form, Form::Details | Form::DetailsBare) {
        let full = render(form, reasoning, answer, duration, tag);
        return cuts(&full, chunk)
            .into_iter()
            .map(|c| full[..c].to_string())
            .collect();
    }
    let mut out: Vec<String> = cuts(reasoning, chunk)
        .into_iter()
        .map(|c| details_pending(&reasoning[..c]))
        .collect();
    let head = details_done_head(reasoning, duration);
    let tail = if form == Form::Details {
        format!("<answer>{answer}</answer>")
    } else {
        answer.to_string()
    };
    out.extend(
        cuts(&tail, chunk)
            .into_iter()
            .map(|c| format!("{head}{}", &tail[..c])),
    );
    out
}

struct PyFormatter;

impl serde_json::ser::Formatter for PyFormatter {
    fn begin_array_value<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }

    fn begin_object_key<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }

    fn begin_object_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        w.write_all(b": ")
    }

    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        for ch in fragment.chars() {
            if ch.is_ascii() {
                w.write_all(&[ch as u8])?;
            } else {
                let mut units = [0u16; 2];
                for u in ch.encode_utf16(&mut units) {
                    write!(w, "\\u{u:04x}")?;
                }
            }
        }
        Ok(())
    }
}

/// Serializes `v` in the given style.
pub fn to_json(v: &Value, style: JsonStyle) -> Vec<u8> {
    match style {
        JsonStyle::Compact => serde_json::to_vec(v).unwrap_or_default(),
        JsonStyle::Python => {
            let mut buf = Vec::new();
            let mut ser = serde_json::Serializer::with_formatter(&mut buf, PyFormatter);
            match v.serialize(&mut ser) {
                Ok(()) => buf,
                Err(_) => Vec::new(),
            }
        }
    }
}

/// Rough token counts: chars / 4, at least 1.
pub fn rough_tokens(chars: usize) -> u64 {
    (chars as u64 / 4).max(1)
}

/// Usage object for a prompt of `prompt_chars` and a completion text.
pub fn usage_json(prompt_chars: usize, completion: &str) -> Value {
    let p = rough_tokens(prompt_chars);
    let c = rough_tokens(completion.chars().count());
    json!({"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c})
}

/// One SSE event: `data: <payload>` plus the blank line.
pub fn sse_event(payload: &[u8], crlf: bool) -> Bytes {
    let nl: &[u8] = if crlf { b"\r\n\r\n" } else { b"\n\n" };
    let mut out = Vec::with_capacity(payload.len() + 10);
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(payload);
    out.extend_from_slice(nl);
    Bytes::from(out)
}

/// The message of the `fault=detail` event.
pub const DETAIL_EVENT: &str = "The model is overloaded; please try again later.";

/// Everything needed to build a stream's events.
pub struct StreamSpec<'a> {
    pub directives: &'a Directives,
    pub last_user_text: &'a str,
    pub prompt_chars: usize,
    pub model: &'a str,
    pub id: &'a str,
    pub created: u64,
}

/// How a stream ends after its events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tail {
    /// Normal end of body.
    Finish,
    /// Abort the body (no chunked terminator).
    Cut,
    /// Keep silent for this many ms, then abort.
    Stall(u64),
}

/// Builds the SSE events of a streamed answer, with the fault (if any) applied.
pub fn stream_events(spec: &StreamSpec<'_>) -> (Vec<Bytes>, Tail) {
    let d = spec.directives;
    let (r, a) = reply_for(spec.last_user_text, d);
    let tag = d.think_tag();
    let full = render(d.form, &r, &a, d.duration, tag);
    let ev = |v: Value| sse_event(&to_json(&v, d.json), d.crlf);
    let mut events = Vec::new();
    if d.task_id {
        events.push(ev(json!({ "task_id": super::util::uuid() })));
    }
    match d.delivery {
        Delivery::Cumulative => {
            for s in snapshots(d.form, &r, &a, d.duration, d.chunk, tag) {
                events.push(ev(json!({ "content": s })));
            }
        }
        Delivery::Incremental => {
            for p in pieces(&full, d.chunk) {
                events.push(ev(json!({ "content": p })));
            }
        }
        Delivery::Delta => {
            for (i, p) in pieces(&full, d.chunk).into_iter().enumerate() {
                let delta = if i == 0 {
                    json!({"role": "assistant", "content": p})
                } else {
                    json!({ "content": p })
                };
                events.push(ev(json!({
                    "id": spec.id, "object": "chat.completion.chunk", "created": spec.created,
                    "model": spec.model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": null}],
                })));
            }
            events.push(ev(json!({
                "id": spec.id, "object": "chat.completion.chunk", "created": spec.created,
                "model": spec.model,
                "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
            })));
        }
    }
    if d.usage {
        events.push(ev(json!({ "usage": usage_json(spec.prompt_chars, &full) })));
    }
    if matches!(d.end, End::Done | End::Both | End::Ragged) {
        events.push(ev(json!({"done": true, "content": full})));
        if d.finish_chunk {
            // What the newest clients see after `done`: an OpenAI-style chunk. Its delta
            // repeats the answer, so a client that adds it on top of `content` doubles it.
            events.push(ev(json!({
                "id": spec.id, "object": "chat.completion.chunk", "created": spec.created,
                "model": spec.model,
                "choices": [{"index": 0, "delta": {"role": "assistant", "content": a}, "finish_reason": "stop"}],
            })));
        }
    }
    if matches!(d.end, End::Marker | End::Both) {
        events.push(sse_event(b"[DONE]", d.crlf));
    }
    match d.fault {
        Fault::Cut => {
            events.truncate(d.cut_after);
            (events, Tail::Cut)
        }
        Fault::Stall => {
            events.truncate(d.cut_after);
            (events, Tail::Stall(d.stall_ms))
        }
        Fault::ErrorEvent => {
            events.truncate(d.cut_after);
            events.push(ev(json!({"error": {"message": "upstream model error"}})));
            (events, Tail::Finish)
        }
        Fault::DetailEvent => {
            events.truncate(d.cut_after);
            events.push(ev(json!({"detail": DETAIL_EVENT})));
            (events, Tail::Finish)
        }
        _ if d.end == End::Ragged => (events, Tail::Cut),
        _ => (events, Tail::Finish),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_is_deterministic_and_unicode_safe() {
        let d = Directives::parse("reasoning_words=12 answer_words=2");
        let (r, a) = reply_for("héllo 世界 [[mock: form=v2]]", &d);
        assert!(r.starts_with("The user wrote 8 characters.\nI should reply with an echo.\nalpha"));
        assert_eq!(r.lines().count(), 4);
        assert_eq!(a, "Echo: héllo 世界 alpha bravo");
    }

    #[test]
    fn pieces_respect_char_boundaries() {
        let t = "aé世🙂bc";
        let p = pieces(t, 2);
        assert_eq!(p, vec!["aé", "世🙂", "bc"]);
        assert_eq!(pieces("", 4), vec![""]);
        let s = snapshots(Form::V1, "r", "é", 0, 3, "think");
        assert_eq!(
            s.last().map(String::as_str),
            Some("<think>r</think>\n<answer>é</answer>")
        );
    }

    #[test]
    fn details_rewrite() {
        let s = snapshots(Form::Details, "ab\ncd", "X", 4, 2, "think");
        assert!(s[0].contains("done=\"false\"") && s[0].ends_with("> ab"));
        assert!(s.iter().any(|x| x.ends_with("> ab\n> cd")));
        let last = s.last().cloned().unwrap_or_default();
        assert_eq!(
            last,
            "<details type=\"reasoning\" done=\"true\" duration=\"4\">\n<summary>Thought for 4 seconds</summary>\n> ab\n> cd\n</details>\n<answer>X</answer>"
        );
    }

    #[test]
    fn python_json() {
        let v = json!({"content": "é🙂\"", "done": true});
        let out = String::from_utf8(to_json(&v, JsonStyle::Python)).unwrap_or_default();
        assert_eq!(out, r#"{"content": "\u00e9\ud83d\ude42\"", "done": true}"#);
    }
}
