//! Property tests (proptest) for the parsers that see untrusted input: the SSE decoder,
//! the stream transformer (and the non-stream aggregate), the tool-call parser and
//! detector, and the request parser. Arbitrary bytes and arbitrary JSON never panic, the
//! output keeps its contract, and nothing depends on how the input was split.
//!
//! cargo test --release --test props
//!
//! `PROPTEST_CASES=<n>` raises the number of cases per property (default 256). No
//! failure-persistence files are written; a failure prints the minimal input.
//! The same components have `cargo fuzz` targets in `fuzz/`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod contracts;

use std::sync::Arc;

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;
use serde_json::{json, Map, Value};

use contracts::{assemble, check_call, content_of, detect, Assembled, Piece};

const MODEL: &str = "MBZUAI-IFM/K2-Think-v2";

use k2proxy::pipeline::complete::Completion;
use k2proxy::sse::{self, SseDecoder, SseError, DEFAULT_MAX_LINE};
use k2proxy::surface::chat::files;
use k2proxy::surface::chat::request::ChatRequest;

use k2proxy::pipeline::stream::ChatStream;

use k2proxy::provider::k2think::decode::{
    ContentDelivery, K2Decoder, StreamOptions, UpstreamFormat,
};
use k2proxy::surface::chat::stream::ChunkEncoder;

use k2proxy::core::ReasoningMode;
use k2proxy::pipeline::tools::{function_calls_block, parse_block, ToolSet};

// ---------------------------------------------------------------------------
// Shared helpers.

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// How an input is cut into pieces.
#[derive(Debug, Clone)]
enum Split {
    /// At these offsets (each taken modulo `len + 1`; empty pieces included).
    Cuts(Vec<usize>),
    /// Into pieces of this many bytes.
    Every(usize),
}

fn split_strategy() -> impl Strategy<Value = Split> {
    prop_oneof![
        3 => vec(any::<usize>(), 0..10).prop_map(Split::Cuts),
        1 => (1usize..6).prop_map(Split::Every),
    ]
}

fn cut_points(len: usize, split: &Split, boundary: impl Fn(usize) -> bool) -> Vec<usize> {
    let mut at: Vec<usize> = match split {
        Split::Cuts(c) => c.iter().map(|c| c % (len + 1)).collect(),
        Split::Every(n) => (1..=len / n).map(|i| i * n).collect(),
    };
    for a in &mut at {
        while !boundary(*a) {
            *a -= 1;
        }
    }
    at.sort_unstable();
    at
}

fn split_bytes<'a>(input: &'a [u8], split: &Split) -> Vec<&'a [u8]> {
    let mut pieces = Vec::new();
    let mut prev = 0;
    for a in cut_points(input.len(), split, |_| true) {
        pieces.push(&input[prev..a]);
        prev = a;
    }
    pieces.push(&input[prev..]);
    pieces
}

fn split_str<'a>(input: &'a str, split: &Split) -> Vec<&'a str> {
    let mut pieces = Vec::new();
    let mut prev = 0;
    for a in cut_points(input.len(), split, |i| input.is_char_boundary(i)) {
        pieces.push(&input[prev..a]);
        prev = a;
    }
    pieces.push(&input[prev..]);
    pieces
}

fn concat<T: AsRef<[u8]>>(parts: Vec<T>) -> Vec<u8> {
    parts.iter().flat_map(|p| p.as_ref().to_vec()).collect()
}

fn atoms(list: &'static [&'static str]) -> impl Strategy<Value = String> {
    select(list).prop_map(str::to_string)
}

/// Fragments that matter to the answer splitter and the tool detector.
const TEXT_ATOMS: &[&str] = &[
    "<think>",
    "</think>",
    "<think duration=\"3\">",
    "<answer>",
    "</answer>",
    "<details type=\"reasoning\" done=\"true\">",
    "</details>",
    "<summary>Thought</summary>",
    "\n> ",
    ">",
    "<",
    "/",
    "\n",
    "\n\n",
    " ",
    "\t",
    "Hello",
    " world.",
    "你好",
    "👋",
    "\u{feff}",
    "\\",
    "\"",
    TRIGGER,
    "<Function_",
    "_Start/>",
    "<function_calls>",
    "</function_calls>",
    "<function_call>",
    "</function_call>",
    "<tool>get_weather</tool>",
    "<tool>search</tool>",
    "<tool>nope</tool>",
    "<args>",
    "</args>",
    "<city>\"Paris\"</city>",
    "<query>rust</query>",
    "<days>3</days>",
    "<![CDATA[x<y]]>",
    "&lt;&amp;&#x41;",
    "<invoke name=\"get_weather\">",
    "</invoke>",
    "<parameter name=\"city\">",
    "</parameter>",
    "```",
    "```xml\n",
    "{\"city\":\"Oslo\"}",
];

fn text() -> impl Strategy<Value = String> {
    vec(
        prop_oneof![
            3 => atoms(TEXT_ATOMS),
            1 => "[a-zA-Z0-9 .,\n]{0,8}",
            1 => any::<String>().prop_map(|s| s.chars().take(6).collect::<String>()),
        ],
        0..16,
    )
    .prop_map(|v| v.concat())
}

/// JSON object keys: the ones the code looks at, and others.
const KEYS: &[&str] = &[
    "content",
    "done",
    "usage",
    "choices",
    "delta",
    "message",
    "reasoning_content",
    "finish_reason",
    "error",
    "detail",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "completion_tokens_details",
    "reasoning_tokens",
    "index",
    "role",
    "type",
    "text",
    "image_url",
    "url",
    "file",
    "file_data",
    "filename",
    "file_id",
    "function",
    "name",
    "arguments",
    "parameters",
    "properties",
    "required",
    "tool_calls",
    "tool_call_id",
    "id",
    "model",
];

