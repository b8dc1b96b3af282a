//! `POST /v1/chat/completions` end to end: real k2proxy (Pingora) in front of the project's
//! mock K2Think upstream.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{chat_body, expected, tokens, Env, Sse, MODEL, NOTHINK};
use k2proxy::mock::MockConfig;
use k2proxy::provider::k2think::decode::ContentDelivery;
use serde_json::{json, Value};

#[test]
fn request_is_rewritten_into_the_k2think_payload() {
    let env = Env::start(MockConfig::default(), |c| {
        c.pool.tokens = tokens(&["tok-one"])
    });
    let body = json!({
        "model": "MBZUAI-IFM/K2-Think",           // an alias of the v2 model
        "temperature": 0.4, "top_p": 0.8, "max_tokens": 64, "stop": ["END"],
        "user": "someone", "logprobs": false,     // ignored fields
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": [
                {"type": "text", "text": "Look at"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                {"type": "text", "text": "this."}
            ]},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_w", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Oslo\"}"}}
            ]},
            {"role": "tool", "tool_call_id": "call_w", "content": "rain"},
            {"role": "user", "content": "and now?"}
        ]
    });
    let r = env.chat(&body);
    assert_eq!(r.status, 200, "{}", r.text());
    let reqs = env.requests();
    assert_eq!(reqs.len(), 1);
    let up = &reqs[0];
    assert_eq!(up.method, "POST");
    assert_eq!(up.path, "/api/chat/completions");
    assert_eq!(up.bearer.as_deref(), Some("tok-one"));
    assert_eq!(up.header("content-type"), Some("application/json"));
    // Origin and Referer follow the base URL; a current Chrome with its client hints; no
    // spoofed client-IP header.
    let base = env.mock().base_url();
    assert_eq!(up.header("origin"), Some(base.as_str()));
    assert_eq!(up.header("referer"), Some(format!("{base}/").as_str()));
    assert!(up.header("user-agent").unwrap().contains("Chrome/156"));
    assert!(up
        .header("sec-ch-ua")
        .unwrap()
        .contains("\"Google Chrome\";v=\"156\""));
    assert_eq!(up.header("sec-ch-ua-mobile"), Some("?0"));
    assert_eq!(up.header("sec-ch-ua-platform"), Some("\"Windows\""));
    for spoof in [
        "x-forwarded-for",
        "x-real-ip",
        "forwarded",
        "client-ip",
        "pragma",
    ] {
        assert!(up.header(spoof).is_none(), "{spoof} must not be sent");
    }
    assert_eq!(
        up.header("content-length").unwrap(),
        up.body.len().to_string()
    );
    let p = up.json.as_ref().unwrap();
    assert_eq!(p["model"], "MBZUAI-IFM/K2-Think-v2");
    assert_eq!(p["stream"], true);
    assert_eq!(
        p["params"],
        json!({"temperature": 0.4, "top_p": 0.8, "max_tokens": 64, "stop": ["END"]})
    );
    let m = p["messages"].as_array().unwrap();
    let roles: Vec<&str> = m.iter().map(|x| x["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["system", "user", "assistant", "user", "user"]);
    assert_eq!(m[0]["content"], "You are terse.");
    assert_eq!(
        m[1]["content"][0],
        json!({"type": "text", "text": "Look at"})
    );
    assert_eq!(
        m[1]["content"][1]["image_url"]["url"],
        "data:image/png;base64,iVBORw0KGgo="
    );
    assert_eq!(m[1]["content"][2]["text"], "this.");
    let call = m[2]["content"].as_str().unwrap();
    assert!(
        call.contains("<tool>weather</tool>") && call.contains("<city>\"Oslo\"</city>"),
        "{call}"
    );
    let result = m[3]["content"].as_str().unwrap();
    assert!(
        result.contains("- Tool name: weather") && result.contains("rain"),
        "{result}"
    );
    assert_eq!(m[4]["content"], "and now?");
}

#[test]
fn guest_mode_uses_the_guest_endpoint_without_a_token() {
    let env = Env::start(MockConfig::default(), |_| {});
    let s = env.stream(&chat_body(MODEL, "hello guest", true));
    s.assert_well_formed();
    let (_, answer) = expected("hello guest", "");
    assert_eq!(s.content(), answer);
    let up = &env.requests()[0];
    assert_eq!(up.path, "/api/guest/chat/completions");
    assert_eq!(up.bearer, None);
    assert_eq!(up.header("authorization"), None);
}

#[test]
fn every_markup_form_and_delivery_splits_reasoning_from_content() {
    // Each upstream delivery with the `upstream.content_delivery` that reads it (OpenAI
    // deltas are read alike by every setting), and `auto` guessing each.
    for (reading, deliveries) in [
        (ContentDelivery::Cumulative, &["cumulative", "delta"][..]),
        (ContentDelivery::Incremental, &["incremental", "delta"][..]),
        (
            ContentDelivery::Auto,
            &["cumulative", "incremental", "delta"][..],
        ),
    ] {
        let env = Env::start(MockConfig::default(), |c| {
            c.upstream.content_delivery = reading
        });
        every_form_splits(&env, deliveries);
    }
}

fn every_form_splits(env: &Env, deliveries: &[&str]) {
    let prompt = "Split me 你好 👋";
    for form in ["v1", "v2", "v2-answer", "v2-noopen", "details"] {
        for delivery in deliveries {
            let d = format!("form={form}; delivery={delivery}; chunk=5; reasoning_words=12");
            let text = format!("{prompt} [[mock: {d}]]");
            let (reasoning, answer) = expected(prompt, &d);
            let s = env.stream(&chat_body(MODEL, &text, true));
            s.assert_well_formed();
            assert_eq!(
                s.reasoning().trim(),
                reasoning.trim(),
                "{form}/{delivery} reasoning"
            );
            assert_eq!(s.content(), answer, "{form}/{delivery} content");
            assert_eq!(s.finish_reason().as_deref(), Some("stop"));
            // the same through the non-stream path
            let r = env.chat(&chat_body(MODEL, &text, false));
            let v = r.json();
            let msg = &v["choices"][0]["message"];
            assert_eq!(
                msg["content"],
                answer.as_str(),
                "{form}/{delivery} non-stream"
            );
            assert_eq!(
                msg["reasoning_content"].as_str().unwrap().trim(),
                reasoning.trim(),
                "{form}/{delivery} non-stream reasoning"
            );
            // -nothink drops the reasoning everywhere
            let s = env.stream(&chat_body(NOTHINK, &text, true));
            assert_eq!(s.reasoning(), "", "{form}/{delivery} nothink");
            assert_eq!(s.content(), answer);
            assert!(!s.raw.contains("reasoning"), "{}", s.raw);
        }
    }
}

#[test]
fn repetitive_answers_arrive_whole_in_the_configured_delivery() {
    // Issue 16: 200 `=` sent as incremental 32-byte pieces arrived as 14 characters with
    // `finish_reason: stop`, since a piece that repeats the text looks like a cumulative
    // value. `upstream.content_delivery` says how to read them; nothing is guessed.
    let prompt = "=".repeat(3000);
    for (reading, delivery, chunk) in [
        (ContentDelivery::Incremental, "incremental", 32),
        (ContentDelivery::Cumulative, "cumulative", 64),
    ] {
        let env = Env::start(MockConfig::default(), |c| {
            c.upstream.content_delivery = reading;
            // untagged text is the answer, not reasoning held until `</think>`
            c.reasoning.implicit_think = false;
        });
        // The bare answer (the repetitive text comes first, as in the issue), without the
        // `done` event that repeats the whole text, and after reasoning with filler words.
        for extra in [
            "form=none",
            "form=none; end=marker",
            "form=v1; answer_words=600",
        ] {
            let d = format!("delivery={delivery}; chunk={chunk}; {extra}");
            let text = format!("{prompt} [[mock: {d}]]");
            let (reasoning, answer) = expected(&prompt, &d);
            let reasoning = if extra.contains("none") {
                ""
            } else {
                &reasoning
            };
            assert!(answer.len() > 3000);
            let s = env.stream(&chat_body(MODEL, &text, true));
            s.assert_well_formed();
            assert_eq!(s.content().len(), answer.len(), "{d}: stream length");
            assert_eq!(s.content(), answer, "{d}: stream");
            assert_eq!(s.reasoning().trim(), reasoning.trim(), "{d}");
            assert_eq!(s.finish_reason().as_deref(), Some("stop"));
            let v = env.chat(&chat_body(MODEL, &text, false)).json();
            assert_eq!(
                v["choices"][0]["message"]["content"],
                answer.as_str(),
                "{d}: non-stream"
            );
            assert_eq!(v["choices"][0]["finish_reason"], "stop");
        }
    }
}

#[test]
fn plain_answers_without_markup_are_content() {
    // implicit_think off: untagged text is the answer and streams as content
    let env = Env::start(MockConfig::default(), |c| {
        c.reasoning.implicit_think = false
    });
    let text = "no tags here [[mock: form=none; answer_words=20]]";
    let (_, answer) = expected("no tags here", "form=none; answer_words=20");
    let s = env.stream(&chat_body(MODEL, text, true));
    s.assert_well_formed();
    assert_eq!(
        (s.reasoning(), s.content()),
        (String::new(), answer.clone())
    );
    drop(env);
    // implicit_think on (default): nothing is lost; the non-stream answer is exact
    let env = Env::start(MockConfig::default(), |_| {});
    let s = env.stream(&chat_body(MODEL, text, true));
    assert_eq!(s.content(), answer);
    let v = env.chat(&chat_body(MODEL, text, false)).json();
    assert_eq!(v["choices"][0]["message"]["content"], answer.as_str());
    assert!(v["choices"][0]["message"]
        .get("reasoning_content")
        .is_none_or(|r| r == ""));
}

#[test]
fn first_delta_reaches_the_client_while_the_upstream_is_still_held() {
    // The mock writes 3 events and then waits at a gate that only this test opens, after
    // it has received the first reasoning delta: real streaming, proved without timing.
    let env = Env::start(MockConfig::default(), |_| {});
    let prompt = "stream me [[mock: gate=g1; gate_after=3; reasoning_words=30; answer_words=30]]";
    let (reasoning, answer) = expected("stream me", "reasoning_words=30; answer_words=30");
    env.rt.block_on(async {
        let mut resp = env
            .client
            .post(env.url("/v1/chat/completions"))
            .body(chat_body(MODEL, prompt, true).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let mut raw = String::new();
        loop {
            let chunk = tokio::time::timeout(Duration::from_secs(10), resp.chunk())
                .await
                .expect("the first delta must arrive while the upstream is held at the gate")
                .unwrap()
                .expect("stream ended early");
            raw.push_str(std::str::from_utf8(&chunk).unwrap());
            if raw.contains("reasoning_content") {
                break;
            }
        }
        let up = &env.requests()[0];
        assert!(!up.completed, "the upstream must still be sending");
        assert!(
            up.events_written <= 3,
            "events written so far: {}",
            up.events_written
        );
        env.mock().open_gate("g1");
        while let Some(chunk) = resp.chunk().await.unwrap() {
            raw.push_str(std::str::from_utf8(&chunk).unwrap());
        }
        let s = Sse::parse(&raw);
        s.assert_well_formed();
        assert_eq!(s.reasoning().trim(), reasoning.trim());
        assert_eq!(s.content(), answer);
        assert!(env.requests()[0].events_written > 3);
    });
}

#[test]
fn usage_only_when_asked_and_given() {
    let env = Env::start(MockConfig::default(), |_| {});
    let mut body = chat_body(MODEL, "count me", true);
    let s = env.stream(&body);
    assert!(
        s.usage().is_none(),
        "no include_usage, no usage chunk: {}",
        s.raw
    );
    body["stream_options"] = json!({"include_usage": true});
    let s = env.stream(&body);
    s.assert_well_formed();
    let usage = s.usage().expect("usage chunk");
    assert!(usage["total_tokens"].as_u64().unwrap() > 0);
    let usage_chunk = s.events.iter().find(|e| e.get("usage").is_some()).unwrap();
    assert_eq!(usage_chunk["choices"], json!([]));
    // the upstream gave none: no usage chunk invented
    body["messages"][0]["content"] = json!("count me [[mock: usage=false]]");
    assert!(env.stream(&body).usage().is_none());
}

/// Issue 17: `usage.completion_tokens_details.reasoning_tokens`, streamed and not. The mock
/// counts no reasoning tokens, so they are our estimate of the reasoning (as the Responses
/// surface estimates what the upstream does not count): hidden reasoning (a `-nothink`
/// model's) still counts, an answer without reasoning has none.
#[test]
fn usage_counts_reasoning_tokens() {
    let env = Env::start(MockConfig::default(), |_| {});
    let mut body = chat_body(MODEL, "count my thoughts", true);
    body["stream_options"] = json!({"include_usage": true});
    let s = env.stream(&body);
    s.assert_well_formed();
    let usage = s.usage().expect("usage chunk");
    let want = k2proxy::pipeline::tokens::estimate_tokens(&s.reasoning());
    assert!(want > 0);
    assert_eq!(
        usage["completion_tokens_details"]["reasoning_tokens"], want,
        "{usage}"
    );
    assert!(usage["completion_tokens"].as_u64().unwrap() >= want);

    let v = env
        .chat(&chat_body(MODEL, "count my thoughts", false))
        .json();
    let reasoning = v["choices"][0]["message"]["reasoning_content"]
        .as_str()
        .unwrap();
    assert_eq!(
        v["usage"]["completion_tokens_details"]["reasoning_tokens"],
        k2proxy::pipeline::tokens::estimate_tokens(reasoning),
        "{v}"
    );

    let v = env
        .chat(&chat_body(NOTHINK, "count my thoughts", false))
        .json();
    assert!(v["choices"][0]["message"]
        .get("reasoning_content")
        .is_none());
    let hidden = v["usage"]["completion_tokens_details"]["reasoning_tokens"]
        .as_u64()
        .unwrap();
    assert!(
        hidden > 0 && hidden <= v["usage"]["completion_tokens"].as_u64().unwrap(),
        "{v}"
    );

    let plain = "count my thoughts [[mock: form=none]]";
    let v = env.chat(&chat_body(MODEL, plain, false)).json();
    assert_eq!(
        v["usage"]["completion_tokens_details"]["reasoning_tokens"], 0,
        "{v}"
    );
}

#[test]
fn non_stream_answer_shape() {
    let env = Env::start(MockConfig::default(), |_| {});
    let r = env.chat(&chat_body(MODEL, "shape", false));
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("application/json"));
    let v = r.json();
    let (reasoning, answer) = expected("shape", "");
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], MODEL);
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(v["choices"][0]["message"]["content"], answer.as_str());
    assert_eq!(
        v["choices"][0]["message"]["reasoning_content"]
            .as_str()
            .unwrap()
            .trim(),
        reasoning.trim()
    );
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert!(v["usage"]["prompt_tokens"].as_u64().is_some());
    assert!(r.header("x-request-id").unwrap().starts_with("req_"));
}

