//! Transform throughput: bytes of upstream body per second.
//!
//! cargo bench --bench transform            (add `-- --quick` for a short run)
//!
//! Inputs are built in memory: a K2Think v1 answer (~1.6 KB reasoning,
//! ~2.6 KB answer) delivered as cumulative `content` events every ~8
//! characters of growth, the same text as OpenAI `delta` events, and the raw
//! text for the splitter alone. Upstream bytes are fed in 10-byte and
//! 1460-byte (one TCP segment) pieces.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use k2proxy::sse;
use k2proxy::transform::complete::Completion;
use k2proxy::transform::split::{Deltas, Splitter};
use k2proxy::transform::stream::{ChatStream, ReasoningMode, StreamOptions, UpstreamFormat};

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
    StreamOptions {
        id: "chatcmpl-bench".to_string(),
        created: 1_758_000_000,
        model: "MBZUAI-IFM/K2-Think-v2".to_string(),
        reasoning: ReasoningMode::Field,
        implicit_think: true,
        include_usage: true,
        tools: None,
    }
}

fn run_stream(body: &[u8], piece: usize, out: &mut Vec<u8>) -> usize {
    out.clear();
    let mut s = ChatStream::new(options(), UpstreamFormat::Sse);
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

criterion_group!(benches, bench_chat_stream, bench_splitter);
criterion_main!(benches);
