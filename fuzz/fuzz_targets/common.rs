//! Helpers shared by the fuzz targets: a header byte for options, input splitting, and the
//! OpenAI stream contract check (the same rules as `tests/props.rs`).

#![allow(dead_code)]

use k2proxy::sse::{SseDecoder, DEFAULT_MAX_LINE};
use serde_json::{json, Value};

/// The first byte (options) and the rest; an empty input gives `(0, [])`.
pub fn header(data: &[u8]) -> (u8, &[u8]) {
    match data.split_first() {
        Some((&h, rest)) => (h, rest),
        None => (0, data),
    }
}

/// Piece lengths drawn from a xorshift seeded by `seed` (1 to 16 bytes, some empty).
fn lengths(total: usize, seed: u8) -> Vec<usize> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ u64::from(seed).wrapping_mul(0x2545_F491_4F6C_DD1D);
    let mut out = Vec::new();
    let mut left = total;
    loop {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let n = ((x >> 33) % 17) as usize;
        let n = n.min(left);
        out.push(n);
        left -= n;
        if left == 0 {
            return out;
        }
    }
}

/// `data` cut into pieces (at any byte).
pub fn split_bytes(data: &[u8], seed: u8) -> Vec<&[u8]> {
    let mut rest = data;
    lengths(data.len(), seed)
        .into_iter()
        .map(|n| {
            let (a, b) = rest.split_at(n);
            rest = b;
            a
        })
        .collect()
}

/// `s` cut into pieces on char boundaries.
pub fn split_str(s: &str, seed: u8) -> Vec<&str> {
    let mut out = Vec::new();
    let mut at = 0;
    for n in lengths(s.len(), seed) {
        let mut end = (at + n).min(s.len());
        while !s.is_char_boundary(end) {
            end += 1;
        }
        out.push(&s[at..end]);
        at = end;
        if at == s.len() {
            break;
        }
    }
    if at < s.len() {
        out.push(&s[at..]);
    }
    out
}

/// What a client assembles from a `chat.completion.chunk` stream.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Assembled {
    pub reasoning: String,
    pub content: String,
    pub calls: Vec<(u64, String, Value)>,
    pub finish_reason: Option<String>,
    pub usage: Option<Value>,
    pub error: Option<String>,
    pub done: bool,
}

/// Check that `out` is nothing but `data: <JSON>\n\n` frames keeping the OpenAI stream
/// contract (`[DONE]` last and never after an error), and assemble it.
pub fn assemble(out: &[u8], model: &str) -> Assembled {
    let mut payloads: Vec<&[u8]> = Vec::new();
    let mut rest = out;
    while !rest.is_empty() {
        let body = rest
            .strip_prefix(b"data: ")
            .expect("frame starts with `data: `");
        let end = body
            .iter()
            .position(|&b| b == b'\n' || b == b'\r')
            .expect("terminated frame");
        assert_eq!(&body[end..end + 2], b"\n\n", "frame ends with a blank line");
        payloads.push(&body[..end]);
        rest = &body[end + 2..];
    }
    let mut decoded = Vec::new();
    let mut d = SseDecoder::with_max_line(DEFAULT_MAX_LINE);
    d.push(out, |e| decoded.push(e.data.to_vec()))
        .expect("our SSE decodes");
    d.finish(|e| decoded.push(e.data.to_vec()))
        .expect("our SSE decodes");
    assert_eq!(decoded, payloads);

    let mut a = Assembled::default();
    let mut id: Option<Value> = None;
    for (n, data) in payloads.iter().enumerate() {
        assert!(!a.done, "[DONE] must be the last event");
        assert!(a.error.is_none(), "nothing after the error event");
        if *data == b"[DONE]" {
            assert!(a.finish_reason.is_some(), "[DONE] after the finish chunk");
            a.done = true;
            continue;
        }
        let v: Value = serde_json::from_slice(data).expect("event is JSON");
        if let Some(err) = v.get("error") {
            assert_eq!(a.finish_reason.as_deref(), Some("error"));
            assert!(err["code"].is_string());
            a.error = Some(err["message"].as_str().expect("error.message").to_string());
            continue;
        }
        assert_eq!(v["object"], "chat.completion.chunk");
        assert_eq!(v["model"], model);
        match &id {
            None => id = Some(v["id"].clone()),
            Some(i) => assert_eq!(&v["id"], i, "one id for every chunk"),
        }
        let choices = v["choices"].as_array().expect("choices");
        if choices.is_empty() {
            assert!(a.finish_reason.is_some() && a.usage.is_none());
            a.usage = Some(v["usage"].clone());
            continue;
        }
        assert!(
            a.finish_reason.is_none(),
            "no choice chunk after the finish chunk"
        );
        assert_eq!(choices.len(), 1);
        let c = &choices[0];
        let delta = c["delta"].as_object().expect("delta");
        if n == 0 {
            assert_eq!(c["delta"], json!({"role": "assistant", "content": ""}));
            continue;
        }
        if let Some(f) = c["finish_reason"].as_str() {
            assert!(delta.is_empty());
            a.finish_reason = Some(f.to_string());
            continue;
        }
        assert_eq!(delta.len(), 1, "one field per delta");
        if let Some(r) = delta.get("reasoning_content") {
            let r = r.as_str().expect("string");
            assert!(!r.is_empty());
            a.reasoning.push_str(r);
        } else if let Some(t) = delta.get("content") {
            let t = t.as_str().expect("string");
            assert!(!t.is_empty());
            a.content.push_str(t);
        } else {
            let call = &delta["tool_calls"][0];
            let index = call["index"].as_u64().expect("index");
            assert_eq!(index, a.calls.len() as u64);
            let args: Value =
                serde_json::from_str(call["function"]["arguments"].as_str().expect("arguments"))
                    .expect("arguments are JSON");
            assert!(args.is_object());
            let name = call["function"]["name"].as_str().expect("name").to_string();
            a.calls.push((index, name, args));
        }
    }
    assert!(
        a.done != a.error.is_some(),
        "exactly one of [DONE] and an error"
    );
    a
}