#[test]
fn upstream_json_answers_are_accepted_for_streaming_clients() {
    // upstream.stream: false makes the mock answer one JSON completion
    let env = Env::start(MockConfig::default(), |c| c.upstream.stream = false);
    let s = env.stream(&chat_body(MODEL, "json please", true));
    s.assert_well_formed();
    let (reasoning, answer) = expected("json please", "");
    assert_eq!(s.content(), answer);
    assert_eq!(s.reasoning().trim(), reasoning.trim());
    assert_eq!(env.requests()[0].json.as_ref().unwrap()["stream"], false);
}

#[test]
fn a_json_answer_larger_than_the_precommit_bound_is_delivered() {
    let env = Env::start(MockConfig::default(), |c| c.upstream.stream = false);
    let prompt = "long [[mock: form=none; answer_words=200000; usage=false]]";
    let (_, answer) = expected("long", "form=none; answer_words=200000");
    assert!(
        answer.len() > 1 << 20,
        "the answer must exceed 1 MiB: {}",
        answer.len()
    );
    let s = env.stream(&chat_body(MODEL, prompt, true));
    s.assert_well_formed();
    assert_eq!(s.content().len(), answer.len());
}

#[test]
fn retries_with_a_new_token_until_one_answers() {
    let env = Env::start(MockConfig::default(), |c| {
        c.pool.tokens = tokens(&["t-a;fault=429;retry_after=9", "t-b;fault=401", "t-c"]);
    });
    let s = env.stream(&chat_body(MODEL, "retry me", true));
    s.assert_well_formed();
    let bearers: Vec<String> = env
        .requests()
        .iter()
        .map(|r| r.bearer.clone().unwrap())
        .collect();
    assert_eq!(bearers.len(), 3);
    assert_eq!(bearers[2], "t-c");
    let mut sorted = bearers.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 3, "never the same token twice: {bearers:?}");
    let stats = env.app.pool().stats(std::time::Instant::now());
    assert_eq!(stats.cooling, 1, "429 cools its token: {stats:?}");
    assert_eq!(
        stats.tokens.iter().map(|t| t.strikes).sum::<u32>(),
        1,
        "401 strikes: {stats:?}"
    );
}

