//! Transform benches: the stream transform (MB/s of upstream SSE), the request rewrite
//! (requests/s) and the tool-call detector.
//!
//! cargo bench --bench transform            (add `-- --quick` for a short run)
//!
//! Inputs are built in memory: a K2Think v1 answer (~1.6 KB reasoning, ~2.6 KB answer)
//! delivered as cumulative `content` events every ~8 characters of growth, the same text as
//! OpenAI `delta` events, every markup form as the mock upstream sends it, and the raw text
//! for the splitter alone. Upstream bytes are fed in 10-byte and 1460-byte (one TCP
//! segment) pieces.
//!
//! Before the timings, an allocation report (a counting global allocator) prints the
//! allocations and bytes allocated per upstream event for cumulative answers of growing
//! length: our own work per event must not grow with the text so far.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use criterion::{black_box, criterion_group, BenchmarkId, Criterion, Throughput};
use k2proxy::core::ReasoningMode;
use k2proxy::mock::script::{stream_events, StreamSpec};
use k2proxy::mock::{Delivery, Directives, Form};
use k2proxy::pipeline::complete::Completion;
use k2proxy::pipeline::split::{Deltas, Splitter};
use k2proxy::pipeline::stream::ChatStream;
use k2proxy::pipeline::tools::{function_calls_block, ToolDetector, ToolSet};
use k2proxy::provider::k2think::decode::{ContentDelivery, StreamOptions, UpstreamFormat};
use k2proxy::provider::k2think::request::{to_k2think, RewriteOptions};
use k2proxy::provider::k2think::runtime::{FixedHead, K2thinkSettings};
use k2proxy::provider::target::UpstreamTarget;
use k2proxy::provider::Timing;
use k2proxy::secret::Secret;
use k2proxy::sse;
use k2proxy::surface::chat::request::ChatRequest;
use k2proxy::surface::{Reply, Surface};

const SENTENCES: &[&str] = &[
    "The user asks how to reverse a linked list in Rust.",
    " I should explain ownership first, then show `Option<Box<Node>>` handling.",
    "\nEdge cases: empty list, one node; 你好 👋 is just a greeting.",
    " Iterative is simpler than recursive here, and avoids stack depth issues.",
    "\n\nLet me also mention `std::mem::take` and \"take/replace\" patterns.",
];

fn text_of(len: usize, salt: usize) -> String {
    let mut s = String::new();
    let mut i = salt;
    while s.len() < len {
        s.push_str(SENTENCES[i % SENTENCES.len()]);
        i += 1;
    }
    s
}

/// Raw v1 answer text: `<think>R</think>\n<answer>A</answer>`.
fn raw_answer() -> String {
    format!(
        "<think>{}</think>\n<answer>{}</answer>",
        text_of(1600, 0),
        text_of(2600, 2)
    )
}

/// Pieces of `text` growing by ~8 characters (on char boundaries).
fn growth_points(text: &str) -> Vec<usize> {
    let mut points = Vec::new();
    let mut n = 0;
    for (i, _) in text.char_indices().skip(1) {
        n += 1;
        if n % 8 == 0 {
            points.push(i);
        }
    }
    points.push(text.len());
    points
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

fn cumulative_stream(text: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for end in growth_points(text) {
        let payload = format!("{{\"content\":{}}}", json_str(&text[..end]));
        sse::write_data(&mut out, payload.as_bytes());
    }
    sse::write_data(&mut out, b"{\"done\":true,\"usage\":{\"prompt_tokens\":431,\"completion_tokens\":900,\"total_tokens\":1331}}");
    sse::write_data(&mut out, b"[DONE]");
    out
}

fn openai_delta_stream(text: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let mut start = 0;
    for end in growth_points(text) {
        let payload = format!(
            "{{\"id\":\"chatcmpl-up\",\"object\":\"chat.completion.chunk\",\"created\":1758000000,\"model\":\"MBZUAI-IFM/K2-Think-v2\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":{}}},\"finish_reason\":null}}]}}",
            json_str(&text[start..end])
        );
        sse::write_data(&mut out, payload.as_bytes());
        start = end;
    }
    sse::write_data(&mut out, b"[DONE]");
    out
}

