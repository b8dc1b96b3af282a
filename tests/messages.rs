//! `POST /v1/messages` (Anthropic Messages) end to end: the real proxy in front of the mock
//! K2Think upstream, on the same core as chat completions. The event grammar checked here is
//! the one in Anthropic's streaming reference: `message_start`, then per block
//! `content_block_start`, `content_block_delta`…, `content_block_stop`, then
//! `message_delta` (with `stop_reason` and usage) and `message_stop`; `ping` anywhere.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use base64::Engine;
use common::{expected, tokens, Env, MODEL, NOTHINK};
use k2proxy::mock::MockConfig;
use serde_json::{json, Value};

const KEY: &str = "sk-messages-test-key";

fn env() -> Env {
    Env::start(MockConfig::default(), |c| {
        c.auth.api_keys = vec![k2proxy::config::ApiKeyEntry {
            name: "claude".into(),
            key: KEY.into(),
        }];
    })
}

fn post(env: &Env, path: &str, body: &Value) -> common::Resp {
    env.send(
        env.client
            .post(env.url(path))
            .header("x-api-key", KEY)
            .header("anthropic-version", "2023-06-01")
            .json(body),
    )
}

fn weather_tool() -> Value {
    json!([{
        "name": "get_weather",
        "description": "Current weather for a city",
        "input_schema": {"type": "object", "properties": {
            "city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}
        }, "required": ["city"]}
    }])
}

fn calling(prompt: &str, args: Value) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(args.to_string());
    format!("{prompt} [[mock: tool_call=get_weather; tool_args={b64}]]")
}

/// One Anthropic SSE event.
#[derive(Debug)]
struct Event {
    name: String,
    data: Value,
}

/// What a client assembles from the events; panics where the grammar is broken.
#[derive(Debug, Default)]
struct Message {
    id: String,
    thinking: String,
    text: String,
    tool_uses: Vec<(String, String, Value)>,
    block_types: Vec<String>,
    stop_reason: Option<String>,
    output_tokens: Option<u64>,
    input_tokens: Option<u64>,
    error: Option<Value>,
    stopped: bool,
}

fn events(raw: &str) -> Vec<Event> {
    raw.split("\n\n")
        .filter(|b| !b.trim().is_empty())
        .map(|block| {
            let mut name = None;
            let mut data = String::new();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event: ") {
                    name = Some(v.to_string());
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data.push_str(v);
                } else {
                    panic!("unexpected line {line:?} in {block:?}");
                }
            }
            let data: Value = serde_json::from_str(&data).expect("event data is JSON");
            let name = name.expect("every event is named");
            assert_eq!(data["type"], name.as_str(), "type matches the event name");
            Event { name, data }
        })
        .collect()
}

fn assemble(raw: &str) -> Message {
    let evs = events(raw);
    let mut m = Message::default();
    let mut open: Option<(u64, String)> = None;
    let mut partial_json = String::new();
    let mut started = false;
    for e in evs {
        assert!(!m.stopped, "nothing after message_stop");
        assert!(m.error.is_none(), "nothing after an error");
        match e.name.as_str() {
            "ping" => {}
            "message_start" => {
                assert!(!started, "one message_start");
                started = true;
                let msg = &e.data["message"];
                assert_eq!(msg["type"], "message");
                assert_eq!(msg["role"], "assistant");
                assert_eq!(msg["content"], json!([]));
                m.id = msg["id"].as_str().unwrap().to_string();
                assert!(m.id.starts_with("msg_"), "{}", m.id);
                assert!(msg["usage"]["input_tokens"].as_u64().is_some());
            }
            "content_block_start" => {
                assert!(started && open.is_none(), "blocks do not overlap");
                let index = e.data["index"].as_u64().unwrap();
                assert_eq!(index, m.block_types.len() as u64, "indexes count up from 0");
                let block = &e.data["content_block"];
                let kind = block["type"].as_str().unwrap().to_string();
                if kind == "tool_use" {
                    m.tool_uses.push((
                        block["id"].as_str().unwrap().to_string(),
                        block["name"].as_str().unwrap().to_string(),
                        Value::Null,
                    ));
                    partial_json.clear();
                }
                m.block_types.push(kind.clone());
                open = Some((index, kind));
            }
            "content_block_delta" => {
                let (index, kind) = open.clone().expect("a delta inside a block");
                assert_eq!(e.data["index"], index);
                let d = &e.data["delta"];
                match (kind.as_str(), d["type"].as_str().unwrap()) {
                    ("thinking", "thinking_delta") => {
                        m.thinking.push_str(d["thinking"].as_str().unwrap())
                    }
                    ("thinking", "signature_delta") => {}
                    ("text", "text_delta") => m.text.push_str(d["text"].as_str().unwrap()),
                    ("tool_use", "input_json_delta") => {
                        partial_json.push_str(d["partial_json"].as_str().unwrap())
                    }
                    other => panic!("delta {other:?} in a {kind} block"),
                }
            }
            "content_block_stop" => {
                let (index, kind) = open.take().expect("a stop closes a block");
                assert_eq!(e.data["index"], index);
                if kind == "tool_use" {
                    let input: Value = serde_json::from_str(&partial_json).unwrap();
                    m.tool_uses.last_mut().unwrap().2 = input;
                }
            }
            "message_delta" => {
                assert!(open.is_none(), "every block closed before message_delta");
                m.stop_reason = e.data["delta"]["stop_reason"].as_str().map(str::to_string);
                m.output_tokens = e.data["usage"]["output_tokens"].as_u64();
                m.input_tokens = e.data["usage"]["input_tokens"].as_u64();
            }
            "message_stop" => {
                assert!(m.stop_reason.is_some(), "message_delta before message_stop");
                m.stopped = true;
            }
            "error" => m.error = Some(e.data["error"].clone()),
            other => panic!("unknown event {other}"),
        }
    }
    m
}

