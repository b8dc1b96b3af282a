//! K2 Horizon on chat.ifm.ai (k2think-protocol.md §0.5), end to end: the real proxy with its
//! default catalogue in front of the mock's Horizon personality (the `<details>` + bare
//! answer form with quoted reasoning, a leading `task_id`, a finish chunk after `done`, a
//! torn-down connection after it, the thinking-field rule, the effort closers), on all three
//! surfaces, streamed and not; and the old host's guest path, which now answers 400.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{expected, tokens, Env, Resp, Sse};
use k2proxy::mock::{MockConfig, DETAIL_EVENT};
use serde_json::{json, Value};

const HORIZON: &str = "IFM/K2-Horizon";
const PROMPT: &str = "Second question, with ünïcode ✓";

fn env() -> Env {
    Env::start(MockConfig::horizon(), |_| {})
}

fn env_with(edit: impl FnOnce(&mut k2proxy::config::Config)) -> Env {
    Env::start(MockConfig::horizon(), edit)
}

/// The upstream bodies the mock got for chat requests.
fn upstream_bodies(env: &Env) -> Vec<Value> {
    env.requests()
        .into_iter()
        .map(|r| r.json.expect("JSON body"))
        .collect()
}

/// The thinking field of every assistant message sent upstream.
fn thinking_fields(body: &Value) -> Vec<Value> {
    body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "assistant")
        .map(|m| m.get("reasoning").cloned().unwrap_or(Value::Null))
        .collect()
}

/// `(event name, data)` of an SSE body with `event:` lines (Messages, Responses).
fn named_events(raw: &str) -> Vec<(String, Value)> {
    raw.split("\n\n")
        .filter(|b| !b.trim().is_empty())
        .map(|b| {
            let mut name = String::new();
            let mut data = String::new();
            for line in b.lines() {
                if let Some(n) = line.strip_prefix("event: ") {
                    name = n.to_string();
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data.push_str(d);
                }
            }
            (name, serde_json::from_str(&data).unwrap_or(Value::Null))
        })
        .collect()
}

fn chat_history(stream: bool, with_reasoning: bool) -> Value {
    let mut assistant = json!({"role": "assistant", "content": "First answer."});
    if with_reasoning {
        assistant["reasoning_content"] = json!("I thought about the first question.");
    }
    json!({
        "model": HORIZON,
        "stream": stream,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "First question?"},
            assistant,
            {"role": "user", "content": PROMPT},
        ],
    })
}

#[test]
fn chat_multi_turn_splits_exactly_and_ends_with_stop_after_a_ragged_end() {
    let env = env();
    let (reasoning, answer) = expected(PROMPT, "");
    for with_reasoning in [true, false] {
        let s = env.stream(&chat_history(true, with_reasoning));
        s.assert_well_formed();
        assert_eq!(s.reasoning(), reasoning, "no `> ` quoting, no summary");
        assert_eq!(s.content(), answer, "the bare answer once, not doubled");
        assert_eq!(s.finish_reason().as_deref(), Some("stop"));
        assert!(s.error().is_none(), "a teardown after done is a clean end");
        assert!(!s.raw.contains("task_id"), "{}", s.raw);

        let r = env.chat(&chat_history(false, with_reasoning));
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        let msg = &v["choices"][0]["message"];
        assert_eq!(msg["content"], answer.as_str());
        assert_eq!(msg["reasoning_content"], reasoning.as_str());
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
    }
    let bodies = upstream_bodies(&env);
    assert_eq!(bodies.len(), 4, "one upstream request each, no retry");
    for (i, b) in bodies.iter().enumerate() {
        assert_eq!(b["model"], "IFM/K2-Horizon-375B-A23B");
        let want = if i < 2 {
            "I thought about the first question."
        } else {
            ""
        };
        assert_eq!(thinking_fields(b), vec![json!(want)], "request {i}");
    }
}