fn key() -> impl Strategy<Value = String> {
    prop_oneof![3 => atoms(KEYS), 1 => "[a-z_]{0,6}"]
}

fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-3i64..5).prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        text().prop_map(Value::String),
        atoms(&[
            "text",
            "file",
            "image_url",
            "function",
            "user",
            "assistant",
            "tool",
            "system",
            "auto",
            "none",
            "required",
            "stop",
            "[DONE]"
        ])
        .prop_map(Value::String),
    ]
}

/// Arbitrary JSON, biased towards the keys and strings this crate reads.
fn json() -> impl Strategy<Value = Value> {
    json_leaf().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(Value::Array),
            vec((key(), inner), 0..6).prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

// ---------------------------------------------------------------------------
// SSE decoder.

type Events = Vec<(String, Vec<u8>)>;

fn sse_decode(pieces: &[&[u8]], max: usize) -> (Events, Result<(), SseError>) {
    let mut d = SseDecoder::with_max_line(max);
    let mut evs = Vec::new();
    let mut failed = false;
    for p in pieces {
        let r = d.push(p, |e| evs.push((e.event.to_string(), e.data.to_vec())));
        if failed {
            assert!(r.is_err(), "the error is sticky");
        }
        failed |= r.is_err();
        assert_eq!(r.as_ref().err(), d.error());
    }
    let r = d.finish(|e| evs.push((e.event.to_string(), e.data.to_vec())));
    if failed {
        assert!(r.is_err(), "the error is sticky");
    }
    assert_eq!(r.as_ref().err(), d.error());
    assert_eq!(d.events(), evs.len() as u64);
    (evs, r)
}

const SSE_ATOMS: &[&str] = &[
    "data:",
    "data: ",
    "data",
    "event: ",
    "event:error",
    "id: 1",
    "retry: 5",
    ": comment",
    ":",
    "\n",
    "\r",
    "\r\n",
    "\n\n",
    "\r\r",
    "\u{feff}",
    "x",
    " ",
    "{\"content\":\"a\"}",
    "[DONE]",
];

fn sse_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        vec(any::<u8>(), 0..256),
        vec(
            prop_oneof![
                4 => atoms(SSE_ATOMS).prop_map(String::into_bytes),
                1 => vec(any::<u8>(), 0..4),
                1 => Just(vec![0xEF, 0xBB]),
            ],
            0..48
        )
        .prop_map(concat),
    ]
}

/// One event of a well-formed stream.
#[derive(Debug, Clone)]
struct WfEvent {
    name: Option<String>,
    lines: Vec<String>,
    comment: bool,
    id: bool,
    no_space: bool,
}

#[derive(Debug, Clone)]
enum Endings {
    /// Per line: `\r\n` when true, else `\n` (cycled).
    Mixed(Vec<bool>),
    /// Bare `\r` everywhere.
    Cr,
}

#[derive(Debug, Clone)]
struct WfStream {
    bom: bool,
    events: Vec<WfEvent>,
    endings: Endings,
    /// 0: the last event ends with a blank line; 1: without it; 2: without its last line end.
    tail: u8,
}

fn wf_stream() -> impl Strategy<Value = WfStream> {
    let event = (
        proptest::option::of("[a-z]{1,8}"),
        vec("[^\r\n]{0,24}", 1..4),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(name, lines, comment, id, no_space)| WfEvent {
            name,
            lines,
            comment,
            id,
            no_space,
        });
    let endings = prop_oneof![
        4 => vec(any::<bool>(), 1..8).prop_map(Endings::Mixed),
        1 => Just(Endings::Cr),
    ];
    (any::<bool>(), vec(event, 0..8), endings, 0u8..3).prop_map(|(bom, events, endings, tail)| {
        WfStream {
            bom,
            events,
            endings,
            tail,
        }
    })
}

impl WfStream {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        if self.bom {
            out.extend_from_slice("\u{feff}".as_bytes());
        }
        let mut n = 0usize;
        let mut eol = |out: &mut Vec<u8>| {
            let e: &[u8] = match &self.endings {
                Endings::Cr => b"\r",
                Endings::Mixed(v) if v[n % v.len()] => b"\r\n",
                Endings::Mixed(_) => b"\n",
            };
            n += 1;
            out.extend_from_slice(e);
        };
        for (i, ev) in self.events.iter().enumerate() {
            let last = i + 1 == self.events.len();
            if ev.comment {
                out.extend_from_slice(b": keep-alive");
                eol(&mut out);
            }
            if let Some(name) = &ev.name {
                out.extend_from_slice(b"event: ");
                out.extend_from_slice(name.as_bytes());
                eol(&mut out);
            }
            for (j, line) in ev.lines.iter().enumerate() {
                if ev.no_space && !line.starts_with(' ') {
                    out.extend_from_slice(b"data:");
                } else {
                    out.extend_from_slice(b"data: ");
                }
                out.extend_from_slice(line.as_bytes());
                if !(last && self.tail == 2 && j + 1 == ev.lines.len()) {
                    eol(&mut out);
                }
            }
            if ev.id {
                // After the data, before the blank line (not in the unterminated tail).
                if !(last && self.tail == 2) {
                    out.extend_from_slice(b"id: 42");
                    eol(&mut out);
                }
            }
            if !(last && self.tail > 0) {
                eol(&mut out);
            }
        }
        out
    }

    fn expected(&self) -> Events {
        self.events
            .iter()
            .map(|e| {
                (
                    e.name.clone().unwrap_or_default(),
                    e.lines.join("\n").into_bytes(),
                )
            })
            .collect()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn sse_any_bytes_any_split(
        input in sse_bytes(),
        split in split_strategy(),
        max in prop_oneof![3 => Just(DEFAULT_MAX_LINE), 1 => 1usize..48],
    ) {
        let whole = sse_decode(&[&input], max);
        let pieces = split_bytes(&input, &split);
        let split_result = sse_decode(&pieces, max);
        prop_assert_eq!(&split_result, &whole, "pieces {:?}", pieces);
        let bytewise: Vec<&[u8]> = input.chunks(1).collect();
        prop_assert_eq!(sse_decode(&bytewise, max), whole);
    }

    #[test]
    fn sse_well_formed_stream_round_trips(stream in wf_stream(), split in split_strategy()) {
        let input = stream.encode();
        let want = stream.expected();
        let (got, r) = sse_decode(&[&input], DEFAULT_MAX_LINE);
        prop_assert!(r.is_ok());
        prop_assert_eq!(&got, &want, "input {:?}", String::from_utf8_lossy(&input));
        let (got, r) = sse_decode(&split_bytes(&input, &split), DEFAULT_MAX_LINE);
        prop_assert!(r.is_ok());
        prop_assert_eq!(&got, &want);
    }

    #[test]
    fn sse_write_data_round_trips(payload in "[^\r\n]{0,64}") {
        let mut out = Vec::new();
        sse::write_data(&mut out, payload.as_bytes());
        let (got, r) = sse_decode(&[&out], DEFAULT_MAX_LINE);
        prop_assert!(r.is_ok());
        // One optional space after the colon is stripped, the payload's own one is kept.
        prop_assert_eq!(got, vec![(String::new(), payload.into_bytes())]);
    }
}