fn stream(env: &Env, body: &Value) -> Message {
    let r = post(env, "/v1/messages", body);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("text/event-stream"));
    assemble(&r.text())
}

fn assert_anthropic_error(r: &common::Resp, status: u16, kind: &str) -> Value {
    assert_eq!(r.status, status, "{}", r.text());
    let v = r.json();
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["error"]["type"], kind, "{v}");
    assert!(v["error"]["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
    v
}

#[test]
fn a_streamed_message_has_thinking_then_text_and_ends_cleanly() {
    let env = env();
    let m = stream(
        &env,
        &json!({"model": MODEL, "max_tokens": 1024, "stream": true,
                "thinking": {"type": "enabled", "budget_tokens": 2048},
                "system": "You are terse.",
                "messages": [{"role": "user", "content": "hello claude"}]}),
    );
    let (reasoning, answer) = expected("hello claude", "");
    assert_eq!(m.block_types, ["thinking", "text"]);
    assert_eq!(m.thinking, reasoning);
    assert_eq!(m.text, answer);
    assert_eq!(m.stop_reason.as_deref(), Some("end_turn"));
    assert!(m.output_tokens.unwrap() > 0);
    assert!(m.stopped && m.error.is_none());
    // the system prompt went upstream as the system message
    let up = env.requests()[0].json.clone().unwrap();
    assert_eq!(up["messages"][0]["role"], "system");
    assert_eq!(up["messages"][0]["content"], "You are terse.");
}

#[test]
fn a_non_stream_message_has_the_same_content() {
    let env = env();
    let r = post(
        &env,
        "/v1/messages",
        &json!({"model": MODEL, "max_tokens": 1024, "thinking": {"type": "adaptive"},
        "system": [{"type": "text", "text": "Be brief."}],
        "messages": [
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": [{"type": "text", "text": "ok"}]},
            {"role": "user", "content": [{"type": "text", "text": "second turn"}]}
        ]}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let (reasoning, answer) = expected("second turn", "");
    assert_eq!(v["type"], "message");
    assert_eq!(v["role"], "assistant");
    assert_eq!(v["model"], MODEL);
    assert!(v["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(v["content"][0]["type"], "thinking");
    assert_eq!(v["content"][0]["thinking"], reasoning.as_str());
    assert_eq!(v["content"][1], json!({"type": "text", "text": answer}));
    assert_eq!(v["stop_reason"], "end_turn");
    assert!(v["usage"]["input_tokens"].as_u64().unwrap() > 0);
    assert!(v["usage"]["output_tokens"].as_u64().unwrap() > 0);
    let up = env.requests()[0].json.clone().unwrap();
    let roles: Vec<&str> = up["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["system", "user", "assistant", "user"]);
}

#[test]
fn nothink_models_have_no_thinking_block() {
    let env = env();
    let body = json!({"model": NOTHINK, "max_tokens": 100, "messages": [{"role": "user", "content": "quiet"}]});
    let v = post(&env, "/v1/messages", &body).json();
    assert_eq!(v["content"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["content"][0]["type"], "text");
    let mut b = body.clone();
    b["stream"] = json!(true);
    let m = stream(&env, &b);
    assert_eq!(m.block_types, ["text"]);
}

#[test]
fn tools_round_trip_through_the_emulation() {
    let env = env();
    let ask = calling("weather in Paris?", json!({"city": "Paris", "unit": "c"}));
    // streamed: a tool_use block with the parsed input, stop_reason tool_use
    let m = stream(
        &env,
        &json!({"model": MODEL, "max_tokens": 500, "stream": true, "tools": weather_tool(),
                "messages": [{"role": "user", "content": ask}]}),
    );
    assert_eq!(m.stop_reason.as_deref(), Some("tool_use"));
    assert_eq!(m.tool_uses.len(), 1, "{m:?}");
    let (id, name, input) = &m.tool_uses[0];
    assert_eq!(name, "get_weather");
    assert_eq!(input, &json!({"city": "Paris", "unit": "c"}));
    // the tool prompt went upstream in the system message
    let up = env.requests()[0].json.clone().unwrap();
    assert!(up["messages"][0]["content"]
        .as_str()
        .unwrap()
        .contains("get_weather"));

    // non-stream, tool_choice any
    let v = post(
        &env,
        "/v1/messages",
        &json!({"model": MODEL, "max_tokens": 500, "tools": weather_tool(),
                "tool_choice": {"type": "any"},
                "messages": [{"role": "user", "content": ask}]}),
    )
    .json();
    assert_eq!(v["stop_reason"], "tool_use", "{v}");
    let block = v["content"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["type"] == "tool_use")
        .expect("a tool_use block");
    assert_eq!(block["input"], json!({"city": "Paris", "unit": "c"}));

    // the result goes back: assistant tool_use + user tool_result
    let r = post(
        &env,
        "/v1/messages",
        &json!({"model": MODEL, "max_tokens": 500, "tools": weather_tool(),
        "messages": [
            {"role": "user", "content": "weather in Paris?"},
            {"role": "assistant", "content": [
                {"type": "text", "text": "Let me check."},
                {"type": "tool_use", "id": id, "name": "get_weather", "input": {"city": "Paris"}}
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": id, "content": "21 degrees and sunny"}
            ]}
        ]}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let up = env.requests().last().unwrap().json.clone().unwrap();
    let text = up["messages"].to_string();
    assert!(text.contains("21 degrees and sunny"), "{text}");
    assert!(text.contains("get_weather"), "{text}");
}

#[test]
fn images_are_carried_through() {
    let env = env();
    let png = base64::engine::general_purpose::STANDARD.encode(b"\x89PNG\r\n\x1a\nfake");
    let r = post(
        &env,
        "/v1/messages",
        &json!({"model": MODEL, "max_tokens": 100, "messages": [{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": png}},
            {"type": "text", "text": "what is this"}
        ]}]}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let up = env.requests()[0].json.clone().unwrap();
    let parts = up["messages"][0]["content"].as_array().unwrap().clone();
    assert!(parts.iter().any(|p| p["type"] == "image_url"
        && p["image_url"]["url"]
            .as_str()
            .unwrap()
            .starts_with("data:image/png;base64,")));
}

#[test]
fn errors_are_anthropic_shaped() {
    let env = env();
    // no max_tokens
    let r = post(
        &env,
        "/v1/messages",
        &json!({"model": MODEL, "messages": [{"role": "user", "content": "x"}]}),
    );
    assert_anthropic_error(&r, 400, "invalid_request_error");
    // a wrong key, and none
    let r = env.send(
        env.client
            .post(env.url("/v1/messages"))
            .header("x-api-key", "sk-wrong")
            .json(&json!({})),
    );
    assert_anthropic_error(&r, 401, "authentication_error");
    // Bearer works as well as x-api-key
    let r = env.send(
        env.client
            .post(env.url("/v1/messages"))
            .bearer_auth(KEY)
            .json(&json!({"model": MODEL, "max_tokens": 10, "messages": [{"role": "user", "content": "x"}]})),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    // unknown model
    let r = post(
        &env,
        "/v1/messages",
        &json!({"model": "llama-nope", "max_tokens": 10, "messages": [{"role": "user", "content": "x"}]}),
    );
    assert_anthropic_error(&r, 404, "not_found_error");
    // wrong method
    let r = env.send(
        env.client
            .get(env.url("/v1/messages"))
            .header("x-api-key", KEY),
    );
    assert_anthropic_error(&r, 405, "invalid_request_error");
    assert!(
        env.requests().len() == 1,
        "only the good request went upstream"
    );
}

#[test]
fn lax_fields_and_later_checks_name_the_clients_field() {
    let env = Env::start(MockConfig::default(), |c| {
        c.auth.api_keys = vec![k2proxy::config::ApiKeyEntry {
            name: "claude".into(),
            key: KEY.into(),
        }];
        c.limits.max_messages = 6;
        for m in &mut c.models {
            m.images = false;
        }
    });
    let x = json!([{"role": "user", "content": "x"}]);
    let shot = |extra: Value| {
        json!([
            {"role": "user", "content": "go"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "shot", "input": {}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "t", "content": [
                    {"type": "text", "text": "here"}, extra
                ]},
                {"type": "text", "text": "what is it?"}
            ]}
        ])
    };
    let image = json!({"type": "image", "source": {"type": "url", "url": "https://x.test/s.png"}});
    let text = json!({"type": "text", "text": "fine"});
    let weather = weather_tool()[0].clone();
    let cases = [
        // Issue 16: `thinking: 7` got a 200 next to an `output_config.effort`.
        (
            json!({"thinking": 7, "output_config": {"effort": "high"}, "messages": x}),
            "thinking",
        ),
        (
            json!({"thinking": {"type": "sometimes"}, "messages": x}),
            "thinking.type",
        ),
        (
            json!({"metadata": {"user_id": 5}, "messages": x}),
            "metadata.user_id",
        ),
        // Checks after the conversion name the client's block, not the converted message
        // (the system prompt and the tool result are messages of their own there).
        (
            json!({"system": "be brief", "messages": shot(image)}),
            "messages[2].content[0].content[1]",
        ),
        (
            json!({"system": "be brief", "messages": [{"role": "user", "content": [
                {"type": "text", "text": "read"},
                {"type": "document", "title": "a.pdf", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0x"}}
            ]}]}),
            "messages[0].content[1]",
        ),
        (
            json!({"tools": [weather.clone(), weather], "messages": shot(text)}),
            "tools[1].name",
        ),
        (
            json!({"tools": weather_tool(), "tool_choice": {"type": "tool", "name": "nope"}, "messages": x}),
            "tool_choice.name",
        ),
        (
            json!({"messages": [x[0], x[0], x[0], x[0], x[0], x[0], x[0]]}),
            "messages",
        ),
    ];
    for (mut body, field) in cases {
        body["model"] = json!(MODEL);
        body["max_tokens"] = json!(10);
        let r = post(&env, "/v1/messages", &body);
        let v = assert_anthropic_error(&r, 400, "invalid_request_error");
        let message = v["error"]["message"].as_str().unwrap_or_default();
        assert!(message.starts_with(&format!("{field}:")), "{body}: {v}");
    }
    assert!(env.requests().is_empty(), "nothing went upstream");
}

#[test]
fn upstream_failures_are_anthropic_shaped_and_never_look_finished() {
    let env = Env::start(MockConfig::default(), |c| {
        c.pool.tokens = tokens(&["e1;fault=500", "e2;fault=500"]);
    });
    let body =
        json!({"model": MODEL, "max_tokens": 10, "messages": [{"role": "user", "content": "x"}]});
    let r = env.send(env.client.post(env.url("/v1/messages")).json(&body));
    assert_anthropic_error(&r, 502, "api_error");
    drop(env);

    let env = Env::start(MockConfig::default(), |c| {
        c.pool.tokens = tokens(&["cut;fault=cut;cut_after=4"]);
    });
    let r = env.send(env.client.post(env.url("/v1/messages")).json(&json!({
        "model": MODEL, "max_tokens": 10, "stream": true,
        "messages": [{"role": "user", "content": "cut [[mock: reasoning_words=30]]"}]
    })));
    assert_eq!(r.status, 200);
    let m = assemble(&r.text());
    assert!(m.error.is_some(), "an error event: {}", r.text());
    assert!(!m.stopped, "no message_stop after a failure");
    assert!(m.stop_reason.is_none());
}

#[test]
fn count_tokens_estimates_what_goes_upstream() {
    let env = env();
    let count = |body: Value| -> u64 {
        let r = post(&env, "/v1/messages/count_tokens", &body);
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["input_tokens"].as_u64().unwrap()
    };
    let short = count(json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}));
    let long = count(
        json!({"model": MODEL, "messages": [{"role": "user", "content": "word ".repeat(400)}]}),
    );
    let tools = count(
        json!({"model": MODEL, "tools": weather_tool(), "messages": [{"role": "user", "content": "hi"}]}),
    );
    assert!(short > 0 && short < 20, "{short}");
    assert!((400..1000).contains(&long), "~2000 characters: {long}");
    assert!(
        tools > short + 50,
        "the tool instructions count: {tools} vs {short}"
    );
    assert!(
        env.requests().is_empty(),
        "counting never calls the upstream"
    );
}

// ---------------------------------------------------------------------------------------
// The reference fixtures (tests/fixtures/anthropic, from Anthropic's documentation)
// ---------------------------------------------------------------------------------------

fn fixture(name: &str) -> String {
    let path = format!(
        "{}/tests/fixtures/anthropic/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// An event's name with its block or delta type.
fn label(e: &Event) -> String {
    let sub = e.data["content_block"]["type"]
        .as_str()
        .or_else(|| e.data["delta"]["type"].as_str());
    match sub {
        Some(t) => format!("{}:{t}", e.name),
        None => e.name.clone(),
    }
}

/// The labels in order, pings left out and repeats collapsed.
fn grammar(evs: &[Event]) -> Vec<String> {
    let mut g: Vec<String> = evs.iter().filter(|e| e.name != "ping").map(label).collect();
    g.dedup();
    g
}

/// Every field of `reference` is in `ours` with the same JSON type (a null in the
/// reference allows anything; a tool's `input` is the tool's own).
fn assert_shape(reference: &Value, ours: &Value, at: &str) {
    match (reference, ours) {
        (Value::Null, _) => {}
        (Value::Object(r), Value::Object(o)) => {
            if at.ends_with(".input") {
                return;
            }
            for (k, rv) in r {
                let ov = o
                    .get(k)
                    .unwrap_or_else(|| panic!("{at}.{k} is missing: {ours}"));
                assert_shape(rv, ov, &format!("{at}.{k}"));
            }
        }
        (Value::Array(r), Value::Array(o)) => {
            for (i, rv) in r.iter().enumerate() {
                // Blocks are matched by type where they have one.
                let ov = match rv["type"].as_str() {
                    Some(t) => o.iter().find(|x| x["type"] == t),
                    None => o.get(i),
                };
                if let Some(ov) = ov {
                    assert_shape(rv, ov, &format!("{at}[{i}]"));
                }
            }
        }
        (Value::Number(_), Value::Number(_))
        | (Value::String(_), Value::String(_))
        | (Value::Bool(_), Value::Bool(_)) => {}
        _ => panic!("{at}: {ours} is not of the type of {reference}"),
    }
}

/// Our stream has the reference's grammar, and each of our events the shape of the
/// reference event with the same label.
fn assert_stream_like(reference: &str, ours: &str) {
    let (r, o) = (events(reference), events(ours));
    assert_eq!(grammar(&o), grammar(&r), "{ours}");
    for e in o.iter().filter(|e| e.name != "ping") {
        let l = label(e);
        let re = r
            .iter()
            .find(|x| label(x) == l)
            .unwrap_or_else(|| panic!("{l} is not in the reference"));
        assert_shape(&re.data, &e.data, &l);
    }
}

#[test]
fn answers_have_the_grammar_and_shape_of_the_reference_fixtures() {
    let env = env();
    // thinking, then text
    let body = json!({"model": MODEL, "max_tokens": 1024, "stream": true,
        "thinking": {"type": "enabled", "budget_tokens": 10000},
        "messages": [{"role": "user", "content": "What is 27 * 453?"}]});
    let r = post(&env, "/v1/messages", &body);
    assert_eq!(r.status, 200);
    assert_stream_like(&fixture("stream_thinking.sse"), &r.text());
    let v = post(
        &env,
        "/v1/messages",
        &json!({"model": MODEL, "max_tokens": 1024,
        "thinking": {"type": "enabled", "budget_tokens": 10000},
        "messages": [{"role": "user", "content": "What is 27 * 453?"}]}),
    )
    .json();
    let reference: Value = serde_json::from_str(&fixture("message_thinking.json")).unwrap();
    assert_shape(&reference, &v, "message");
    let types: Vec<&str> = v["content"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["thinking", "text"]);

    // text, then a tool call
    let ask = calling(
        "weather in San Francisco?",
        json!({"city": "San Francisco"}),
    );
    let body = json!({"model": NOTHINK, "max_tokens": 1024, "stream": true,
        "tools": weather_tool(), "messages": [{"role": "user", "content": ask}]});
    let r = post(&env, "/v1/messages", &body);
    assert_eq!(r.status, 200);
    assert_stream_like(&fixture("stream_tool_use.sse"), &r.text());
    let v = post(
        &env,
        "/v1/messages",
        &json!({"model": NOTHINK, "max_tokens": 1024,
        "tools": weather_tool(), "messages": [{"role": "user", "content": ask}]}),
    )
    .json();
    let reference: Value = serde_json::from_str(&fixture("message_tool_use.json")).unwrap();
    assert_shape(&reference, &v, "message");
    assert_eq!(v["stop_reason"], "tool_use");
    assert_eq!(v["content"][1]["input"], json!({"city": "San Francisco"}));
}

// ---------------------------------------------------------------------------------------
// Claude Code (issue 17): what it sends today, and what it needs back
// ---------------------------------------------------------------------------------------

/// A Claude Code request from tests/fixtures/clients/claude-code, as captured.
struct Captured {
    name: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Value,
}

fn claude_code_fixtures() -> Vec<Captured> {
    let dir = format!(
        "{}/tests/fixtures/clients/claude-code",
        env!("CARGO_MANIFEST_DIR")
    );
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".json"))
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let text = std::fs::read_to_string(format!("{dir}/{name}")).unwrap();
            let v: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(v["method"], "POST", "{name}");
            let headers = v["headers"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                .collect();
            Captured {
                name: name.trim_end_matches(".json").to_string(),
                path: v["path"].as_str().unwrap().to_string(),
                headers,
                body: v["body"].clone(),
            }
        })
        .collect()
}

/// `body` sent as Claude Code sent it (its path, its headers), with the test's key.
fn replay(env: &Env, c: &Captured, path: &str, body: &Value) -> common::Resp {
    let mut req = env.client.post(env.url(path));
    for (k, v) in &c.headers {
        req = match k.as_str() {
            "x-api-key" => req.header("x-api-key", KEY),
            _ => req.header(k, v),
        };
    }
    env.send(req.body(body.to_string()))
}

/// `toolu_` + 24 letters and digits, as Anthropic's tool_use ids.
fn assert_toolu(id: &str) {
    let tail = id.strip_prefix("toolu_").unwrap_or_else(|| panic!("{id}"));
    assert!(
        tail.len() == 24 && tail.chars().all(|c| c.is_ascii_alphanumeric()),
        "{id}"
    );
}

/// The text of the last `tool_result` block of a request (what the tool printed).
fn last_tool_result(body: &Value) -> Option<String> {
    body["messages"]
        .as_array()?
        .iter()
        .filter_map(|m| m["content"].as_array())
        .flatten()
        .rfind(|b| b["type"] == "tool_result")
        .map(|b| b["content"].as_str().unwrap_or_default().to_string())
}

/// Every request Claude Code sent in the captured sessions is accepted and answered, streamed
/// (the Messages grammar of [`assemble`]) and not, with what Claude Code needs: the tool call
/// the mock makes, `toolu_` ids, thinking blocks only where thinking was asked for (and the
/// model reasons), one `input_tokens` for one prompt.
#[test]
fn claude_code_requests_replay_through_the_proxy_stream_and_not() {
    let env = Env::start(MockConfig::horizon(), |c| {
        c.auth.api_keys = vec![k2proxy::config::ApiKeyEntry {
            name: "claude".into(),
            key: KEY.into(),
        }];
    });
    let fixtures = claude_code_fixtures();
    let names: Vec<&str> = fixtures.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "bash-tool-call",
            "bash-tool-result",
            "haiku-stream",
            "say-hi"
        ]
    );
    for c in &fixtures {
        let name = c.name.as_str();
        assert_eq!(c.body["stream"], true, "{name}: Claude Code streams");
        let haiku = c.body["model"].as_str().unwrap().contains("haiku");
        // The small model maps to the -nothink entry: no thinking whatever was asked.
        let blocks_before: &[&str] = if haiku { &[] } else { &["thinking"] };
        let count = replay(&env, c, "/v1/messages/count_tokens", &c.body);
        assert_eq!(count.status, 200, "{name}: {}", count.text());
        let counted = count.json()["input_tokens"].as_u64().unwrap();

        // Streamed, as sent.
        let before = env.requests().len();
        let r = replay(&env, c, &c.path, &c.body);
        assert_eq!(r.status, 200, "{name}: {}", r.text());
        let m = assemble(&r.text());
        assert!(m.stopped && m.error.is_none(), "{name}: {}", r.text());
        let evs = events(&r.text());
        let start_in = evs[0].data["message"]["usage"]["input_tokens"]
            .as_u64()
            .unwrap();
        assert_eq!(m.input_tokens, Some(start_in), "{name}: message_delta");
        assert_eq!(start_in, counted, "{name}: count_tokens");
        let up = env.requests()[before].json.clone().unwrap();

        // Not streamed.
        let mut body = c.body.clone();
        body["stream"] = json!(false);
        let r = replay(&env, c, &c.path, &body);
        assert_eq!(r.status, 200, "{name}: {}", r.text());
        let v = r.json();
        assert_eq!(v["type"], "message", "{name}: {v}");
        assert_eq!(v["model"], c.body["model"], "{name}");
        assert_eq!(v["usage"]["input_tokens"], start_in, "{name}: {v}");
        let types: Vec<&str> = v["content"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["type"].as_str().unwrap())
            .collect();
        assert_eq!(types, m.block_types, "{name}: the same blocks either way");

        let mut want: Vec<&str> = blocks_before.to_vec();
        match name {
            "bash-tool-call" => {
                want.extend(["text", "tool_use"]);
                assert_eq!(m.stop_reason.as_deref(), Some("tool_use"), "{name}");
                assert_eq!(v["stop_reason"], "tool_use", "{name}");
                let input = json!({"command": "ls", "description": "list files"});
                assert_eq!(m.tool_uses.len(), 1, "{name}: {m:?}");
                let (id, tool, got) = &m.tool_uses[0];
                assert_eq!((tool.as_str(), got), ("Bash", &input), "{name}");
                assert_toolu(id);
                let block = &v["content"][types.len() - 1];
                assert_eq!((&block["name"], &block["input"]), (&json!("Bash"), &input));
                assert_toolu(block["id"].as_str().unwrap());
            }
            _ => {
                want.push("text");
                assert_eq!(m.stop_reason.as_deref(), Some("end_turn"), "{name}");
                assert!(m.tool_uses.is_empty(), "{name}: {m:?}");
                assert!(m.text.starts_with("Echo: "), "{name}: {}", m.text);
                let text = v["content"][types.len() - 1]["text"].as_str().unwrap();
                assert_eq!(text, m.text, "{name}");
            }
        }
        assert_eq!(m.block_types, want, "{name}");
        match name {
            // The mock answers the tool result plainly, echoing what the tool printed.
            "bash-tool-result" => {
                let printed = last_tool_result(&c.body).unwrap();
                assert!(!printed.is_empty());
                assert!(m.text.contains(&printed), "{name}: {}", m.text);
            }
            "say-hi" => assert!(m.text.contains("say hi"), "{name}: {}", m.text),
            "haiku-stream" => assert!(m.text.contains("count to three"), "{}", m.text),
            _ => {}
        }

        // Upstream: every mid-conversation system message where Claude Code put it (after
        // the tool prompt and the top-level system prompt, which come first).
        let sent: Vec<&Value> = c.body["messages"].as_array().unwrap().iter().collect();
        let system_at: Vec<usize> = sent
            .iter()
            .enumerate()
            .filter(|(_, m)| m["role"] == "system")
            .map(|(i, _)| i)
            .collect();
        if name != "haiku-stream" {
            assert!(!system_at.is_empty(), "{name}: Claude Code sent one");
        }
        let ups = up["messages"].as_array().unwrap();
        for i in system_at {
            let text = sent[i]["content"].as_str().unwrap();
            let found = ups
                .iter()
                .position(|u| u["role"] == "system" && u["content"] == text)
                .unwrap_or_else(|| panic!("{name}: messages[{i}] did not go upstream"));
            let users_before_client = sent[..i].iter().filter(|m| m["role"] == "user").count();
            let users_before_up = ups[..found].iter().filter(|u| u["role"] == "user").count();
            assert!(
                users_before_up >= users_before_client && users_before_client > 0,
                "{name}: messages[{i}] stays after the turn it followed"
            );
        }
    }
}

/// Claude Code's mid-conversation `system` messages (beta
/// `mid-conversation-system-2026-04-07`) are accepted and go upstream as system messages
/// where they were; before issue 17 they were a 400 that stopped Claude Code at its first
/// request.
#[test]
fn mid_conversation_system_messages_go_upstream_where_they_were() {
    let env = env();
    for stream in [false, true] {
        let body = json!({"model": MODEL, "max_tokens": 100, "stream": stream,
        "system": [{"type": "text", "text": "top", "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "first", "cache_control": {"type": "ephemeral"}}]},
            {"role": "system", "content": "Available agent types: claude"},
            {"role": "assistant", "content": "ok"},
            {"role": "system", "content": [{"type": "text", "text": "Skills: none"}]},
            {"role": "user", "content": "second"}
        ]});
        let r = post(&env, "/v1/messages?beta=true", &body);
        assert_eq!(r.status, 200, "{}", r.text());
        let text = if stream {
            assemble(&r.text()).text
        } else {
            r.json()["content"][0]["text"].as_str().unwrap().to_string()
        };
        assert_eq!(text, expected("second", "").1);
        let up = env.requests().last().unwrap().json.clone().unwrap();
        let got: Vec<(String, String)> = up["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["role"].as_str().unwrap().to_string(),
                    m["content"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        let want = [
            ("system", "top"),
            ("user", "first"),
            ("system", "Available agent types: claude"),
            ("assistant", "ok"),
            ("system", "Skills: none"),
            ("user", "second"),
        ];
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(r, t)| (r.to_string(), t.to_string()))
            .collect();
        assert_eq!(got, want);
    }
    // What is still refused has Anthropic's type and wording.
    let r = post(
        &env,
        "/v1/messages",
        &json!({"model": MODEL, "max_tokens": 10, "messages": [
            {"role": "user", "content": "x"}, {"role": "tool", "content": "y"}]}),
    );
    let v = assert_anthropic_error(&r, 400, "invalid_request_error");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("messages[1].role: Unexpected role \"tool\". Allowed roles are"),
        "{v}"
    );
    let r = post(
        &env,
        "/v1/messages",
        &json!({"model": MODEL, "messages": [{"role": "user", "content": "x"}]}),
    );
    let v = assert_anthropic_error(&r, 400, "invalid_request_error");
    assert_eq!(v["error"]["message"], "max_tokens: Field required");
}

/// `anthropic.thinking_blocks`: `auto` (the default) shows thinking only when the request
/// turned it on, as Anthropic does; `always` and `never` override the request.
#[test]
fn thinking_blocks_follow_the_request_and_the_config() {
    use k2proxy::config::ThinkingBlocks;
    let ask = |thinking: Option<Value>, stream: bool| {
        let mut b = json!({"model": MODEL, "max_tokens": 100, "stream": stream,
            "messages": [{"role": "user", "content": "ponder"}]});
        if let Some(t) = thinking {
            b["thinking"] = t;
        }
        b
    };
    let kinds = |env: &Env, thinking: Option<Value>| -> (Vec<String>, Vec<String>) {
        let streamed = stream(env, &ask(thinking.clone(), true)).block_types;
        let v = post(env, "/v1/messages", &ask(thinking, false)).json();
        let whole = v["content"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["type"].as_str().unwrap().to_string())
            .collect();
        (streamed, whole)
    };
    let with = vec!["thinking".to_string(), "text".to_string()];
    let without = vec!["text".to_string()];
    let cases = [
        (ThinkingBlocks::Auto, None, &without),
        (
            ThinkingBlocks::Auto,
            Some(json!({"type": "disabled"})),
            &without,
        ),
        (
            ThinkingBlocks::Auto,
            Some(json!({"type": "adaptive"})),
            &with,
        ),
        (
            ThinkingBlocks::Auto,
            Some(json!({"type": "enabled", "budget_tokens": 1024})),
            &with,
        ),
        (ThinkingBlocks::Always, None, &with),
        (
            ThinkingBlocks::Always,
            Some(json!({"type": "disabled"})),
            &with,
        ),
        (
            ThinkingBlocks::Never,
            Some(json!({"type": "adaptive"})),
            &without,
        ),
    ];
    for mode in [
        ThinkingBlocks::Auto,
        ThinkingBlocks::Always,
        ThinkingBlocks::Never,
    ] {
        let env = Env::start(MockConfig::default(), |c| {
            c.anthropic.thinking_blocks = mode;
        });
        for (m, thinking, want) in &cases {
            if *m != mode {
                continue;
            }
            let (streamed, whole) = kinds(&env, thinking.clone());
            assert_eq!(&streamed, *want, "{mode:?} {thinking:?} streamed");
            assert_eq!(&whole, *want, "{mode:?} {thinking:?}");
        }
        // Chat completions are not affected.
        let s = env.stream(&common::chat_body(MODEL, "ponder", true));
        assert!(!s.reasoning().is_empty(), "{mode:?}");
    }
}

/// `input_tokens` is one number for one prompt: `message_start`, the final `message_delta`,
/// the non-stream message and `count_tokens` agree, even when the upstream reports a prompt
/// count of its own (the mock does: the characters of the messages' text / 4, without our
/// per-message overhead, so a smaller number).
#[test]
fn input_tokens_are_one_number_for_one_prompt() {
    let env = env();
    let body = |stream: bool| {
        json!({"model": MODEL, "max_tokens": 100, "stream": stream, "tools": weather_tool(),
            "system": "Be brief. ".repeat(40),
            "messages": [{"role": "user", "content": calling("weather?", json!({"city": "Oslo"}))}]})
    };
    let r = post(&env, "/v1/messages", &body(true));
    assert_eq!(r.status, 200, "{}", r.text());
    let evs = events(&r.text());
    let start = evs[0].data["message"]["usage"]["input_tokens"]
        .as_u64()
        .unwrap();
    let m = assemble(&r.text());
    assert_eq!(m.input_tokens, Some(start));
    assert_toolu(&m.tool_uses[0].0);
    let v = post(&env, "/v1/messages", &body(false)).json();
    assert_eq!(v["usage"]["input_tokens"], start, "{v}");
    assert_toolu(v["content"][1]["id"].as_str().unwrap());
    let mut counted = body(false);
    counted.as_object_mut().unwrap().remove("max_tokens");
    let c = post(&env, "/v1/messages/count_tokens", &counted).json();
    assert_eq!(c["input_tokens"], start, "{c}");
}
