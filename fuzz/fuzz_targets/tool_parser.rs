//! Tool-call parser and detector: arbitrary text never panics, parsed calls name a declared
//! tool with a JSON-object argument string, and the detector's output does not depend on
//! how the text is split. Input: one header byte (tool_choice, split seed, finish/abort),
//! then the text (UTF-8, lossily).
//!
//! cargo +nightly fuzz run tool_parser -- -max_total_time=60

#![no_main]

mod common;

use std::sync::Arc;

use k2proxy::transform::tools::{parse_block, ToolChoice, ToolDetector, ToolPiece, ToolSet};
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};

const TRIGGER: &str = "<Function_Fuzz_Start/>";

fn tool_set(choice: u8) -> ToolSet {
    let list = vec![
        json!({"type": "function", "function": {"name": "get_weather", "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city"]}}}),
        json!({"name": "search", "parameters": {"type": "object",
            "properties": {"query": {"type": "string"}}}}),
        json!({"type": "function", "function": {"name": "ping"}}),
    ];
    let c = match choice % 3 {
        0 => json!("auto"),
        1 => json!("required"),
        _ => json!({"type": "function", "function": {"name": "get_weather"}}),
    };
    let mut set = ToolSet::from_request(Some(&list), Some(&c))
        .unwrap()
        .unwrap();
    set.trigger = TRIGGER.to_string();
    set
}

#[derive(Debug, PartialEq)]
enum Piece {
    Content(String),
    Call(usize, String, String),
}

fn check_call(set: &ToolSet, name: &str, args: &str) {
    assert!(set.tool(name).is_some(), "unknown tool {name}");
    if let ToolChoice::Function(f) = &set.choice {
        assert_eq!(name, f);
    }
    let v: Value = serde_json::from_str(args).expect("arguments are JSON");
    assert!(v.is_object());
}

fn detect(pieces: &[&str], set: &Arc<ToolSet>, abort: bool) -> (Vec<Piece>, usize, u64) {
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
    let mut out: Vec<Piece> = Vec::new();
    for p in raw {
        match p {
            ToolPiece::Content(t) => {
                assert!(!t.is_empty());
                match out.last_mut() {
                    Some(Piece::Content(last)) => last.push_str(&t),
                    _ => out.push(Piece::Content(t)),
                }
            }
            ToolPiece::Call { index, call } => {
                check_call(set, &call.name, &call.arguments);
                out.push(Piece::Call(index, call.name, call.arguments));
            }
        }
    }
    (out, d.calls(), d.malformed())
}

fuzz_target!(|data: &[u8]| {
    let (h, body) = common::header(data);
    let text = String::from_utf8_lossy(body);
    let set = Arc::new(tool_set(h));

    // The block parser on the text as a block's inside.
    if let Ok(calls) = parse_block(&set, &text) {
        assert!(!calls.is_empty());
        for (name, args) in &calls {
            check_call(&set, name, args);
        }
    }

    // The streaming detector, whole and split.
    let abort = h & 128 != 0;
    let whole = detect(&[&text], &set, abort);
    let pieces = common::split_str(&text, h);
    assert_eq!(detect(&pieces, &set, abort), whole, "split {pieces:?}");
    if whole.1 == 0 {
        let content: String = whole
            .0
            .iter()
            .map(|p| match p {
                Piece::Content(t) => t.as_str(),
                Piece::Call(..) => "",
            })
            .collect();
        assert_eq!(
            content,
            text.trim_start(),
            "without a call, all text is content"
        );
    }
});