// ---------------------------------------------------------------------------
// Stream transformer and non-stream aggregate.

const TRIGGER: &str = "<Function_T3st_Start/>";

fn tools_json() -> Vec<Value> {
    vec![
        json!({"type": "function", "function": {
            "name": "get_weather",
            "description": "Current weather.",
            "parameters": {"type": "object",
                "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                "required": ["city"]}}}),
        json!({"name": "search", "parameters": {"type": "object",
            "properties": {"query": {"type": "string"}}}}),
        json!({"type": "function", "function": {"name": "ping"}}),
    ]
}

/// The tool set with a fixed trigger; `choice` 0 auto, 1 required, 2 forced
/// `get_weather`, 3 none.
fn tool_set(choice: u8) -> Arc<ToolSet> {
    let c = match choice {
        0 => json!("auto"),
        1 => json!("required"),
        2 => json!({"type": "function", "function": {"name": "get_weather"}}),
        _ => json!("none"),
    };
    let mut set = ToolSet::from_request(Some(&tools_json()), Some(&c))
        .unwrap()
        .unwrap();
    set.trigger = TRIGGER.to_string();
    Arc::new(set)
}

#[derive(Debug, Clone)]
struct Opts {
    format: UpstreamFormat,
    reasoning: ReasoningMode,
    implicit: bool,
    include_usage: bool,
    tools: Option<u8>,
    delivery: ContentDelivery,
}

const DELIVERIES: [ContentDelivery; 3] = [
    ContentDelivery::Cumulative,
    ContentDelivery::Incremental,
    ContentDelivery::Auto,
];

fn opts() -> impl Strategy<Value = Opts> {
    (
        prop_oneof![3 => Just(UpstreamFormat::Sse), 1 => Just(UpstreamFormat::Json)],
        select(
            &[
                ReasoningMode::Field,
                ReasoningMode::Inline,
                ReasoningMode::Drop,
            ][..],
        ),
        any::<bool>(),
        any::<bool>(),
        proptest::option::of(0u8..4),
        select(&DELIVERIES[..]),
    )
        .prop_map(
            |(format, reasoning, implicit, include_usage, tools, delivery)| Opts {
                format,
                reasoning,
                implicit,
                include_usage,
                tools,
                delivery,
            },
        )
}

impl Opts {
    fn stream(&self) -> ChatStream<ChunkEncoder, K2Decoder> {
        ChatStream::new(
            StreamOptions {
                id: "chatcmpl-prop".into(),
                created: 1_700_000_000,
                model: MODEL.into(),
                reasoning: self.reasoning,
                implicit_think: self.implicit,
                include_usage: self.include_usage,
                tools: self.tools.map(tool_set),
                delivery: self.delivery,
            },
            self.format,
        )
    }
}

fn run_stream(pieces: &[&[u8]], o: &Opts) -> (Vec<u8>, Result<(), String>, Assembled) {
    let mut s = o.stream();
    let mut out = Vec::new();
    s.start(&mut out);
    for p in pieces {
        s.push(p, &mut out);
    }
    let r = s.finish(&mut out);
    let a = assemble(&out, MODEL);
    assert_eq!(
        r.as_ref().err(),
        a.error.as_ref(),
        "finish result matches the output"
    );
    assert_eq!(s.tool_calls_emitted(), a.calls.len());
    // Finishing again writes nothing and gives the same answer.
    let mut more = Vec::new();
    assert_eq!(s.finish(&mut more), r);
    s.push(b"data: {\"content\":\"late\"}\n\n", &mut more);
    assert!(more.is_empty(), "nothing after the end");
    (out, r, a)
}

/// (reasoning, content, finish, usage, calls (name, args)) or the error.
type Completed = Result<(String, String, String, Option<Value>, Vec<(String, Value)>), String>;

fn run_complete(pieces: &[&[u8]], o: &Opts) -> Completed {
    let mut c = Completion::new(o.format, o.implicit)
        .with_delivery(o.delivery)
        .with_tools(o.tools.map(tool_set));
    for p in pieces {
        c.push(p);
    }
    let r = c.finish()?;
    let v: Value = serde_json::from_slice(&r.to_json("chatcmpl-prop", 1, "m", o.reasoning))
        .expect("completion JSON");
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["finish_reason"], r.finish_reason.as_str());
    let calls = r
        .tool_calls
        .iter()
        .map(|c| {
            assert!(c.id.starts_with("call_"));
            let args: Value = serde_json::from_str(&c.arguments).expect("arguments are JSON");
            assert!(args.is_object());
            (c.name.clone(), args)
        })
        .collect();
    Ok((
        r.reasoning,
        r.content,
        r.finish_reason,
        r.usage.map(|u| serde_json::to_value(u).unwrap()),
        calls,
    ))
}

/// The stream and the aggregate of `body`, whole and split, agree.
fn check_body(body: &[u8], split: &Split, o: &Opts) -> Result<(), TestCaseError> {
    let (_, r, whole) = run_stream(&[body], o);
    let pieces = split_bytes(body, split);
    let (_, r2, parts) = run_stream(&pieces, o);
    prop_assert_eq!(&r2, &r);
    prop_assert_eq!(&parts, &whole, "whole vs pieces {:?}", pieces);

    let complete = run_complete(&[body], o);
    prop_assert_eq!(&run_complete(&pieces, o), &complete);
    // The aggregate and the stream tell the same story.
    match (&complete, &r) {
        (Err(a), Err(b)) => prop_assert_eq!(a, b),
        (Ok((_, content, finish, usage, calls)), Ok(())) => {
            prop_assert_eq!(Some(finish), whole.finish_reason.as_ref());
            let stream_calls: Vec<(String, Value)> = whole
                .calls
                .iter()
                .map(|(_, n, a)| (n.clone(), a.clone()))
                .collect();
            prop_assert_eq!(calls, &stream_calls);
            if o.include_usage {
                // The upstream's counts agree; `reasoning_tokens`, where the upstream gives
                // none, is estimated from the reasoning each one saw (a stream cannot take
                // back the reasoning it sent).
                let counts = |u: &Option<Value>| {
                    u.clone().map(|mut v| {
                        if let Some(m) = v.as_object_mut() {
                            m.remove("completion_tokens_details");
                        }
                        v
                    })
                };
                prop_assert_eq!(counts(usage), counts(&whole.usage));
            }
            if o.reasoning == ReasoningMode::Field {
                prop_assert_eq!(content, &whole.content);
            }
        }
        (c, s) => prop_assert!(false, "aggregate {:?} vs stream {:?}", c, s),
    }
    Ok(())
}

const STREAM_ATOMS: &[&str] = &[
    "data: ",
    "data:",
    "\n",
    "\r",
    "\r\n",
    "\n\n",
    "{\"content\":\"",
    "\"}",
    "<think>",
    "</think>",
    "<answer>",
    "</answer>",
    "<details type=\"reasoning\">",
    "</details>",
    "<summary>",
    "\\n> ",
    "[DONE]",
    "{\"done\":true}",
    "{\"error\":\"x\"}",
    "{\"choices\":[{\"delta\":{\"content\":\"a\"}}]}",
    "{\"choices\":[{\"delta\":{\"reasoning_content\":\"r\"},\"finish_reason\":\"length\"}]}",
    "{\"choices\":[{\"message\":{\"content\":\"m\"}}]}",
    "\u{feff}",
    "a",
    " ",
    "{",
    "}",
    "\"",
    "\\",
    "\\u00",
    "event: error\n",
    "{\"usage\":{\"prompt_tokens\":1}}",
    "-1",
    ":",
    TRIGGER,
    "<function_calls><function_call><tool>ping</tool></function_call></function_calls>",
];

fn stream_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        1 => vec(any::<u8>(), 0..256),
        3 => vec(
            prop_oneof![
                4 => atoms(STREAM_ATOMS).prop_map(String::into_bytes),
                1 => vec(any::<u8>(), 0..3),
            ],
            0..48
        )
        .prop_map(concat),
    ]
}

fn usage_json() -> impl Strategy<Value = Value> {
    prop_oneof![
        (0u64..5000, 0u64..5000).prop_map(|(p, c)| json!({"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c})),
        (0u64..50, 0u64..50).prop_map(|(p, r)| json!({"prompt_tokens": p.to_string(), "completion_tokens": 1.5, "completion_tokens_details": {"reasoning_tokens": r}})),
        json(),
    ]
}

/// Payloads shaped like what K2Think (or an OpenAI-style upstream) sends, and anything else.
fn k2_payload() -> impl Strategy<Value = Value> {
    prop_oneof![
        2 => text().prop_map(|t| json!({"content": t})),
        1 => (any::<bool>(), proptest::option::of(text()), proptest::option::of(usage_json()))
            .prop_map(|(done, content, usage)| {
                let mut m = Map::new();
                m.insert("done".into(), json!(done));
                if let Some(c) = content { m.insert("content".into(), json!(c)); }
                if let Some(u) = usage { m.insert("usage".into(), u); }
                Value::Object(m)
            }),
        1 => (select(&["content", "reasoning_content"][..]), text(),
              proptest::option::of(select(&["stop", "length", "tool_calls"][..])))
            .prop_map(|(field, t, fr)| json!({"choices": [{"index": 0, "delta": {field: t}, "finish_reason": fr}]})),
        1 => (text(), text()).prop_map(|(r, c)| json!({"choices": [{"message": {"reasoning_content": r, "content": c}}]})),
        1 => usage_json().prop_map(|u| json!({"usage": u})),
        1 => json().prop_map(|e| json!({"error": e})),
        1 => json().prop_map(|e| json!({"detail": e})),
        2 => json(),
    ]
}

/// One upstream SSE event.
fn k2_event() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        8 => k2_payload().prop_map(|v| {
            let mut out = Vec::new();
            sse::write_data(&mut out, v.to_string().as_bytes());
            out
        }),
        1 => Just(b"data: [DONE]\n\n".to_vec()),
        1 => Just(b"data: -1\n\n".to_vec()),
        1 => Just(b"event: error\ndata: {\"message\":\"boom\"}\n\n".to_vec()),
        1 => "[^\r\n]{0,16}".prop_map(|t| format!("data: {t}\n\n").into_bytes()),
        1 => Just(b": ping\n\n".to_vec()),
    ]
}

/// Answer text: anything, or a tool call (intact or damaged), maybe after reasoning.
fn answer_text() -> impl Strategy<Value = String> {
    (
        proptest::option::of(plain()),
        prop_oneof![2 => text(), 1 => tool_answer(), 1 => edited(tool_answer())],
    )
        .prop_map(|(reasoning, answer)| match reasoning {
            Some(r) => format!("<think>{r}</think>\n{answer}"),
            None => answer,
        })
}

/// A cumulative answer: every event repeats the text so far.
fn cumulative_body() -> impl Strategy<Value = Vec<u8>> {
    (answer_text(), vec(any::<usize>(), 1..8), any::<bool>()).prop_map(|(t, cuts, done)| {
        let mut out = Vec::new();
        for end in cut_points(t.len(), &Split::Cuts(cuts), |i| t.is_char_boundary(i)) {
            sse::write_data(
                &mut out,
                json!({"content": &t[..end]}).to_string().as_bytes(),
            );
        }
        sse::write_data(&mut out, json!({"content": t}).to_string().as_bytes());
        if done {
            sse::write_data(
                &mut out,
                br#"{"done":true,"usage":{"prompt_tokens":3,"completion_tokens":4}}"#,
            );
            sse::write_data(&mut out, b"[DONE]");
        }
        out
    })
}

/// Answer text, or repetitive text (a short unit many times over: what fooled the guess
/// of `content_delivery: auto`).
fn answer_or_repetitive() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => answer_text(),
        1 => ("[=ab ]{1,3}", 2usize..150).prop_map(|(unit, n)| unit.repeat(n)),
    ]
}