#[test]
fn a_200_kib_request_is_replayed_in_full_on_retry() {
    let env = Env::start(MockConfig::default(), |c| {
        c.pool.tokens = tokens(&["big-a;fault=500", "big-b;fault=503", "big-c"]);
    });
    let long = "x".repeat(200 * 1024);
    let r = env.chat(&chat_body(MODEL, &long, false));
    assert_eq!(r.status, 200, "{}", r.text());
    let reqs = env.requests();
    assert_eq!(reqs.len(), 3);
    let size = reqs[0].body.len();
    assert!(size > 200 * 1024);
    for up in &reqs {
        assert_eq!(up.body.len(), size, "each attempt carries the whole body");
        assert_eq!(
            up.json.as_ref().unwrap()["messages"][0]["content"]
                .as_str()
                .unwrap()
                .len(),
            long.len()
        );
    }
}

#[test]
fn unusable_200_answers_are_retried() {
    let env = Env::start(MockConfig::default(), |c| {
        c.pool.tokens = tokens(&[
            "u-a;fault=html",
            "u-b;fault=garbage",
            "u-c;fault=error_event;cut_after=0",
            "u-d",
        ]);
        c.retry.max_attempts = 4;
    });
    let s = env.stream(&chat_body(MODEL, "survive", true));
    s.assert_well_formed();
    assert_eq!(s.content(), expected("survive", "").1);
    assert_eq!(env.requests().len(), 4);
}