fn options() -> StreamOptions {
    options_as(ContentDelivery::Cumulative)
}

fn options_as(delivery: ContentDelivery) -> StreamOptions {
    StreamOptions {
        id: "chatcmpl-bench".to_string(),
        created: 1_758_000_000,
        model: "MBZUAI-IFM/K2-Think-v2".to_string(),
        reasoning: ReasoningMode::Field,
        implicit_think: true,
        include_usage: true,
        tools: None,
        delivery,
    }
}

fn run_stream(body: &[u8], piece: usize, out: &mut Vec<u8>) -> usize {
    run_stream_as(ContentDelivery::Cumulative, body, piece, out)
}

/// [`run_stream`] reading `content` values as `delivery` says.
fn run_stream_as(delivery: ContentDelivery, body: &[u8], piece: usize, out: &mut Vec<u8>) -> usize {
    out.clear();
    let mut s = ChatStream::new(options_as(delivery), UpstreamFormat::Sse);
    s.start(out);
    for p in body.chunks(piece) {
        s.push(p, out);
    }
    let ok = s.finish(out).is_ok();
    assert!(ok, "bench stream must end cleanly");
    out.len()
}

fn bench_chat_stream(c: &mut Criterion) {
    let text = raw_answer();
    let inputs = [
        ("cumulative_v1", cumulative_stream(&text)),
        ("openai_delta", openai_delta_stream(&text)),
    ];
    let mut group = c.benchmark_group("chat_stream");
    let mut out = Vec::with_capacity(1 << 20);
    for (name, body) in &inputs {
        group.throughput(Throughput::Bytes(body.len() as u64));
        for piece in [10usize, 1460] {
            group.bench_with_input(BenchmarkId::new(*name, piece), body, |b, body| {
                b.iter(|| run_stream(black_box(body), piece, &mut out))
            });
        }
    }
    group.finish();

    let mut group = c.benchmark_group("complete");
    let body = &inputs[0].1;
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("cumulative_v1/1460", |b| {
        b.iter(|| {
            let mut c = Completion::new(UpstreamFormat::Sse, true);
            for p in black_box(body).chunks(1460) {
                c.push(p);
            }
            c.finish().map(|r| r.content.len()).unwrap_or(0)
        })
    });
    group.finish();
}

/// The same upstream stream written for each API surface (OpenAI chat chunks, Anthropic
/// Messages events, OpenAI Responses events): what each encoder costs on top of the shared
/// decoding.
fn bench_surfaces(c: &mut Criterion) {
    let body = cumulative_stream(&raw_answer());
    let mut group = c.benchmark_group("surfaces");
    group.throughput(Throughput::Bytes(body.len() as u64));
    let mut out = Vec::with_capacity(1 << 20);
    for (name, surface) in [
        ("chat", Surface::Chat),
        ("messages", Surface::Messages),
        ("responses", Surface::Responses),
    ] {
        let parsed = surface
            .parse(
                br#"{"model":"m","max_tokens":100,"input":"x","messages":[{"role":"user","content":"x"}]}"#,
                false,
            )
            .expect("a valid request");
        let reply = Reply {
            id: surface.new_id(),
            created: 1_758_000_000,
            model: "MBZUAI-IFM/K2-Think-v2".to_string(),
            reasoning: ReasoningMode::Field,
            input_tokens: 100,
            include_usage: true,
            echo: parsed.echo,
            dialect: parsed.dialect,
        };
        group.bench_function(BenchmarkId::new(name, 1460), |b| {
            b.iter(|| {
                out.clear();
                let mut s = ChatStream::with_encoder(
                    surface.encoder(&reply),
                    UpstreamFormat::Sse,
                    true,
                    None,
                );
                s.start(&mut out);
                for p in black_box(&body).chunks(1460) {
                    s.push(p, &mut out);
                }
                assert!(s.finish(&mut out).is_ok(), "bench stream must end cleanly");
                out.len()
            })
        });
    }
    group.finish();
}