/// A K2Think `content` stream of the text as `delivery` sends it: each value the text so
/// far (cumulative) or the next piece (incremental), then maybe a `done` event repeating
/// the whole text, then `[DONE]`. (text, delivery, body)
fn content_stream() -> impl Strategy<Value = (String, ContentDelivery, Vec<u8>)> {
    (
        answer_or_repetitive(),
        select(&DELIVERIES[..2]),
        vec(any::<usize>(), 0..12),
        any::<bool>(),
    )
        .prop_map(|(t, delivery, cuts, done)| {
            let mut out = Vec::new();
            let mut prev = 0;
            for end in cut_points(t.len(), &Split::Cuts(cuts), |i| t.is_char_boundary(i))
                .into_iter()
                .chain([t.len()])
            {
                let value = match delivery {
                    ContentDelivery::Incremental => &t[prev..end],
                    _ => &t[..end],
                };
                sse::write_data(&mut out, json!({ "content": value }).to_string().as_bytes());
                prev = end;
            }
            if done {
                sse::write_data(
                    &mut out,
                    json!({"done": true, "content": t}).to_string().as_bytes(),
                );
            }
            sse::write_data(&mut out, b"[DONE]");
            (t, delivery, out)
        })
}

/// An OpenAI-style delta stream: reasoning pieces, content pieces, a finish reason.
fn incremental_body() -> impl Strategy<Value = Vec<u8>> {
    (
        proptest::option::of(text()),
        prop_oneof![2 => text(), 1 => tool_answer(), 1 => edited(tool_answer())],
        vec(any::<usize>(), 0..8),
        proptest::option::of(select(&["stop", "length"][..])),
    )
        .prop_map(|(reasoning, t, cuts, finish)| {
            let mut out = Vec::new();
            let event = |out: &mut Vec<u8>, v: Value| {
                let chunk = json!({"object": "chat.completion.chunk", "choices": [v]});
                sse::write_data(out, chunk.to_string().as_bytes());
            };
            if let Some(r) = reasoning {
                event(
                    &mut out,
                    json!({"index": 0, "delta": {"reasoning_content": r}}),
                );
            }
            let mut prev = 0;
            for end in cut_points(t.len(), &Split::Cuts(cuts), |i| t.is_char_boundary(i))
                .into_iter()
                .chain([t.len()])
            {
                event(
                    &mut out,
                    json!({"index": 0, "delta": {"content": &t[prev..end]}}),
                );
                prev = end;
            }
            if let Some(f) = finish {
                event(
                    &mut out,
                    json!({"index": 0, "delta": {}, "finish_reason": f}),
                );
                sse::write_data(&mut out, b"[DONE]");
            }
            out
        })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn stream_incremental_answers(body in incremental_body(), split in split_strategy(), o in opts()) {
        check_body(&body, &split, &o)?;
    }

    #[test]
    fn content_streams_read_in_their_delivery_give_the_whole_text(
        (text, delivery, body) in content_stream(),
        split in split_strategy(),
        o in opts(),
    ) {
        let o = Opts { format: UpstreamFormat::Sse, delivery, ..o };
        check_body(&body, &split, &o)?;
        // The answer is the one of the whole text sent as one JSON document.
        let plain = Opts { tools: None, implicit: false, ..o };
        let whole = json!({ "content": text }).to_string();
        let want = run_complete(&[whole.as_bytes()], &Opts { format: UpstreamFormat::Json, ..plain.clone() });
        let got = run_complete(&split_bytes(&body, &split), &plain);
        prop_assert_eq!(
            got.map(|(r, c, ..)| (r, c)),
            want.map(|(r, c, ..)| (r, c)),
            "{:?} {:?}", delivery, text
        );
    }

    #[test]
    fn stream_any_bytes(body in stream_bytes(), split in split_strategy(), o in opts()) {
        check_body(&body, &split, &o)?;
    }

    #[test]
    fn stream_json_events(events in vec(k2_event(), 0..12), split in split_strategy(), o in opts()) {
        check_body(&concat(events), &split, &o)?;
    }

    #[test]
    fn stream_cumulative_answers(body in cumulative_body(), split in split_strategy(), o in opts()) {
        check_body(&body, &split, &o)?;
    }

    #[test]
    fn stream_json_bodies(v in k2_payload(), split in split_strategy(), o in opts()) {
        let body = serde_json::to_vec_pretty(&v).unwrap();
        check_body(&body, &split, &Opts { format: UpstreamFormat::Json, ..o.clone() })?;
        check_body(&body, &split, &Opts { format: UpstreamFormat::Sse, ..o })?;
    }

    #[test]
    fn stream_fail_ends_with_error_and_no_done(
        events in vec(k2_event(), 0..8),
        cut in any::<usize>(),
        message in any::<String>(),
        o in opts(),
    ) {
        let body = concat(events);
        let cut = cut % (body.len() + 1);
        let mut s = o.stream();
        let mut out = Vec::new();
        s.push(&body[..cut], &mut out);
        s.fail("upstream_timeout", &message, &mut out);
        let a = assemble(&out, MODEL);
        prop_assert_eq!(a.error.as_deref(), Some(message.as_str()));
        prop_assert!(!a.done);
        let mut more = Vec::new();
        s.push(&body[cut..], &mut more);
        prop_assert_eq!(s.finish(&mut more), Err(message.clone()));
        s.fail("again", "again", &mut more);
        prop_assert!(more.is_empty(), "nothing after the error");
    }
}