#[test]
fn cut_mid_stream_ends_with_an_error_never_a_normal_finish() {
    let env = Env::start(MockConfig::default(), |c| {
        c.pool.tokens = tokens(&["cut;fault=cut;cut_after=4"])
    });
    let s = env.stream(&chat_body(
        MODEL,
        "cut me [[mock: reasoning_words=20]]",
        true,
    ));
    assert!(!s.done, "no [DONE] after a failure: {}", s.raw);
    assert_eq!(s.finish_reason().as_deref(), Some("error"), "{}", s.raw);
    let e = s.error().expect("an error event");
    assert_eq!(e["error"]["code"], "upstream_stream_error");
    assert!(
        !s.reasoning().is_empty(),
        "what arrived before the cut was delivered"
    );
    assert!(!s.raw.contains("\"finish_reason\":\"stop\""));
}

#[test]
fn a_stall_mid_stream_ends_with_an_error_after_idle_timeout() {
    let env = Env::start(MockConfig::default(), |c| {
        c.pool.tokens = tokens(&["stall;fault=stall;cut_after=3;stall_ms=30000"]);
        c.upstream.idle_timeout = Duration::from_millis(300);
    });
    let s = env.stream(&chat_body(MODEL, "stall", true));
    assert!(!s.done);
    assert_eq!(s.finish_reason().as_deref(), Some("error"));
    assert!(s.error().is_some());
}

