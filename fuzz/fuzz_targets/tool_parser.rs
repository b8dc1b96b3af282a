//! Tool-call parser and detector: arbitrary text never panics, parsed calls name a declared
//! tool with a JSON-object argument string, and the detector's output does not depend on
//! how the text is split. Input: one header byte (tool_choice, split seed, finish/abort),
//! then the text (UTF-8, lossily).
//!
//! cargo +nightly fuzz run tool_parser -- -max_total_time=60

#![no_main]

mod common;

use std::sync::Arc;

use k2proxy::pipeline::tools::{parse_block, ToolSet};
use libfuzzer_sys::fuzz_target;
use serde_json::json;

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

fuzz_target!(|data: &[u8]| {
    let (h, body) = common::header(data);
    let text = String::from_utf8_lossy(body);
    let set = Arc::new(tool_set(h));

    // The block parser on the text as a block's inside.
    if let Ok(calls) = parse_block(&set, &text) {
        assert!(!calls.is_empty());
        for (name, args) in &calls {
            common::check_call(&set, name, args);
        }
    }

    // The streaming detector, whole and split.
    let abort = h & 128 != 0;
    let whole = common::detect(&[&text], &set, abort);
    let pieces = common::split_str(&text, h);
    assert_eq!(common::detect(&pieces, &set, abort), whole, "split {pieces:?}");
    if whole.1 == 0 {
        assert_eq!(
            common::content_of(&whole.0),
            text.trim_start(),
            "without a call, all text is content"
        );
    }
});
