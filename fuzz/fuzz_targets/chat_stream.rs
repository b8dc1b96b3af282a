//! `ChatStream` (and the non-stream `Completion`): arbitrary upstream bytes never panic,
//! the output is well-formed `chat.completion.chunk` SSE ending in exactly one of `[DONE]`
//! and an error event, and nothing depends on how the upstream body is split.
//! Input: one header byte (format and `content` delivery, reasoning mode, implicit think,
//! usage, tools, split seed), then the upstream body.
//!
//! cargo +nightly fuzz run chat_stream -- -max_total_time=60

#![no_main]

mod common;

use std::sync::Arc;

use k2proxy::pipeline::complete::Completion;
use k2proxy::pipeline::stream::ChatStream;
use k2proxy::provider::k2think::decode::{ContentDelivery, StreamOptions, UpstreamFormat};
use k2proxy::core::ReasoningMode;
use k2proxy::pipeline::tools::ToolSet;
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};

const MODEL: &str = "MBZUAI-IFM/K2-Think-v2";

fn tools() -> Arc<ToolSet> {
    let list = vec![
        json!({"type": "function", "function": {"name": "get_weather", "parameters": {
            "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}),
        json!({"type": "function", "function": {"name": "ping"}}),
    ];
    let mut set = ToolSet::from_request(Some(&list), None).unwrap().unwrap();
    set.trigger = "<Function_Fuzz_Start/>".to_string();
    Arc::new(set)
}

struct Opts {
    format: UpstreamFormat,
    reasoning: ReasoningMode,
    implicit: bool,
    include_usage: bool,
    tools: Option<Arc<ToolSet>>,
    delivery: ContentDelivery,
}

fn run_stream(pieces: &[&[u8]], o: &Opts) -> (Result<(), String>, common::Assembled) {
    let mut s = ChatStream::new(
        StreamOptions {
            id: "chatcmpl-fuzz".into(),
            created: 1_700_000_000,
            model: MODEL.into(),
            reasoning: o.reasoning,
            implicit_think: o.implicit,
            include_usage: o.include_usage,
            tools: o.tools.clone(),
            delivery: o.delivery,
        },
        o.format,
    );
    let mut out = Vec::new();
    s.start(&mut out);
    for p in pieces {
        s.push(p, &mut out);
    }
    let r = s.finish(&mut out);
    let a = common::assemble(&out, MODEL);
    assert_eq!(r.as_ref().err(), a.error.as_ref());
    let mut more = Vec::new();
    assert_eq!(s.finish(&mut more), r);
    assert!(more.is_empty(), "nothing after the end");
    (r, a)
}

type Completed = Result<(String, String, String, Vec<(String, String)>), String>;

fn run_complete(pieces: &[&[u8]], o: &Opts) -> Completed {
    let mut c = Completion::new(o.format, o.implicit)
        .with_delivery(o.delivery)
        .with_tools(o.tools.clone());
    for p in pieces {
        c.push(p);
    }
    let r = c.finish()?;
    let v: Value =
        serde_json::from_slice(&r.to_json("id", 1, MODEL, o.reasoning)).expect("completion JSON");
    assert_eq!(v["object"], "chat.completion");
    let calls = r
        .tool_calls
        .into_iter()
        .map(|c| (c.name, c.arguments))
        .collect();
    Ok((r.reasoning, r.content, r.finish_reason, calls))
}

fuzz_target!(|data: &[u8]| {
    let (h, body) = common::header(data);
    let o = Opts {
        format: if h & 3 == 0 {
            UpstreamFormat::Json
        } else {
            UpstreamFormat::Sse
        },
        reasoning: [
            ReasoningMode::Field,
            ReasoningMode::Inline,
            ReasoningMode::Drop,
        ][usize::from((h >> 2) & 3) % 3],
        implicit: h & 16 != 0,
        include_usage: h & 32 != 0,
        tools: (h & 64 != 0).then(tools),
        // SSE: the three readings of `content` values; JSON: the default.
        delivery: match h & 3 {
            2 => ContentDelivery::Incremental,
            3 => ContentDelivery::Auto,
            _ => ContentDelivery::Cumulative,
        },
    };
    let pieces = common::split_bytes(body, h);
    let (r, whole) = run_stream(&[body], &o);
    let (r2, split) = run_stream(&pieces, &o);
    assert_eq!(r2, r);
    assert_eq!(split, whole, "split {pieces:?}");
    let complete = run_complete(&[body], &o);
    assert_eq!(run_complete(&pieces, &o), complete);
    assert_eq!(complete.is_ok(), r.is_ok());
});