#[test]
fn an_upstream_that_keeps_the_body_open_after_done_still_ends_cleanly() {
    // The mock sends its end marker and then holds the body open for a minute; the
    // answer is complete, so the client gets a normal finish at once, stream or not.
    let env = Env::start(MockConfig::default(), |c| {
        c.upstream.idle_timeout = Duration::from_secs(30)
    });
    for end in ["marker", "done", "both"] {
        let prompt = format!("linger [[mock: linger_ms=60000; end={end}]]");
        let started = std::time::Instant::now();
        let s = env.stream(&chat_body(MODEL, &prompt, true));
        s.assert_well_formed();
        assert_eq!(s.content(), expected("linger", "").1);
        let r = env.chat(&chat_body(MODEL, &prompt, false));
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["choices"][0]["finish_reason"], "stop");
        // not the 30 s idle timeout: the end marker ended the exchange
        assert!(started.elapsed() < Duration::from_secs(20), "end={end}");
    }
}

#[test]
fn exhausted_attempts_map_to_fitting_statuses() {
    // all rate limited → 429 with Retry-After
    let env = Env::start(MockConfig::default(), |c| {
        c.pool.tokens = tokens(&["r1;fault=429;retry_after=5", "r2;fault=429;retry_after=7"]);
    });
    let r = env.chat(&chat_body(MODEL, "x", true));
    r.assert_error(429, "upstream_rate_limited");
    let ra: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=7).contains(&ra), "{ra}");
    // now every token cools: the pool itself is exhausted → 503 with Retry-After
    let r = env.chat(&chat_body(MODEL, "x", true));
    r.assert_error(503, "pool_exhausted");
    assert!(r.header("retry-after").is_some());
    assert_eq!(
        env.requests().len(),
        2,
        "no upstream call while the pool is exhausted"
    );
    drop(env);

    // 5xx → 502
    let env = Env::start(MockConfig::default(), |c| {
        c.pool.tokens = tokens(&["e1;fault=500", "e2;fault=502", "e3;fault=503"]);
    });
    env.chat(&chat_body(MODEL, "x", false))
        .assert_error(502, "upstream_error");
    drop(env);

    // slow head → retried, then 504
    let env = Env::start(MockConfig::default(), |c| {
        c.pool.tokens = tokens(&[
            "s1;fault=slowhead;slowhead_ms=5000",
            "s2;fault=slowhead;slowhead_ms=5000",
        ]);
        c.upstream.header_timeout = Duration::from_millis(300);
    });
    env.chat(&chat_body(MODEL, "x", true))
        .assert_error(504, "upstream_timeout");
    assert_eq!(env.requests().len(), 2);
    drop(env);

    // another non-retryable status → 502 at once, no retry
    let env = Env::start(MockConfig::default(), |c| {
        c.pool.tokens = tokens(&["n1;fault=404", "n2"]);
    });
    env.chat(&chat_body(MODEL, "x", false))
        .assert_error(502, "upstream_rejected");
    assert_eq!(env.requests().len(), 1);
}

