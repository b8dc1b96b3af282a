//! The upstream fault matrix (issue 7, point 1): every fault the mock can inject, for a
//! streaming and a non-streaming client, with one token in the pool and with three.
//!
//! The faulty token is always the first one the pool hands out; the other two are
//! healthy. For each cell the test asserts what the client receives (the whole answer, a
//! stream that ends with an explicit error, or an OpenAI error before anything was sent),
//! how many upstream attempts were made, and every token's state afterwards. A `[DONE]`
//! after a failure fails every cell.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{chat_body, expected, Env, MODEL};
use k2proxy::config::Config;
use k2proxy::mock::MockConfig;
use serde_json::Value;

const PROMPT: &str = "fault matrix";

#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    Stream,
    Json,
}

const MODES: [Mode; 2] = [Mode::Stream, Mode::Json];

/// What the client received.
#[derive(Debug, PartialEq)]
enum Got {
    /// The whole answer: a well-formed stream ending in `[DONE]`, or a JSON completion with
    /// `finish_reason: "stop"`, with exactly the mock's reasoning and answer.
    Answer,
    /// A stream that had started and then ended with `finish_reason: "error"` and an error
    /// event carrying this code, without `[DONE]`.
    Broken(String),
    /// An OpenAI error response before anything else was sent.
    Refused {
        status: u16,
        code: String,
        retry_after: bool,
    },
}

fn refused(status: u16, code: &str) -> Got {
    Got::Refused {
        status,
        code: code.to_string(),
        retry_after: false,
    }
}

/// One cell of the matrix.
struct Run {
    got: Got,
    /// Bearer tokens of the upstream attempts, in order.
    attempts: Vec<String>,
    /// `(state, strikes)` of each token, in pool order.
    pool: Vec<(String, u32)>,
    env: Env,
}

/// The pool after a run: `bad` is the faulty token, `ok` the healthy ones.
fn pool_of(size: usize, bad: (&str, u32)) -> Vec<(String, u32)> {
    let mut v = vec![(bad.0.to_string(), bad.1)];
    v.extend((1..size).map(|_| ("active".to_string(), 0)));
    v
}

fn token_names(size: usize, fault: &str) -> Vec<String> {
    let mut v = vec![format!("bad;{fault}")];
    v.extend((2..=size).map(|i| format!("ok-{i}")));
    v
}

/// Start a proxy whose pool holds `size` tokens (the first with `fault`), send one request
/// in `mode`, and record what happened.
fn run(fault: &str, size: usize, mode: Mode, edit: impl FnOnce(&mut Config)) -> Run {
    let env = Env::start(MockConfig::default(), |c| {
        c.pool.tokens = token_names(size, fault);
        edit(c)
    });
    let got = ask(&env, mode);
    let attempts = env
        .requests()
        .iter()
        .map(|r| r.bearer.clone().unwrap_or_default())
        .collect();
    let pool = pool_state(&env);
    Run {
        got,
        attempts,
        pool,
        env,
    }
}

fn pool_state(env: &Env) -> Vec<(String, u32)> {
    env.app
        .pool()
        .stats(std::time::Instant::now())
        .tokens
        .iter()
        .map(|t| (t.state.to_string(), t.strikes))
        .collect()
}