// ---------------------------------------------------------------------------
// Tool parser and detector.

fn wire(calls: &[(String, Value)]) -> Vec<(String, String)> {
    calls
        .iter()
        .map(|(n, a)| (n.clone(), a.to_string()))
        .collect()
}

/// Content with a valid call: text, the trigger, the block (fenced or not), text.
fn answer_with(calls: &[(String, Value)], before: &str, after: &str, fence: bool) -> String {
    let block = function_calls_block(&wire(calls));
    if fence {
        format!("{before}\n{TRIGGER}\n```xml\n{block}\n```\n{after}")
    } else {
        format!("{before}\n{TRIGGER}\n{block}{after}")
    }
}

fn plain() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 .,\n]{0,40}"
}

fn tool_answer() -> impl Strategy<Value = String> {
    (valid_calls(), plain(), plain(), any::<bool>())
        .prop_map(|(calls, before, after, fence)| answer_with(&calls, &before, &after, fence))
}

/// The inside of a valid `<function_calls>` block.
fn block_inner() -> impl Strategy<Value = String> {
    valid_calls().prop_map(|c| {
        let block = function_calls_block(&wire(&c));
        block["<function_calls>".len()..block.len() - "</function_calls>".len()].to_string()
    })
}

#[derive(Debug, Clone)]
enum Edit {
    Insert(usize, String),
    Delete(usize, usize),
}

