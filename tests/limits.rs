//! Limits from config (issue 7, point 4): messages per request, total request time, and
//! per-client-key concurrency and rate, refused with 429 and `Retry-After`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{chat_body, Env, Sse};
use k2proxy::config::ApiKeyEntry;
use k2proxy::mock::MockConfig;

const MODEL: &str = "MBZUAI-IFM/K2-Think-v2";

fn keys() -> Vec<ApiKeyEntry> {
    vec![
        ApiKeyEntry {
            name: "alice".into(),
            key: "sk-alice-0123456789".into(),
        },
        ApiKeyEntry {
            name: "bob".into(),
            key: "sk-bob-0123456789".into(),
        },
    ]
}

/// A chat request with `key`, to send from inside `env.rt`.
fn request_as(env: &Env, key: &str, prompt: &str, stream: bool) -> reqwest::RequestBuilder {
    env.client
        .post(env.url("/v1/chat/completions"))
        .bearer_auth(key)
        .body(chat_body(MODEL, prompt, stream).to_string())
}

fn chat_as(env: &Env, key: &str, prompt: &str) -> common::Resp {
    env.send(request_as(env, key, prompt, false))
}

#[test]
fn per_key_concurrency_refuses_the_extra_request_of_that_key_only() {
    let env = Env::start(MockConfig::default(), |c| {
        c.auth.api_keys = keys();
        c.limits.per_key.concurrency = 1;
    });
    env.rt.block_on(async {
        // Alice's first request is held upstream at a gate.
        let held = request_as(
            &env,
            "sk-alice-0123456789",
            "hold [[mock: gate=c1; gate_after=1]]",
            true,
        )
        .send();
        let held = tokio::spawn(held);
        // Wait until the mock has it.
        for _ in 0..200 {
            if !env.requests().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(env.requests().len(), 1);
        let second = request_as(&env, "sk-alice-0123456789", "again", false)
            .send()
            .await
            .unwrap();
        assert_eq!(second.status(), 429);
        assert_eq!(second.headers()["retry-after"], "1");
        let v: serde_json::Value = second.json().await.unwrap();
        assert_eq!(v["error"]["code"], "rate_limit_exceeded");
        assert_eq!(v["error"]["type"], "rate_limit_error");
        // Bob is not affected.
        let bob = request_as(&env, "sk-bob-0123456789", "bob", false)
            .send()
            .await
            .unwrap();
        assert_eq!(bob.status(), 200);
        env.mock().open_gate("c1");
        let first = held.await.unwrap().unwrap();
        assert_eq!(first.status(), 200);
        let s = Sse::parse(&first.text().await.unwrap());
        s.assert_well_formed();
    });
    // The slot is free again, and the refused request never reached the upstream.
    assert_eq!(chat_as(&env, "sk-alice-0123456789", "after").status, 200);
    assert_eq!(env.requests().len(), 3);
}

#[test]
fn per_key_rate_is_a_token_bucket_with_retry_after() {
    let env = Env::start(MockConfig::default(), |c| {
        c.auth.api_keys = keys();
        c.limits.per_key.rate = 0.2; // one every 5 s
        c.limits.per_key.burst = 2;
    });
    assert_eq!(chat_as(&env, "sk-alice-0123456789", "1").status, 200);
    assert_eq!(chat_as(&env, "sk-alice-0123456789", "2").status, 200);
    let r = chat_as(&env, "sk-alice-0123456789", "3");
    r.assert_error(429, "rate_limit_exceeded");
    let wait: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=5).contains(&wait), "retry-after {wait}");
    assert_eq!(chat_as(&env, "sk-bob-0123456789", "b").status, 200);
    assert_eq!(
        env.requests().len(),
        3,
        "the refused request was not sent upstream"
    );
}

#[test]
fn too_many_messages_is_a_400_naming_messages() {
    let env = Env::start(MockConfig::default(), |c| c.limits.max_messages = 3);
    let msgs: Vec<_> = (0..4)
        .map(|i| serde_json::json!({"role": "user", "content": format!("m{i}")}))
        .collect();
    let r = env.chat(&serde_json::json!({"model": MODEL, "messages": msgs}));
    let v = r.assert_error(400, "invalid_request");
    assert_eq!(v["error"]["param"], "messages");
    assert!(env.requests().is_empty());
    let ok: Vec<_> = msgs[..3].to_vec();
    assert_eq!(
        env.chat(&serde_json::json!({"model": MODEL, "messages": ok}))
            .status,
        200
    );
}

#[test]
fn request_timeout_bounds_the_whole_request() {
    let env = Env::start(MockConfig::default(), |c| {
        c.limits.request_timeout = Duration::from_secs(1);
        c.upstream.header_timeout = Duration::from_secs(30);
    });
    // Before the answer: the upstream head takes 3 s -> 504, no retry past the deadline.
    let r = env.chat(&chat_body(
        MODEL,
        "slow [[mock: fault=slowhead; slowhead_ms=3000]]",
        false,
    ));
    r.assert_error(504, "request_timeout");
    // After the answer started: a paced stream longer than the limit ends with an error,
    // never a normal finish.
    let s = env.stream(&chat_body(
        MODEL,
        "long [[mock: pace_ms=100; reasoning_words=40; answer_words=40]]",
        true,
    ));
    assert!(!s.done, "no [DONE] after a timeout: {}", s.raw);
    assert!(s.raw.contains("limits.request_timeout"), "{}", s.raw);
    assert!(s.raw.contains("\"finish_reason\":\"error\""), "{}", s.raw);
    assert_eq!(s.error().unwrap()["error"]["code"], "request_timeout");
}