#[test]
fn messages_multi_turn_carries_thinking_blocks_and_splits_exactly() {
    let env = env();
    let (reasoning, answer) = expected(PROMPT, "");
    let body = |stream: bool| {
        json!({
            "model": HORIZON, "max_tokens": 512, "stream": stream, "system": "Be brief.",
            "thinking": {"type": "adaptive"},
            "messages": [
                {"role": "user", "content": "First question?"},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "Earlier thought.", "signature": ""},
                    {"type": "text", "text": "First answer."}
                ]},
                {"role": "user", "content": PROMPT}
            ]
        })
    };
    let r = env.post("/v1/messages", body(true).to_string());
    assert_eq!(r.status, 200, "{}", r.text());
    let evs = named_events(&r.text());
    let delta = |kind: &str, field: &str| -> String {
        evs.iter()
            .filter(|(n, d)| n == "content_block_delta" && d["delta"]["type"] == kind)
            .map(|(_, d)| d["delta"][field].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(delta("thinking_delta", "thinking"), reasoning);
    assert_eq!(delta("text_delta", "text"), answer);
    let stop = evs
        .iter()
        .find(|(n, _)| n == "message_delta")
        .expect("message_delta");
    assert_eq!(stop.1["delta"]["stop_reason"], "end_turn");
    assert_eq!(evs.last().unwrap().0, "message_stop");
    assert!(evs.iter().all(|(n, _)| n != "error"));

    let r = env.post("/v1/messages", body(false).to_string());
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["content"][0]["type"], "thinking");
    assert_eq!(v["content"][0]["thinking"], reasoning.as_str());
    assert_eq!(v["content"][1]["text"], answer.as_str());
    assert_eq!(v["stop_reason"], "end_turn");
    for b in upstream_bodies(&env) {
        assert_eq!(thinking_fields(&b), vec![json!("Earlier thought.")]);
    }
}

