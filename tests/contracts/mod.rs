//! Contract checks shared by the property tests (`tests/props.rs`) and the fuzz targets
//! (`fuzz/`, which include this file by path): what our stream output and our request
//! handling and our tool detector must always satisfy, whatever the input. They panic on a violation.
#![allow(dead_code)]

use std::sync::Arc;

use k2proxy::pipeline::tools::{ToolChoice, ToolDetector, ToolPiece, ToolSet};
use k2proxy::provider::k2think::request::{to_k2think, RewriteOptions};
use k2proxy::provider::k2think::BodyStyle;
use k2proxy::sse::{SseDecoder, DEFAULT_MAX_LINE};
use k2proxy::surface::chat::files;
use k2proxy::surface::chat::request::ChatRequest;
use k2proxy::surface::Surface;
use serde_json::{json, Value};

/// What a client assembles from our SSE output.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Assembled {
    pub reasoning: String,
    pub content: String,
    /// (index, name, arguments)
    pub calls: Vec<(u64, String, Value)>,
    pub finish_reason: Option<String>,
    pub usage: Option<Value>,
    pub error: Option<String>,
    pub done: bool,
}

/// Check the framing and the OpenAI stream contract of `out` (chunks of `model`), and
/// assemble it.
pub fn assemble(out: &[u8], model: &str) -> Assembled {
    // Framing: nothing but `data: <one line>\n\n` frames.
    let mut payloads: Vec<&[u8]> = Vec::new();
    let mut rest = out;
    while !rest.is_empty() {
        let body = rest.strip_prefix(b"data: ").unwrap_or_else(|| {
            panic!(
                "frame without `data: `: {:?}",
                String::from_utf8_lossy(rest)
            )
        });
        let end = body
            .iter()
            .position(|&b| b == b'\n' || b == b'\r')
            .expect("unterminated frame");
        assert_eq!(&body[end..end + 2], b"\n\n", "frame ends with a blank line");
        payloads.push(&body[..end]);
        rest = &body[end + 2..];
    }
    // Our own decoder sees the same events.
    let mut decoded: Vec<(String, Vec<u8>)> = Vec::new();
    let mut d = SseDecoder::with_max_line(DEFAULT_MAX_LINE);
    let mut take =
        |e: k2proxy::sse::Event<'_>| decoded.push((e.event.to_string(), e.data.to_vec()));
    d.push(out, &mut take).expect("our SSE decodes");
    d.finish(&mut take).expect("our SSE decodes");
    let expected: Vec<(String, Vec<u8>)> = payloads
        .iter()
        .map(|p| (String::new(), p.to_vec()))
        .collect();
    assert_eq!(decoded, expected);

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
        let v: Value = serde_json::from_slice(data).unwrap_or_else(|e| {
            panic!(
                "event is not JSON ({e}): {:?}",
                String::from_utf8_lossy(data)
            )
        });
        if let Some(err) = v.get("error") {
            assert_eq!(
                a.finish_reason.as_deref(),
                Some("error"),
                "finish chunk before the error"
            );
            assert_eq!(err["type"], "upstream_error");
            assert!(err["code"].is_string());
            assert_eq!(err["param"], Value::Null);
            a.error = Some(err["message"].as_str().expect("error.message").to_string());
            continue;
        }
        assert_eq!(v["object"], "chat.completion.chunk");
        assert_eq!(v["model"], model);
        assert!(v["created"].is_u64());
        match &id {
            None => id = Some(v["id"].clone()),
            Some(i) => assert_eq!(&v["id"], i, "one id for every chunk"),
        }
        let choices = v["choices"].as_array().expect("choices");
        if choices.is_empty() {
            assert!(a.finish_reason.is_some(), "usage after the finish chunk");
            assert!(a.usage.is_none(), "one usage chunk");
            assert!(v["usage"].is_object());
            a.usage = Some(v["usage"].clone());
            continue;
        }
        assert!(
            a.finish_reason.is_none(),
            "no choice chunk after the finish chunk"
        );
        assert_eq!(choices.len(), 1);
        let c = &choices[0];
        assert_eq!(c["index"], 0);
        let delta = c["delta"].as_object().expect("delta");
        if n == 0 {
            assert_eq!(c["delta"], json!({"role": "assistant", "content": ""}));
            continue;
        }
        assert!(delta.get("role").is_none(), "role only on the first chunk");
        if let Some(f) = c["finish_reason"].as_str() {
            assert!(delta.is_empty());
            a.finish_reason = Some(f.to_string());
            continue;
        }
        assert_eq!(delta.len(), 1, "one field per delta");
        if let Some(r) = delta.get("reasoning_content") {
            let r = r.as_str().expect("reasoning string");
            assert!(!r.is_empty(), "no empty deltas");
            a.reasoning.push_str(r);
        } else if let Some(t) = delta.get("content") {
            let t = t.as_str().expect("content string");
            assert!(!t.is_empty(), "no empty deltas");
            a.content.push_str(t);
        } else {
            let calls = delta["tool_calls"].as_array().expect("tool_calls");
            assert_eq!(calls.len(), 1);
            let call = &calls[0];
            let index = call["index"].as_u64().expect("index");
            assert_eq!(index, a.calls.len() as u64, "call indexes count from 0");
            assert!(call["id"].as_str().expect("id").starts_with("call_"));
            assert_eq!(call["type"], "function");
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
        "exactly one of [DONE] and an error ends the stream"
    );
    a
}