/// Send the matrix's request and classify the answer, checking its shape on the way.
fn ask(env: &Env, mode: Mode) -> Got {
    let r = env.chat(&chat_body(MODEL, PROMPT, mode == Mode::Stream));
    let (reasoning, answer) = expected(PROMPT, "");
    if r.status != 200 {
        let ct = r.header("content-type").unwrap_or_default();
        assert!(ct.starts_with("application/json"), "{ct}: {}", r.text());
        let v = r.json();
        let e = &v["error"];
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        assert!(e["type"].is_string(), "{v}");
        return Got::Refused {
            status: r.status,
            code: e["code"].as_str().unwrap_or_default().to_string(),
            retry_after: r.header("retry-after").is_some(),
        };
    }
    match mode {
        Mode::Json => {
            let v: Value = r.json();
            assert_eq!(v["object"], "chat.completion", "{v}");
            let choice = &v["choices"][0];
            assert_eq!(choice["finish_reason"], "stop", "{v}");
            assert_eq!(choice["message"]["content"], answer.as_str(), "{v}");
            assert_eq!(
                choice["message"]["reasoning_content"],
                reasoning.as_str(),
                "{v}"
            );
            Got::Answer
        }
        Mode::Stream => {
            let s = common::Sse::parse(&r.text());
            if s.done {
                s.assert_well_formed();
                assert_eq!(s.content(), answer);
                assert_eq!(s.reasoning(), reasoning);
                return Got::Answer;
            }
            // No [DONE]: it must say why, and must not look like a normal finish.
            assert_eq!(s.finish_reason().as_deref(), Some("error"), "{}", s.raw);
            assert!(!s.raw.contains("\"finish_reason\":\"stop\""), "{}", s.raw);
            let e = s
                .error()
                .unwrap_or_else(|| panic!("no error event: {}", s.raw));
            assert!(e["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()));
            // What was delivered is a prefix of the real answer: nothing invented.
            assert!(reasoning.starts_with(&s.reasoning()), "{}", s.raw);
            assert!(answer.starts_with(&s.content()), "{}", s.raw);
            Got::Broken(e["error"]["code"].as_str().unwrap_or_default().to_string())
        }
    }
}

/// Faults that strike before the answer starts: one token → the given error and a strike;
/// three tokens → the answer from the next token, the faulty one struck.
fn precommit_fault(fault: &str, status: u16, code: &str, edit: impl Fn(&mut Config)) {
    for mode in MODES {
        let r = run(fault, 1, mode, &edit);
        assert_eq!(r.got, refused(status, code), "{fault} {mode:?}, one token");
        assert_eq!(r.attempts, token_names(1, fault), "{fault} {mode:?}");
        assert_eq!(r.pool, pool_of(1, ("active", 1)), "{fault} {mode:?}");

        let r = run(fault, 3, mode, &edit);
        assert_eq!(r.got, Got::Answer, "{fault} {mode:?}, three tokens");
        assert_eq!(r.attempts, token_names(2, fault), "{fault} {mode:?}");
        assert_eq!(r.pool, pool_of(3, ("active", 1)), "{fault} {mode:?}");
    }
}

#[test]
fn status_401_and_403_strike_the_token_and_retry() {
    for code in [401, 403] {
        precommit_fault(
            &format!("fault={code}"),
            502,
            "upstream_auth_failed",
            |_| {},
        );
    }
}

#[test]
fn status_500_strikes_the_token_and_retries() {
    precommit_fault("fault=500", 502, "upstream_error", |_| {});
}

#[test]
fn status_429_cools_the_token_and_retries() {
    for mode in MODES {
        let fault = "fault=429;retry_after=30";
        let r = run(fault, 1, mode, |_| {});
        assert_eq!(
            r.got,
            Got::Refused {
                status: 429,
                code: "upstream_rate_limited".into(),
                retry_after: true
            },
            "{mode:?}"
        );
        assert_eq!(r.pool, pool_of(1, ("cooling", 0)), "{mode:?}");
        // While it cools, the pool is exhausted: no upstream call at all.
        assert_eq!(
            ask(&r.env, mode),
            Got::Refused {
                status: 503,
                code: "pool_exhausted".into(),
                retry_after: true
            }
        );
        assert_eq!(r.env.requests().len(), 1);

        let r = run(fault, 3, mode, |_| {});
        assert_eq!(r.got, Got::Answer, "{mode:?}");
        assert_eq!(r.attempts, token_names(2, fault));
        assert_eq!(r.pool, pool_of(3, ("cooling", 0)), "{mode:?}");
    }
}

#[test]
fn slow_head_times_out_strikes_and_retries() {
    let short = |c: &mut Config| c.upstream.header_timeout = Duration::from_millis(300);
    precommit_fault(
        "fault=slowhead;slowhead_ms=5000",
        504,
        "upstream_timeout",
        short,
    );
    // Slow but within the timeout: answered, nobody struck.
    for mode in MODES {
        let r = run("fault=slowhead;slowhead_ms=150", 1, mode, short);
        assert_eq!(r.got, Got::Answer, "{mode:?}");
        assert_eq!(r.pool, pool_of(1, ("active", 0)));
    }
}

#[test]
fn garbage_and_html_200s_strike_the_token_and_retry() {
    for fault in [
        "fault=garbage",
        "fault=html",
        "fault=error_event;cut_after=0",
    ] {
        precommit_fault(fault, 502, "upstream_invalid_response", |_| {});
    }
}

#[test]
fn a_connection_closed_without_an_answer_is_retried_without_a_strike() {
    for mode in MODES {
        let r = run("fault=close", 1, mode, |_| {});
        assert_eq!(r.got, refused(502, "upstream_unreachable"), "{mode:?}");
        assert_eq!(r.pool, pool_of(1, ("active", 0)), "not the token's fault");

        let r = run("fault=close", 3, mode, |_| {});
        assert_eq!(r.got, Got::Answer, "{mode:?}");
        assert_eq!(r.attempts.len(), 2);
        assert_eq!(r.pool, pool_of(3, ("active", 0)));
    }
}

/// Faults in the middle of the answer. A streaming client has its first delta by then,
/// so it gets an explicit error (the token is not struck: its answer was usable); a JSON
/// client has seen nothing, so the answer is retried with the next token.
fn midstream_fault(
    fault: &str,
    stream_code: &str,
    json: (u16, &str, u32),
    edit: impl Fn(&mut Config),
) {
    for size in [1, 3] {
        let r = run(fault, size, Mode::Stream, &edit);
        assert_eq!(
            r.got,
            Got::Broken(stream_code.into()),
            "{fault} stream, {size}"
        );
        assert_eq!(r.attempts.len(), 1, "no retry after the first byte");
        assert_eq!(
            r.pool,
            pool_of(size, ("active", 0)),
            "{fault} stream, {size}"
        );
    }
    let (status, code, strikes) = json;
    let r = run(fault, 1, Mode::Json, &edit);
    assert_eq!(r.got, refused(status, code), "{fault} json, one token");
    assert_eq!(r.pool, pool_of(1, ("active", strikes)), "{fault} json");
    let r = run(fault, 3, Mode::Json, &edit);
    assert_eq!(r.got, Got::Answer, "{fault} json, three tokens");
    assert_eq!(r.attempts, token_names(2, fault));
    assert_eq!(r.pool, pool_of(3, ("active", strikes)), "{fault} json");
}

#[test]
fn a_cut_mid_answer_ends_the_stream_with_an_error_or_is_retried() {
    // A cut is the connection's fault, not the token's: no strike.
    midstream_fault(
        "fault=cut;cut_after=3",
        "upstream_stream_error",
        (502, "upstream_stream_error", 0),
        |_| {},
    );
    // Cut before the first event: nothing was sent, so a stream is retried too.
    precommit_cut();
}

fn precommit_cut() {
    for mode in MODES {
        let r = run("fault=cut;cut_after=0", 3, mode, |_| {});
        assert_eq!(r.got, Got::Answer, "{mode:?}");
        assert_eq!(r.attempts.len(), 2);
        assert_eq!(r.pool, pool_of(3, ("active", 0)));
        let r = run("fault=cut;cut_after=0", 1, mode, |_| {});
        assert_eq!(r.got, refused(502, "upstream_stream_error"), "{mode:?}");
        assert_eq!(r.pool, pool_of(1, ("active", 0)));
    }
}

#[test]
fn slow_events_past_the_idle_timeout_end_with_an_error_or_are_retried() {
    let idle = |c: &mut Config| c.upstream.idle_timeout = Duration::from_millis(300);
    // paced slower than the idle timeout from the first event on
    midstream_fault(
        "pace_ms=2000",
        "upstream_timeout",
        (504, "upstream_timeout", 1),
        idle,
    );
    // a stall after a few events
    midstream_fault(
        "fault=stall;cut_after=3;stall_ms=30000",
        "upstream_timeout",
        (504, "upstream_timeout", 1),
        idle,
    );
    // slow but within the idle timeout: the whole answer, nobody struck
    for mode in MODES {
        let r = run("pace_ms=60", 1, mode, idle);
        assert_eq!(r.got, Got::Answer, "{mode:?}");
        assert_eq!(r.pool, pool_of(1, ("active", 0)));
    }
}

#[test]
fn an_error_event_mid_stream_ends_with_an_error() {
    midstream_fault(
        "fault=error_event;cut_after=3",
        "upstream_stream_error",
        (502, "upstream_invalid_response", 1),
        |_| {},
    );
}

#[test]
fn a_refused_connection_is_reported_and_strikes_nobody() {
    for size in [1, 3] {
        for mode in MODES {
            let dead = common::free_port();
            let env = Env::start_with(common::runtime(), |c| {
                c.upstream.base_url = format!("http://127.0.0.1:{dead}");
                c.pool.tokens = token_names(size, "fault=none");
            });
            assert_eq!(
                ask(&env, mode),
                refused(502, "upstream_unreachable"),
                "{mode:?}, {size}"
            );
            let all_fine: Vec<(String, u32)> =
                (0..size).map(|_| ("active".to_string(), 0)).collect();
            assert_eq!(
                pool_state(&env),
                all_fine,
                "a refused connect strikes nobody"
            );
            // the next request is served the same way: nothing is wedged
            assert_eq!(ask(&env, mode), refused(502, "upstream_unreachable"));
        }
    }
}