#[test]
fn responses_multi_turn_carries_reasoning_items_and_splits_exactly() {
    let env = env();
    let (reasoning, answer) = expected(PROMPT, "");
    let body = |stream: bool| {
        json!({
            "model": HORIZON, "stream": stream, "instructions": "Be brief.",
            "input": [
                {"type": "message", "role": "user", "content": "First question?"},
                {"type": "reasoning", "id": "rs_1", "summary": [
                    {"type": "summary_text", "text": "Summarised earlier thought."}
                ]},
                {"type": "message", "role": "assistant", "content": [
                    {"type": "output_text", "text": "First answer."}
                ]},
                {"type": "message", "role": "assistant", "content": "A second assistant turn."},
                {"type": "message", "role": "user", "content": PROMPT}
            ]
        })
    };
    let r = env.post("/v1/responses", body(true).to_string());
    assert_eq!(r.status, 200, "{}", r.text());
    let evs = named_events(&r.text());
    let deltas = |name: &str| -> String {
        evs.iter()
            .filter(|(n, _)| n == name)
            .map(|(_, d)| d["delta"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(deltas("response.reasoning_text.delta"), reasoning);
    assert_eq!(deltas("response.output_text.delta"), answer);
    assert_eq!(evs.last().unwrap().0, "response.completed");

    let r = env.post("/v1/responses", body(false).to_string());
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["status"], "completed");
    let out = v["output"].as_array().unwrap();
    assert_eq!(out[0]["content"][0]["text"], reasoning.as_str());
    assert_eq!(out[1]["content"][0]["text"], answer.as_str());
    for b in upstream_bodies(&env) {
        assert_eq!(
            thinking_fields(&b),
            vec![json!("Summarised earlier thought."), json!("")],
            "each assistant message has its own thinking field, never null"
        );
    }
}

#[test]
fn effort_reaches_the_upstream_from_every_surface() {
    let env = env();
    let effort_of = |b: &Value| {
        b.pointer("/extra_body/chat_template_kwargs/reasoning_effort")
            .cloned()
            .unwrap_or(Value::Null)
    };
    let user = json!([{"role": "user", "content": "hi"}]);
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "/v1/chat/completions",
            json!({"model": HORIZON, "messages": user}),
            "medium",
        ),
        (
            "/v1/chat/completions",
            json!({"model": HORIZON, "messages": user, "reasoning_effort": "minimal"}),
            "low",
        ),
        (
            "/v1/chat/completions",
            json!({"model": HORIZON, "messages": user, "reasoning_effort": "high"}),
            "high",
        ),
        (
            "/v1/responses",
            json!({"model": HORIZON, "input": "hi", "reasoning": {"effort": "low", "summary": "auto"}}),
            "low",
        ),
        (
            "/v1/messages",
            json!({"model": HORIZON, "max_tokens": 64, "messages": user,
                   "thinking": {"type": "enabled", "budget_tokens": 2048}}),
            "low",
        ),
        (
            "/v1/messages",
            json!({"model": HORIZON, "max_tokens": 64, "messages": user,
                   "thinking": {"type": "enabled", "budget_tokens": 31999}}),
            "high",
        ),
        (
            "/v1/messages",
            json!({"model": HORIZON, "max_tokens": 64, "messages": user,
                   "thinking": {"type": "adaptive"}, "output_config": {"effort": "medium"}}),
            "medium",
        ),
    ];
    for (path, body, want) in &cases {
        env.mock().clear_requests();
        let r = env.post(path, body.to_string());
        assert_eq!(r.status, 200, "{path} {body}: {}", r.text());
        let b = &upstream_bodies(&env)[0];
        assert_eq!(effort_of(b), json!(want), "{path} {body}");
        assert!(b.get("chat_template_kwargs").is_none());
    }
    // A bad effort is the client's mistake, named in the surface's own shape.
    let r = env.chat(&json!({"model": HORIZON, "messages": user, "reasoning_effort": "extreme"}));
    r.assert_error(400, "invalid_request");
    assert_eq!(r.json()["error"]["param"], "reasoning_effort");
    drop(env);

    // Top-level placement, no default: only what the client asks for goes up.
    let env = env_with(|c| {
        c.reasoning.effort_placement = k2proxy::config::EffortPlacement::TopLevel;
        c.reasoning.effort = None;
    });
    assert_eq!(
        env.chat(&json!({"model": HORIZON, "messages": user}))
            .status,
        200
    );
    let r = env.chat(&json!({"model": HORIZON, "messages": user, "reasoning_effort": "low"}));
    assert_eq!(r.status, 200);
    let b = upstream_bodies(&env);
    assert!(b[0].get("chat_template_kwargs").is_none() && b[0].get("extra_body").is_none());
    assert_eq!(b[1]["chat_template_kwargs"]["reasoning_effort"], "low");
    assert!(b[1].get("extra_body").is_none());
}

#[test]
fn lower_efforts_close_their_reasoning_with_their_own_tag() {
    let env = env();
    for (effort, form) in [
        ("low", "v2"),
        ("medium", "v2-noopen"),
        ("high", "v2-answer"),
    ] {
        let prompt = format!("effort {effort} [[mock: form={form}]]");
        let (reasoning, answer) = expected(&prompt, "");
        let mut body = common::chat_body(HORIZON, &prompt, true);
        body["reasoning_effort"] = json!(effort);
        let s = env.stream(&body);
        s.assert_well_formed();
        assert_eq!(
            (s.reasoning(), s.content()),
            (reasoning, answer),
            "{effort}"
        );
    }
}