#[test]
fn connect_errors_are_retried_then_reported() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dead = common::free_port();
    let env = Env::start_with(rt, |c| {
        c.upstream.base_url = format!("http://127.0.0.1:{dead}");
        c.upstream.connect_timeout = Duration::from_millis(500);
    });
    let r = env.chat(&chat_body(MODEL, "anyone?", true));
    r.assert_error(502, "upstream_unreachable");
}

#[test]
fn strikes_disable_a_token_after_max_failures() {
    let env = Env::start(MockConfig::default(), |c| {
        c.pool.tokens = tokens(&["bad;fault=401", "good"]);
        c.pool.max_failures = 2;
    });
    for _ in 0..6 {
        let r = env.chat(&chat_body(MODEL, "x", false));
        assert_eq!(r.status, 200);
    }
    let bad_uses = env
        .requests()
        .iter()
        .filter(|r| r.bearer.as_deref() == Some("bad;fault=401"))
        .count();
    assert_eq!(bad_uses, 2, "the refused token is disabled after 2 strikes");
    let stats = env.app.pool().stats(std::time::Instant::now());
    assert_eq!((stats.active, stats.disabled), (1, 1));
}

#[test]
fn tokens_file_is_read_with_comments() {
    let dir = std::env::temp_dir().join(format!("k2p-tokens-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("tokens.txt");
    std::fs::write(&file, "# pool\n\nfile-tok-1\n  file-tok-2  \n").unwrap();
    let path = file.display().to_string();
    let env = Env::start(MockConfig::default(), |c| {
        c.pool.tokens = tokens(&["inline-tok"]);
        c.pool.tokens_file = Some(path);
    });
    for _ in 0..3 {
        assert_eq!(env.chat(&chat_body(MODEL, "x", false)).status, 200);
    }
    let bearers: Vec<String> = env
        .requests()
        .iter()
        .map(|r| r.bearer.clone().unwrap())
        .collect();
    assert_eq!(
        bearers,
        ["inline-tok", "file-tok-1", "file-tok-2"],
        "round robin over both sources"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn unknown_model_lists_the_models_that_exist() {
    let env = Env::start(MockConfig::default(), |_| {});
    let r = env.chat(&chat_body("llama-3-70b", "x", true));
    let v = r.assert_error(404, "model_not_found");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("llama-3-70b") && msg.contains(MODEL) && msg.contains(NOTHINK),
        "{msg}"
    );
    assert_eq!(v["error"]["param"], "model");
    assert!(env.requests().is_empty());
}

#[test]
fn reasoning_output_modes() {
    let env = Env::start(MockConfig::default(), |c| {
        c.reasoning.output = k2proxy::config::ReasoningOutput::Inline;
    });
    let (reasoning, answer) = expected("inline", "");
    let s = env.stream(&chat_body(MODEL, "inline", true));
    assert_eq!(s.reasoning(), "");
    let content = s.content();
    assert!(content.starts_with("<think>"), "{content}");
    assert!(
        content.contains(reasoning.trim()) && content.ends_with(&answer),
        "{content}"
    );
    drop(env);
    let env = Env::start(MockConfig::default(), |c| {
        c.reasoning.output = k2proxy::config::ReasoningOutput::Drop;
    });
    let s = env.stream(&chat_body(MODEL, "dropped", true));
    assert_eq!(
        (s.reasoning(), s.content()),
        (String::new(), expected("dropped", "").1)
    );
}

#[test]
fn webui_payload_style() {
    let env = Env::start(MockConfig::default(), |c| {
        c.upstream.payload = k2proxy::config::PayloadStyle::Webui;
        c.upstream.headers.referer = Some("https://www.k2think.ai/c/{chat_id}".into());
    });
    assert_eq!(env.chat(&chat_body(MODEL, "x", false)).status, 200);
    let up = &env.requests()[0];
    let p: &Value = up.json.as_ref().unwrap();
    let chat_id = p["chat_id"].as_str().unwrap();
    assert_eq!(chat_id.len(), 36);
    assert_eq!(
        up.header("referer").unwrap(),
        format!("https://www.k2think.ai/c/{chat_id}")
    );
    assert!(p["variables"]["{{CURRENT_DATE}}"].is_string());
}

#[test]
fn text_files_are_inlined_and_other_types_refused() {
    use base64::Engine;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let env = Env::start(MockConfig::default(), |c| {
        c.limits.max_file_bytes = k2proxy::config::ByteSize(4096);
    });
    let body = json!({"model": MODEL, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "summarise"},
        {"type": "file", "file": {"filename": "notes.md", "file_data": format!("data:text/markdown;base64,{}", b64("# Plan\n- ship ✓".as_bytes()))}},
        {"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{}", b64(b"\x89PNG\r\n"))}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}
    ]}]});
    let r = env.chat(&body);
    assert_eq!(r.status, 200, "{}", r.text());
    let up = env.requests()[0].json.clone().unwrap();
    let parts = &up["messages"][0]["content"];
    assert_eq!(parts[0]["text"], "summarise");
    assert_eq!(
        parts[1]["text"],
        "<file name=\"notes.md\" type=\"text/markdown\">\n# Plan\n- ship ✓\n</file>"
    );
    assert_eq!(parts[2]["type"], "image_url");
    assert!(parts[2]["image_url"]["url"]
        .as_str()
        .unwrap()
        .starts_with("data:image/png;base64,"));
    assert_eq!(parts[3]["image_url"]["url"], "https://example.com/cat.jpg");

    let refuse = |file: Value| {
        let body = json!({"model": MODEL, "messages": [{"role": "user", "content": [{"type": "file", "file": file}]}]});
        env.chat(&body)
    };
    let r = refuse(
        json!({"filename": "deck.pdf", "file_data": format!("data:application/pdf;base64,{}", b64(b"%PDF-1.7"))}),
    );
    let v = r.assert_error(400, "unsupported_content_type");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("application/pdf"),
        "{v}"
    );
    assert_eq!(v["error"]["param"], "messages[0].content[0]");
    refuse(json!({"filename": "big.txt", "file_data": format!("data:text/plain;base64,{}", b64(&[b'a'; 5000]))}))
        .assert_error(413, "file_too_large");
    refuse(json!({"file_id": "file-123"})).assert_error(400, "unsupported_content_type");
    let audio = json!({"model": MODEL, "messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}]}]});
    let v = env
        .chat(&audio)
        .assert_error(400, "unsupported_content_type");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("input_audio"));
    assert_eq!(
        env.requests().len(),
        1,
        "refused requests never reach the upstream"
    );
}