fn floor_boundary(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// `base` with a few fragments inserted and ranges deleted: near-valid input.
fn edited(base: impl Strategy<Value = String>) -> impl Strategy<Value = String> {
    let edit = prop_oneof![
        (any::<usize>(), atoms(TEXT_ATOMS)).prop_map(|(at, f)| Edit::Insert(at, f)),
        (any::<usize>(), 1usize..12).prop_map(|(at, n)| Edit::Delete(at, n)),
    ];
    (base, vec(edit, 1..4)).prop_map(|(mut s, edits)| {
        for e in edits {
            match e {
                Edit::Insert(at, f) => {
                    let i = floor_boundary(&s, at % (s.len() + 1));
                    s.insert_str(i, &f);
                }
                Edit::Delete(at, n) => {
                    let i = floor_boundary(&s, at % (s.len() + 1));
                    let j = floor_boundary(&s, (i + n).min(s.len()));
                    s.replace_range(i..j, "");
                }
            }
        }
        s
    })
}

fn tool_text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => text(),
        1 => any::<String>(),
        1 => tool_answer(),
        2 => edited(tool_answer()),
    ]
}

/// Argument keys that are not declared parameters (declared ones are coerced by type).
fn free_key() -> impl Strategy<Value = String> {
    "[a-z][a-z_]{0,6}".prop_filter("declared parameter", |k| {
        !matches!(k.as_str(), "city" | "days" | "query")
    })
}

/// JSON without floats (float text does not always round-trip exactly).
fn exact_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            vec((free_key(), inner), 0..4).prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// Calls `(name, arguments object)` valid for [`tool_set`] with `auto`.
fn valid_calls() -> impl Strategy<Value = Vec<(String, Value)>> {
    let call = (
        select(&["get_weather", "search", "ping"][..]),
        vec((free_key(), exact_json()), 0..4),
        text(),
    )
        .prop_map(|(name, kv, city)| {
            let mut m: Map<String, Value> = kv.into_iter().collect();
            if name == "get_weather" {
                m.insert("city".into(), Value::String(city));
            }
            (name.to_string(), Value::Object(m))
        });
    vec(call, 1..4)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn parse_block_any_text(
        inner in prop_oneof![tool_text(), block_inner(), edited(block_inner())],
        choice in 0u8..4,
    ) {
        let set = tool_set(choice);
        if let Ok(calls) = parse_block(&set, &inner) {
            prop_assert!(!calls.is_empty());
            for (name, args) in calls {
                check_call(&set, &name, &args);
            }
        }
    }

    #[test]
    fn parse_block_round_trips_encoded_calls(calls in valid_calls()) {
        let set = tool_set(0);
        let block = function_calls_block(&wire(&calls));
        let inner = block
            .strip_prefix("<function_calls>")
            .and_then(|b| b.strip_suffix("</function_calls>"))
            .unwrap();
        let parsed = parse_block(&set, inner).map_err(|e| TestCaseError::fail(format!("{e}: {block}")))?;
        let parsed: Vec<(String, Value)> = parsed
            .into_iter()
            .map(|(n, a)| (n, serde_json::from_str(&a).unwrap()))
            .collect();
        prop_assert_eq!(parsed, calls);
    }

    #[test]
    fn detector_any_text_any_split(
        t in tool_text(),
        split in split_strategy(),
        choice in 0u8..3,
        abort in any::<bool>(),
    ) {
        let set = tool_set(choice);
        let whole = detect(&[&t], &set, abort);
        let pieces = split_str(&t, &split);
        prop_assert_eq!(&detect(&pieces, &set, abort), &whole, "pieces {:?}", pieces);
        if whole.1 == 0 {
            // Without a call, the text is all content (minus leading whitespace).
            prop_assert_eq!(content_of(&whole.0), t.trim_start());
        }
    }

    #[test]
    fn detector_finds_embedded_calls(
        calls in valid_calls(),
        before in plain(),
        after in plain(),
        fence in any::<bool>(),
        split in split_strategy(),
    ) {
        let set = tool_set(0);
        let t = answer_with(&calls, &before, &after, fence);
        for abort in [false, true] {
            let pieces = split_str(&t, &split);
            let (out, n, malformed) = detect(&pieces, &set, abort);
            if abort {
                // Released unparsed, or already emitted before the abort.
                prop_assert!(n == 0 || n == calls.len());
                continue;
            }
            prop_assert_eq!(malformed, 0);
            let found: Vec<(String, Value)> = out
                .iter()
                .filter_map(|p| match p {
                    Piece::Call(_, n, a) => Some((n.clone(), a.clone())),
                    Piece::Content(_) => None,
                })
                .collect();
            prop_assert_eq!(&found, &calls, "text {:?}", t);
            let squash = |s: &str| s.chars().filter(|c| !c.is_whitespace()).collect::<String>();
            prop_assert_eq!(squash(&content_of(&out)), squash(&format!("{before}{after}")));
        }
    }
}

