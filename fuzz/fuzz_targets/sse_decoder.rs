//! `SseDecoder`: arbitrary bytes never panic, and the events (and the error) do not depend
//! on how the body is split. Input: one header byte (line bound, split seed), then the body.
//!
//! cargo +nightly fuzz run sse_decoder -- -max_total_time=60

#![no_main]

mod common;

use k2proxy::sse::{SseDecoder, SseError, DEFAULT_MAX_LINE};
use libfuzzer_sys::fuzz_target;

type Events = Vec<(String, Vec<u8>)>;

fn decode(pieces: &[&[u8]], max: usize) -> (Events, Result<(), SseError>) {
    let mut d = SseDecoder::with_max_line(max);
    let mut evs = Vec::new();
    let mut failed = false;
    for p in pieces {
        let r = d.push(p, |e| evs.push((e.event.to_string(), e.data.to_vec())));
        assert!(!failed || r.is_err(), "the error is sticky");
        failed |= r.is_err();
        assert_eq!(r.as_ref().err(), d.error());
    }
    let r = d.finish(|e| evs.push((e.event.to_string(), e.data.to_vec())));
    assert!(!failed || r.is_err(), "the error is sticky");
    assert_eq!(d.events(), evs.len() as u64);
    (evs, r)
}

fuzz_target!(|data: &[u8]| {
    let (h, body) = common::header(data);
    // Half of the inputs use a tiny line bound, to reach the error path.
    let max = if h & 1 == 0 {
        DEFAULT_MAX_LINE
    } else {
        usize::from(h >> 3) + 1
    };
    let whole = decode(&[body], max);
    let pieces = common::split_bytes(body, h);
    assert_eq!(decode(&pieces, max), whole, "split {pieces:?}");
    let bytewise: Vec<&[u8]> = body.chunks(1).collect();
    assert_eq!(decode(&bytewise, max), whole, "byte by byte");
});