#[test]
fn images_to_a_text_only_model_get_a_400_naming_it() {
    let env = env();
    let image =
        json!({"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}});
    let r = env.chat(&json!({"model": HORIZON, "messages": [
        {"role": "user", "content": [{"type": "text", "text": "what is this?"}, image]}
    ]}));
    let v = r.assert_error(400, "model_does_not_support_images");
    assert_eq!(v["error"]["param"], "messages[0].content[1]");
    assert!(
        v["error"]["message"].as_str().unwrap().contains(HORIZON),
        "{v}"
    );
    let r = env.post(
        "/v1/messages",
        json!({"model": "K2-Horizon", "max_tokens": 64, "messages": [{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
        ]}]})
        .to_string(),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    let v = r.json();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("K2-Horizon"));
    assert!(env.requests().is_empty(), "nothing went upstream");
}

#[test]
fn models_list_horizon_and_the_old_ids_still_answer() {
    let env = env();
    let v = env.get("/v1/models").json();
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["IFM/K2-Horizon", "IFM/K2-Horizon-nothink"]);
    // The K2-Think ids of existing clients are aliases of the default models.
    let s = env.stream(&common::chat_body("MBZUAI-IFM/K2-Think-v2", "old id", true));
    let (reasoning, answer) = expected("old id", "");
    assert_eq!((s.reasoning(), s.content()), (reasoning, answer.clone()));
    let s = env.stream(&common::chat_body(
        "MBZUAI-IFM/K2-Think-v2-nothink",
        "old id",
        true,
    ));
    assert_eq!((s.reasoning(), s.content()), (String::new(), answer));
    for r in env.requests() {
        assert_eq!(r.json.unwrap()["model"], "IFM/K2-Horizon-375B-A23B");
    }
}

#[test]
fn an_upstream_400_is_final_strikes_no_token_and_says_why() {
    // A thinking-field violation (`thinking_field: ""` sends none): the upstream's 400.
    let env = env_with(|c| {
        c.upstream.thinking_field = String::new();
        c.pool.tokens = tokens(&["t1", "t2"]);
    });
    for stream in [true, false] {
        let r = env.chat(&chat_history(stream, false));
        let v = r.assert_error(400, "upstream_rejected_request");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(
            msg.contains("Add a supported thinking field to each assistant message"),
            "{msg}"
        );
        assert_eq!(v["error"]["type"], "invalid_request_error");
    }
    assert_eq!(env.requests().len(), 2, "never retried");
    let stats = env.get("/admin/tokens/stats").json();
    let toks = stats["data"]["tokens"].as_array().unwrap();
    assert!(
        toks.iter()
            .all(|t| t["strikes"] == 0 && t["state"] == "active"),
        "{stats}"
    );
    // The same on the Messages surface, in Anthropic's shape.
    let r = env.post(
        "/v1/messages",
        json!({"model": HORIZON, "max_tokens": 64, "messages": [
            {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
            {"role": "user", "content": "c"}
        ]})
        .to_string(),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"]["type"], "invalid_request_error");
}

#[test]
fn a_detail_event_is_retried_before_the_answer_and_an_honest_error_after() {
    // Before the client saw a byte: another attempt (here, with another token).
    let env = env_with(|c| {
        c.pool.tokens = tokens(&["d1;fault=detail;cut_after=1", "d2"]);
    });
    let s = env.stream(&common::chat_body(HORIZON, "retry me", true));
    s.assert_well_formed();
    assert_eq!(s.content(), expected("retry me", "").1);
    assert_eq!(env.requests().len(), 2);
    drop(env);
    // After the answer started: the stream ends with the error, never `[DONE]`.
    let env = env_with(|c| {
        c.pool.tokens = tokens(&["d3;fault=detail;cut_after=6;chunk=4"]);
    });
    let r = env.chat(&common::chat_body(HORIZON, "a long enough prompt", true));
    assert_eq!(r.status, 200);
    let s = Sse::parse(&r.text());
    assert!(!s.done, "{}", s.raw);
    assert_eq!(s.finish_reason().as_deref(), Some("error"));
    let e = s.error().expect("an error event");
    assert_eq!(e["error"]["message"], DETAIL_EVENT);
}

#[test]
fn the_old_host_guest_path_answers_400_and_the_client_is_told() {
    let env = Env::start(
        MockConfig {
            legacy_guest_400: true,
            ..MockConfig::default()
        },
        |_| {},
    );
    let r: Resp = env.chat(&common::chat_body(common::MODEL, "hello", true));
    let v = r.assert_error(400, "upstream_rejected_request");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .ends_with("Model not found"),
        "{v}"
    );
    assert_eq!(env.requests().len(), 1, "a 400 is not retried");
}