fn bench_splitter(c: &mut Criterion) {
    let text = raw_answer();
    let points = growth_points(&text);
    let mut group = c.benchmark_group("splitter");
    group.throughput(Throughput::Bytes(text.len() as u64));
    let mut out = Deltas::new();
    group.bench_function("v1_pieces_of_8_chars", |b| {
        b.iter(|| {
            let mut s = Splitter::new(true);
            let mut start = 0;
            let mut n = 0;
            for &end in &points {
                out.clear();
                s.push(black_box(&text[start..end]), &mut out);
                n += out.len();
                start = end;
            }
            s.finish(&mut out);
            n
        })
    });
    group.bench_function("v1_whole", |b| {
        b.iter(|| {
            out.clear();
            let mut s = Splitter::new(true);
            s.push(black_box(&text), &mut out);
            s.finish(&mut out);
            out.len()
        })
    });
    group.finish();
}

/// Counts allocations (and bytes) of the whole bench process.
struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static ALLOC_BYTES: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        ALLOC_BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        System.alloc(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        ALLOC_BYTES.fetch_add(new_size as u64, Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

/// The SSE body the mock upstream sends for `form`/`delivery`, with about `words` filler
/// words of reasoning and twice as many of answer.
fn mock_body(form: Form, delivery: Delivery, words: usize) -> Vec<u8> {
    mock_body_from(
        Directives {
            form,
            delivery,
            ..Directives::default()
        },
        words,
    )
}

/// What the mock sends with `base` directives and `words` filler words.
fn mock_body_from(base: Directives, words: usize) -> Vec<u8> {
    let d = Directives {
        reasoning_words: words,
        answer_words: 2 * words,
        ..base
    };
    let spec = StreamSpec {
        directives: &d,
        last_user_text: "How do I reverse a linked list in Rust?",
        prompt_chars: 40,
        model: "MBZUAI-IFM/K2-Think-v2",
        id: "chatcmpl-up",
        created: 1_758_000_000,
    };
    stream_events(&spec).0.concat()
}

/// Allocations and bytes per upstream event while transforming `body` in 1460-byte pieces,
/// counted over the second half of the events only (the text so far is long there).
fn alloc_per_event(body: &[u8]) -> (f64, f64, usize) {
    let events = body.windows(2).filter(|w| w == b"\n\n").count();
    let mut out = Vec::with_capacity(1 << 20);
    let mut s = ChatStream::new(options(), UpstreamFormat::Sse);
    s.start(&mut out);
    let pieces: Vec<&[u8]> = body.chunks(1460).collect();
    let half = pieces.len() / 2;
    for p in &pieces[..half] {
        s.push(p, &mut out);
        out.clear();
    }
    let (a0, b0) = (
        ALLOCS.load(Ordering::Relaxed),
        ALLOC_BYTES.load(Ordering::Relaxed),
    );
    for p in &pieces[half..] {
        s.push(p, &mut out);
        out.clear();
    }
    let (a1, b1) = (
        ALLOCS.load(Ordering::Relaxed),
        ALLOC_BYTES.load(Ordering::Relaxed),
    );
    let counted = pieces[half..]
        .iter()
        .map(|p| p.windows(2).filter(|w| w == b"\n\n").count())
        .sum::<usize>()
        .max(1);
    let _ = s.finish(&mut out);
    (
        (a1 - a0) as f64 / counted as f64,
        (b1 - b0) as f64 / counted as f64,
        events,
    )
}

fn alloc_report() {
    println!("allocations per upstream event, cumulative v1, 8 characters of growth per event:");
    println!(
        "{:>10} {:>8} {:>14} {:>14}",
        "text", "events", "allocs/event", "bytes/event"
    );
    for words in [100, 800, 3200] {
        let body = mock_body(Form::V1, Delivery::Cumulative, words);
        let text = render_len(words);
        let (allocs, bytes, events) = alloc_per_event(&body);
        println!(
            "{:>9}B {:>8} {:>14.2} {:>14.1}",
            text, events, allocs, bytes
        );
    }
    println!();
}

/// Length of the answer text the mock renders for `words` (for the report).
fn render_len(words: usize) -> usize {
    let d = Directives {
        reasoning_words: words,
        answer_words: 2 * words,
        ..Directives::default()
    };
    k2proxy::mock::markup_for("How do I reverse a linked list in Rust?", &d).len()
}

/// Every markup form and delivery as the mock sends it, at 10 B and 1460 B pieces; and
/// cumulative answers of growing length, whose MB/s must stay flat (linear work per event).
fn bench_forms(c: &mut Criterion) {
    let mut group = c.benchmark_group("forms");
    let mut out = Vec::with_capacity(1 << 20);
    let cases = [
        ("v1", Form::V1, Delivery::Cumulative),
        ("v2", Form::V2, Delivery::Cumulative),
        ("v2-answer", Form::V2Answer, Delivery::Cumulative),
        ("v2-noopen", Form::V2NoOpen, Delivery::Cumulative),
        ("details", Form::Details, Delivery::Cumulative),
        ("details-bare", Form::DetailsBare, Delivery::Cumulative),
        ("none", Form::None, Delivery::Cumulative),
        ("v1-incremental", Form::V1, Delivery::Incremental),
        ("v1-delta", Form::V1, Delivery::Delta),
    ];
    let bodies = cases
        .iter()
        .map(|(name, form, delivery)| {
            // `upstream.content_delivery` as the mock sends (deltas: either).
            let reading = match delivery {
                Delivery::Incremental => ContentDelivery::Incremental,
                _ => ContentDelivery::Cumulative,
            };
            (*name, reading, mock_body(*form, *delivery, 300))
        })
        // K2 Horizon as chat.ifm.ai sends it: task_id, details + bare answer, finish chunk.
        .chain([(
            "horizon",
            ContentDelivery::Cumulative,
            mock_body_from(Directives::horizon(), 300),
        )]);
    for (name, reading, body) in bodies {
        group.throughput(Throughput::Bytes(body.len() as u64));
        for piece in [10usize, 1460] {
            group.bench_with_input(BenchmarkId::new(name, piece), &body, |b, body| {
                b.iter(|| run_stream_as(reading, black_box(body), piece, &mut out))
            });
        }
    }
    group.finish();

    let mut group = c.benchmark_group("cumulative_length");
    for words in [100usize, 800, 3200] {
        let body = mock_body(Form::V1, Delivery::Cumulative, words);
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_with_input(
            BenchmarkId::new("v1_text_bytes", render_len(words)),
            &body,
            |b, body| b.iter(|| run_stream(black_box(body), 1460, &mut out)),
        );
    }
    group.finish();
}

fn request_json(content: &str, turns: usize) -> Vec<u8> {
    let mut messages =
        vec![serde_json::json!({"role": "system", "content": "You are a helpful assistant."})];
    for i in 0..turns {
        messages.push(serde_json::json!({"role": "user", "content": format!("{content} ({i})")}));
        messages.push(
            serde_json::json!({"role": "assistant", "content": "Sure, here is what I found."}),
        );
    }
    messages.push(serde_json::json!({"role": "user", "content": content}));
    serde_json::to_vec(&serde_json::json!({
        "model": "MBZUAI-IFM/K2-Think-v2", "stream": true,
        "stream_options": {"include_usage": true}, "temperature": 0.6,
        "messages": messages,
    }))
    .unwrap_or_default()
}

/// Parse an OpenAI request, rewrite it to the K2Think payload and serialize it.
fn bench_rewrite(c: &mut Criterion) {
    let small = request_json("How do I reverse a linked list in Rust?", 0);
    let big = request_json(&text_of(4000, 1), 50); // ~200 KiB
    let mut group = c.benchmark_group("rewrite");
    group.throughput(Throughput::Elements(1));
    for (name, body) in [("small", &small), ("200KiB", &big)] {
        group.bench_with_input(BenchmarkId::new(name, body.len()), body, |b, body| {
            b.iter(|| {
                let req = ChatRequest::parse(black_box(body))
                    .map_err(|e| e.message)
                    .unwrap_or_else(|e| panic!("{e}"));
                let payload = to_k2think(&req, RewriteOptions::streamed("MBZUAI-IFM/K2-Think-v2"));
                payload.to_bytes().len()
            })
        });
    }
    group.finish();
}

/// The request head of one K2Think attempt (a browser's header set, the Referer with the
/// chat id, the bearer), as `upstream.headers` configures it by default.
fn bench_k2think_head(c: &mut Criterion) {
    let target = UpstreamTarget::parse("https://www.k2think.ai").unwrap_or_else(|e| panic!("{e}"));
    let browser = [
        ("user-agent", "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"),
        ("sec-ch-ua", "\"Google Chrome\";v=\"131\", \"Chromium\";v=\"131\", \"Not_A Brand\";v=\"24\""),
        ("sec-ch-ua-mobile", "?0"),
        ("sec-ch-ua-platform", "\"Windows\""),
        ("origin", "https://www.k2think.ai"),
    ]
    .map(|(k, v)| (k.to_string(), v.to_string()));
    let after_referer = [("accept-language".to_string(), "en-US,en;q=0.9".to_string())];
    let settings = K2thinkSettings {
        fixed_head: FixedHead::new("/api/chat/completions", &target, &browser, &after_referer),
        target,
        user_mode: true,
        stream: true,
        referer: "https://www.k2think.ai/c/{chat_id}".into(),
        timing: Timing {
            connect_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(120),
            keepalive: Duration::from_secs(60),
            tls_verify: true,
            h2_streams: 0,
        },
        max_attempts: 3,
        backoff: Duration::ZERO,
        on_status: vec![429],
        implicit_think: true,
        delivery: ContentDelivery::default(),
    };
    let token = Secret::new("eyJhbGciOiJIUzI1NiJ9.eyJpZCI6IjEyMyJ9.c2lnbmF0dXJlLXNpZ25hdHVyZQ");
    let mut group = c.benchmark_group("k2think-head");
    group.throughput(Throughput::Elements(1));
    group.bench_function("attempt", |b| {
        b.iter(|| {
            let parts = settings
                .head(
                    Some(&token),
                    black_box("0f3c2a9e-7d41-4c55-9a0e-3b2f1e6d8c7a"),
                    black_box(880),
                    true,
                )
                .unwrap_or_else(|e| panic!("{e}"));
            parts.headers.len()
        })
    });
    group.finish();
}

/// The tool-call detector over the content channel in 8-character pieces: an answer that
/// holds a `<function_calls>` block, and plain text (the cost of watching for one).
fn bench_tools(c: &mut Criterion) {
    let tools = serde_json::json!([{"type": "function", "function": {
        "name": "get_weather", "description": "Current weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]);
    let list = tools.as_array().cloned().unwrap_or_default();
    let set = Arc::new(
        ToolSet::from_request(Some(&list), None)
            .ok()
            .flatten()
            .expect("tool set"),
    );
    let call = format!(
        "{} Let me look that up.\n{}",
        text_of(1500, 0),
        function_calls_block(&[(
            "get_weather".to_string(),
            r#"{"city":"Abu Dhabi"}"#.to_string()
        )])
    );
    let plain = text_of(4000, 2);
    let mut group = c.benchmark_group("tool_detector");
    for (name, text) in [("with_call", &call), ("plain_text", &plain)] {
        let points = growth_points(text);
        group.throughput(Throughput::Bytes(text.len() as u64));
        group.bench_function(name, |b| {
            let mut pieces = Vec::new();
            b.iter(|| {
                let mut d = ToolDetector::new(set.clone());
                let mut start = 0;
                for &end in &points {
                    d.push(black_box(&text[start..end]), &mut pieces);
                    start = end;
                }
                d.finish(&mut pieces);
                let n = pieces.len();
                pieces.clear();
                (n, d.calls())
            })
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    bench_k2think_head,
    bench_chat_stream,
    bench_surfaces,
    bench_forms,
    bench_splitter,
    bench_rewrite,
    bench_tools
);

fn main() {
    alloc_report();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