/// `body` as a client request on every API surface (chat completions, Messages,
/// Responses): parsed, or refused with a 4xx error in the surface's shape; a parsed request
/// goes through the tool set, the K2Think rewrite (both body styles) and file resolution
/// under `limits` without panicking, and its payload is JSON.
pub fn check_request(body: &[u8], limits: files::Limits) {
    for surface in [Surface::Chat, Surface::Messages, Surface::Responses] {
        check_request_on(surface, body, limits);
    }
}

fn check_request_on(surface: Surface, body: &[u8], limits: files::Limits) {
    let mut req = match surface.parse(body, false) {
        Ok(p) => p.req,
        Err(e) => {
            assert!((400..500).contains(&e.status), "status {}", e.status);
            let v: Value =
                serde_json::from_slice(&surface.error_body(&e)).expect("error body is JSON");
            assert!(v["error"]["message"].is_string());
            return;
        }
    };
    let set = ToolSet::from_request(req.tools.as_deref(), req.tool_choice.as_ref());
    if let Err((param, _)) = &set {
        assert!(param.starts_with("tool"), "param {}", param);
    }
    let set = set.ok().flatten();
    let rewrite = |req: &ChatRequest| {
        for (style, template) in [
            (BodyStyle::Minimal, None),
            (
                BodyStyle::Webui,
                Some("Tools: {tools_list}\nSignal: {trigger_signal} {x}"),
            ),
        ] {
            let payload = to_k2think(
                req,
                RewriteOptions {
                    tools: set.as_ref(),
                    template,
                    style,
                    stream: req.stream,
                    ..RewriteOptions::streamed("K2-Think")
                },
            );
            let v: Value = serde_json::from_slice(&payload.to_bytes()).expect("payload is JSON");
            assert!(v["messages"].is_array());
            assert!(!payload.messages.is_empty());
            // The new upstream refuses an assistant message without a string thinking field.
            for m in v["messages"].as_array().into_iter().flatten() {
                if m["role"] == "assistant" {
                    assert!(m["reasoning"].is_string(), "thinking field: {m}");
                }
            }
        }
    };
    rewrite(&req);
    match files::resolve(&mut req, limits) {
        Ok(()) => rewrite(&req),
        Err(e) => {
            assert!((400..500).contains(&e.status), "status {}", e.status);
            assert!(e.param.starts_with("messages["), "param {}", e.param);
        }
    }
}

/// Detector output with consecutive content merged and call ids left out.
#[derive(Debug, Clone, PartialEq)]
pub enum Piece {
    Content(String),
    Call(usize, String, Value),
}

/// Run the streaming tool detector over `pieces` and check its contract: nothing after the
/// end, no empty content, every call valid (see [`check_call`]) and indexed from 0. Returns
/// the merged output, the calls counted and the malformed blocks counted.
pub fn detect(pieces: &[&str], set: &Arc<ToolSet>, abort: bool) -> (Vec<Piece>, usize, u64) {
    let mut d = ToolDetector::new(Arc::clone(set));
    let mut raw = Vec::new();
    for p in pieces {
        d.push(p, &mut raw);
    }
    if abort {
        d.abort(&mut raw);
    } else {
        d.finish(&mut raw);
    }
    // Nothing after the end.
    let n = raw.len();
    d.push("more <function_calls>", &mut raw);
    d.finish(&mut raw);
    assert_eq!(raw.len(), n);

    let mut out: Vec<Piece> = Vec::new();
    for p in raw {
        match p {
            ToolPiece::Content(t) => {
                assert!(!t.is_empty(), "no empty content piece");
                match out.last_mut() {
                    Some(Piece::Content(last)) => last.push_str(&t),
                    _ => out.push(Piece::Content(t)),
                }
            }
            ToolPiece::Call { index, call } => {
                assert!(
                    call.id.starts_with("call_") && call.id.len() == 29,
                    "{}",
                    call.id
                );
                let args = check_call(set, &call.name, &call.arguments);
                out.push(Piece::Call(index, call.name, args));
            }
        }
    }
    for (i, c) in out
        .iter()
        .filter(|p| matches!(p, Piece::Call(..)))
        .enumerate()
    {
        assert!(
            matches!(c, Piece::Call(n, ..) if *n == i),
            "call indexes count from 0"
        );
    }
    (out, d.calls(), d.malformed())
}

/// The content pieces, joined.
pub fn content_of(pieces: &[Piece]) -> String {
    pieces
        .iter()
        .filter_map(|p| match p {
            Piece::Content(t) => Some(t.as_str()),
            Piece::Call(..) => None,
        })
        .collect()
}

/// A parsed call names a declared tool (the forced one under a named `tool_choice`) and
/// has a JSON object as arguments; returns the arguments.
pub fn check_call(set: &ToolSet, name: &str, arguments: &str) -> Value {
    assert!(set.tool(name).is_some(), "unknown tool {name}");
    if let ToolChoice::Function(f) = &set.choice {
        assert_eq!(name, f);
    }
    let args: Value = serde_json::from_str(arguments).expect("arguments are JSON");
    assert!(args.is_object());
    args
}