// ---------------------------------------------------------------------------
// Request parser, rewrite and file resolution.

fn check_request(body: &[u8], limits: (usize, usize)) -> Result<(), TestCaseError> {
    contracts::check_request(
        body,
        files::Limits {
            max_file_bytes: limits.0,
            max_image_bytes: limits.1,
        },
    );
    Ok(())
}

fn valid_request() -> Value {
    json!({
        "model": "MBZUAI-IFM/K2-Think-v2",
        "stream": true,
        "stream_options": {"include_usage": true},
        "temperature": 0.5,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}},
                {"type": "file", "file": {"filename": "notes.md", "file_data": "data:text/markdown;base64,IyBIaQ=="}}
            ]},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
            {"role": "user", "content": "Thanks"}
        ],
        "tools": tools_json(),
        "tool_choice": "auto"
    })
}

/// A valid Anthropic Messages request with every block kind.
fn valid_messages_request() -> Value {
    json!({
        "model": "MBZUAI-IFM/K2-Think-v2",
        "max_tokens": 1024,
        "stream": true,
        "system": [{"type": "text", "text": "Be brief."}],
        "messages": [
            {"role": "user", "content": "Weather?"},
            {"role": "system", "content": [{"type": "text", "text": "Mid-conversation context."}]},
            {"role": "user", "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
                {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "notes"}}
            ]},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "hmm", "signature": ""},
                {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}}
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": [{"type": "text", "text": "sunny"}]}
            ]}
        ],
        "tools": [{"name": "get_weather", "description": "Weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}],
        "tool_choice": {"type": "auto"}
    })
}

/// A valid OpenAI Responses request with every item kind.
fn valid_responses_request() -> Value {
    json!({
        "model": "MBZUAI-IFM/K2-Think-v2",
        "stream": true,
        "instructions": "Be brief.",
        "input": [
            {"role": "developer", "content": "Use tools."},
            {"type": "message", "role": "user", "content": [
                {"type": "input_text", "text": "What is this?"},
                {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"},
                {"type": "input_file", "filename": "notes.md", "file_data": "data:text/markdown;base64,IyBIaQ=="}
            ]},
            {"type": "reasoning", "id": "rs_1", "summary": []},
            {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{\"city\":\"Paris\"}"},
            {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
            {"role": "user", "content": "Thanks"}
        ],
        "tools": [{"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}],
        "tool_choice": "auto"
    })
}

const TOP_KEYS: &[&str] = &[
    "model",
    "messages",
    "input",
    "instructions",
    "system",
    "max_output_tokens",
    "stream",
    "stream_options",
    "temperature",
    "top_p",
    "max_tokens",
    "max_completion_tokens",
    "stop",
    "presence_penalty",
    "frequency_penalty",
    "seed",
    "n",
    "tools",
    "tool_choice",
    "user",
];
const MESSAGE_KEYS: &[&str] = &["role", "content", "name", "tool_calls", "tool_call_id"];
const PART_KEYS: &[&str] = &["type", "text", "image_url", "file"];

/// Strings that reach the file and image code.
fn data_urlish() -> impl Strategy<Value = String> {
    prop_oneof![
        (
            select(
                &[
                    "text/plain",
                    "text/csv",
                    "application/json",
                    "application/pdf",
                    "image/png",
                    "",
                    "application/octet-stream",
                    "TEXT/X-Rust"
                ][..]
            ),
            select(&[";base64", "", ";charset=utf-8;base64", ";BASE64"][..]),
            prop_oneof![
                vec(any::<u8>(), 0..64).prop_map(|b| {
                    use base64::Engine;
                    base64::engine::general_purpose::STANDARD.encode(b)
                }),
                "[A-Za-z0-9+/=% \n]{0,24}",
                "(%[0-9a-fA-F]{0,2}|[a-z]){0,12}",
            ],
        )
            .prop_map(|(mime, enc, payload)| format!("data:{mime}{enc},{payload}")),
        "data:[^,]{0,12}",
        "[A-Za-z0-9+/=]{0,24}",
        Just("https://example.com/a.png".to_string()),
        any::<String>(),
    ]
}

fn part() -> impl Strategy<Value = Value> {
    prop_oneof![
        text().prop_map(|t| json!({"type": "text", "text": t})),
        (data_urlish(), proptest::option::of(any::<String>()))
            .prop_map(|(u, d)| json!({"type": "image_url", "image_url": {"url": u, "detail": d}})),
        data_urlish().prop_map(|u| json!({"type": "image_url", "image_url": u})),
        (
            proptest::option::of(prop_oneof!["[a-z]{0,6}\\.(md|txt|csv|json|bin|TOML)", any::<String>()]),
            proptest::option::of(data_urlish()),
            proptest::option::of("file-[a-z0-9]{0,6}"),
        )
            .prop_map(|(filename, file_data, file_id)| {
                json!({"type": "file", "file": {"filename": filename, "file_data": file_data, "file_id": file_id}})
            }),
        json(),
    ]
}

/// One change to the valid request.
#[derive(Debug, Clone)]
enum Mutation {
    Top(String, Option<Value>),
    Message(usize, String, Option<Value>),
    Part(usize, String, Option<Value>),
    NewPart(Value),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let value = || proptest::option::of(prop_oneof![3 => json(), 1 => part()]);
    prop_oneof![
        (prop_oneof![4 => atoms(TOP_KEYS), 1 => key()], value())
            .prop_map(|(k, v)| Mutation::Top(k, v)),
        (
            0usize..6,
            prop_oneof![4 => atoms(MESSAGE_KEYS), 1 => key()],
            value()
        )
            .prop_map(|(i, k, v)| Mutation::Message(i, k, v)),
        (
            0usize..4,
            prop_oneof![4 => atoms(PART_KEYS), 1 => key()],
            value()
        )
            .prop_map(|(i, k, v)| Mutation::Part(i, k, v)),
        part().prop_map(Mutation::NewPart),
    ]
}

fn set_or_remove(obj: &mut Value, key: &str, v: &Option<Value>) {
    if let Some(o) = obj.as_object_mut() {
        match v {
            Some(v) => {
                o.insert(key.to_string(), v.clone());
            }
            None => {
                o.remove(key);
            }
        }
    }
}

/// The conversation of a request: `messages`, or a Responses request's `input` items.
fn turns(req: &mut Value) -> Option<&mut Value> {
    if req.get("messages").is_some() {
        req.get_mut("messages")
    } else {
        req.get_mut("input")
    }
}

fn apply(req: &mut Value, m: &Mutation) {
    match m {
        Mutation::Top(k, v) => set_or_remove(req, k, v),
        Mutation::Message(i, k, v) => {
            if let Some(msg) = turns(req).and_then(|m| m.get_mut(*i)) {
                set_or_remove(msg, k, v);
            }
        }
        Mutation::Part(i, k, v) => {
            if let Some(p) = turns(req)
                .and_then(|m| m.get_mut(1))
                .and_then(|m| m.get_mut("content"))
                .and_then(|c| c.get_mut(*i))
            {
                set_or_remove(p, k, v);
            }
        }
        Mutation::NewPart(p) => {
            if let Some(parts) = turns(req)
                .and_then(|m| m.get_mut(1))
                .and_then(|m| m.get_mut("content"))
                .and_then(Value::as_array_mut)
            {
                parts.push(p.clone());
            }
        }
    }
}

fn limits() -> impl Strategy<Value = (usize, usize)> {
    (
        prop_oneof![Just(1usize << 20), 0usize..64],
        prop_oneof![Just(1usize << 20), 0usize..64],
    )
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn request_any_bytes(body in prop_oneof![
        vec(any::<u8>(), 0..256),
        vec(prop_oneof![
            atoms(&["{", "}", "[", "]", ",", ":", "\"", "\"model\"", "\"messages\"", "\"role\"", "\"user\"", "\"content\"", "\"input\"", "\"type\"", "\"function_call\"", "\"tool_result\"", "\"max_tokens\"", "null", "1e999", "-0", "\\u0000", " "]).prop_map(String::into_bytes),
            vec(any::<u8>(), 0..3),
        ], 0..32).prop_map(concat),
    ], limits in limits()) {
        check_request(&body, limits)?;
    }

    #[test]
    fn request_any_json(v in json(), limits in limits()) {
        check_request(v.to_string().as_bytes(), limits)?;
    }

    #[test]
    fn request_mutated_valid_request(
        which in 0usize..3,
        mutations in vec(mutation(), 0..5),
        limits in limits(),
        pretty in any::<bool>(),
    ) {
        let mut req = [valid_request, valid_messages_request, valid_responses_request][which]();
        for m in &mutations {
            apply(&mut req, m);
        }
        let body = if pretty {
            serde_json::to_vec_pretty(&req).unwrap()
        } else {
            serde_json::to_vec(&req).unwrap()
        };
        check_request(&body, limits)?;
    }
}

#[test]
fn the_unmutated_requests_are_valid_on_their_surfaces() {
    use k2proxy::surface::Surface;
    for (surface, req) in [
        (Surface::Messages, valid_messages_request()),
        (Surface::Responses, valid_responses_request()),
    ] {
        let parsed = surface.parse(&serde_json::to_vec(&req).unwrap(), false);
        let parsed = parsed.unwrap_or_else(|e| panic!("{surface:?}: {}", e.message));
        assert!(parsed.req.tools.is_some() && parsed.req.messages.len() >= 4);
    }
}

#[test]
fn the_unmutated_request_is_valid() {
    let body = serde_json::to_vec(&valid_request()).unwrap();
    let mut req = ChatRequest::parse(&body).expect("valid");
    let limits = files::Limits {
        max_file_bytes: 1 << 20,
        max_image_bytes: 1 << 20,
    };
    files::resolve(&mut req, limits).expect("parts resolve");
    assert!(
        ToolSet::from_request(req.tools.as_deref(), req.tool_choice.as_ref())
            .unwrap()
            .is_some()
    );
}
