//! Local routes, client authentication and bad input: every rejection is an OpenAI error
//! with the right status, and nothing reaches the upstream.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{chat_body, Env, MODEL, NOTHINK};
use k2proxy::config::ApiKeyEntry;
use k2proxy::mock::MockConfig;
use serde_json::json;

fn keyed() -> Env {
    Env::start(MockConfig::default(), |c| {
        c.auth.api_keys = vec![
            ApiKeyEntry {
                name: "team-a".into(),
                key: "sk-team-a-0123456789".into(),
            },
            ApiKeyEntry {
                name: String::new(),
                key: "sk-other".into(),
            },
        ];
    })
}

#[test]
fn health_and_models() {
    let env = Env::start(MockConfig::default(), |_| {});
    let r = env.get("/health");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["status"], "ok");
    assert_eq!(r.json()["mode"], "guest");

    let v = env.get("/v1/models").json();
    assert_eq!(v["object"], "list");
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [MODEL, NOTHINK]);
    for m in v["data"].as_array().unwrap() {
        assert_eq!(m["object"], "model");
        assert!(m["created"].as_u64().is_some());
        assert_eq!(m["owned_by"], "MBZUAI");
    }

    for path in [
        "/v1/models/MBZUAI-IFM/K2-Think-v2",
        "/v1/models/MBZUAI-IFM%2FK2-Think-v2",
    ] {
        let r = env.get(path);
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.json()["id"], MODEL);
    }
    // an alias resolves, under the name asked for
    assert_eq!(env.get("/v1/models/K2-Think").json()["id"], "K2-Think");
    let r = env.get("/v1/models/llama-3-70b");
    let v = r.assert_error(404, "model_not_found");
    assert!(v["error"]["message"].as_str().unwrap().contains(MODEL));
}

/// Agents probe the base URL (`HEAD /`, `GET /`) and ask for their vendor's default model
/// names; both work without per-client settings, and the patterns stay out of the list.
#[test]
fn the_root_answers_and_vendor_model_names_reach_k2() {
    let env = keyed();
    for method in [reqwest::Method::GET, reqwest::Method::HEAD] {
        let r = env.send(env.client.request(method.clone(), env.url("/")));
        assert_eq!(r.status, 200, "{method}");
        if method == reqwest::Method::GET {
            assert_eq!(r.json()["status"], "ok");
        } else {
            assert!(r.body.is_empty(), "HEAD has no body");
        }
    }
    let key = "Bearer sk-team-a-0123456789";
    for (asked, reasoning) in [
        ("claude-sonnet-4-5-20250929", true),
        ("gpt-5.1-codex", true),
        ("claude-haiku-4-5-20251001", false),
    ] {
        let r = env.send(
            env.client
                .post(env.url("/v1/chat/completions"))
                .header("authorization", key)
                .json(&chat_body(asked, "hi", false)),
        );
        assert_eq!(r.status, 200, "{asked}: {}", r.text());
        let v = r.json();
        assert_eq!(v["model"], asked, "the answer names the model asked for");
        let has_reasoning = v["choices"][0]["message"]["reasoning_content"].is_string();
        assert_eq!(has_reasoning, reasoning, "{asked}: {v}");
    }
    let listed = env.send(
        env.client
            .get(env.url("/v1/models"))
            .header("authorization", key),
    );
    assert!(!listed.text().contains('*'), "{}", listed.text());
}

#[test]
fn api_keys_are_required_when_configured() {
    let env = keyed();
    let body = chat_body(MODEL, "hi", false).to_string();
    let send = |auth: Option<&str>| {
        let mut req = env
            .client
            .post(env.url("/v1/chat/completions"))
            .body(body.clone());
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        env.send(req)
    };
    let r = send(None);
    let v = r.assert_error(401, "invalid_api_key");
    assert!(v["error"]["message"].as_str().unwrap().contains("Missing"));
    send(Some("Bearer sk-wrong")).assert_error(401, "invalid_api_key");
    send(Some("Bearer sk-team-a-012345678")).assert_error(401, "invalid_api_key");
    send(Some("Basic sk-team-a-0123456789")).assert_error(401, "invalid_api_key");
    assert!(
        env.requests().is_empty(),
        "nothing reaches the upstream without a key"
    );
    assert_eq!(send(Some("Bearer sk-team-a-0123456789")).status, 200);
    assert_eq!(send(Some("bearer   sk-other")).status, 200);
    // models need the key too; health does not
    env.send(env.client.get(env.url("/v1/models")))
        .assert_error(401, "invalid_api_key");
    let r = env.send(
        env.client
            .get(env.url("/v1/models"))
            .header("authorization", "Bearer sk-other"),
    );
    assert_eq!(r.status, 200);
    assert_eq!(env.get("/health").status, 200);
    // the key never comes back in an error
    let r = send(Some("Bearer sk-team-a-0123456780"));
    assert!(!r.text().contains("sk-team-a"), "{}", r.text());
}

#[test]
fn no_keys_means_open() {
    let env = Env::start(MockConfig::default(), |_| {});
    assert_eq!(env.chat(&chat_body(MODEL, "open", false)).status, 200);
}

#[test]
fn bad_input_is_a_400_that_names_the_field() {
    let env = Env::start(MockConfig::default(), |_| {});
    let cases: Vec<(String, Option<&str>)> = vec![
        ("{not json".into(), None),
        ("".into(), None),
        ("[]".into(), None),
        (json!({"model": MODEL}).to_string(), Some("messages")),
        (json!({"model": MODEL, "messages": []}).to_string(), Some("messages")),
        (json!({"messages": [{"role": "user", "content": "x"}]}).to_string(), Some("model")),
        (json!({"model": 42, "messages": [{"role": "user", "content": "x"}]}).to_string(), Some("model")),
        (json!({"model": MODEL, "messages": [{"role": "user", "content": {"a": 1}}]}).to_string(), Some("messages[0].content")),
        (json!({"model": MODEL, "messages": [{"role": "user"}, {"role": "robot", "content": "x"}]}).to_string(), Some("messages[1].role")),
        (json!({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "stream": "yes"}).to_string(), Some("stream")),
        (json!({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": -1}).to_string(), Some("max_tokens")),
        (json!({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "temperature": 9}).to_string(), Some("temperature")),
        (json!({"model": MODEL, "messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]}).to_string(), Some("messages[0].content[0].type")),
    ];
    for (body, param) in cases {
        let r = env.post("/v1/chat/completions", body.clone());
        let v = r.assert_error(
            400,
            if param == Some("messages[0].content[0].type") {
                "unsupported_content_type"
            } else {
                "invalid_request"
            },
        );
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["param"].as_str(), param, "body {body}: {v}");
    }
    assert!(env.requests().is_empty());
    // the server is still fine
    assert_eq!(env.get("/health").status, 200);
}

#[test]
fn lax_fields_are_a_400_that_names_the_field() {
    // Issue 16: each of these used to get a 200.
    let env = Env::start(MockConfig::default(), |_| {});
    let x = json!([{"role": "user", "content": "x"}]);
    let cases = [
        (
            json!({"model": MODEL, "messages": x, "tool_choice": 7}),
            "tool_choice",
        ),
        (
            json!({"model": MODEL, "messages": x, "tool_choice": "sometimes"}),
            "tool_choice",
        ),
        (
            json!({"model": MODEL, "messages": x, "response_format": 3}),
            "response_format",
        ),
        (
            json!({"model": MODEL, "messages": x, "response_format": {"type": "yaml"}}),
            "response_format.type",
        ),
        (json!({"model": MODEL, "messages": x, "user": {}}), "user"),
        (
            json!({"model": MODEL, "messages": x, "metadata": {"a": 1}}),
            "metadata.a",
        ),
        (
            json!({"model": MODEL, "messages": [{"role": "user"}]}),
            "messages[0].content",
        ),
        (
            json!({"model": MODEL, "messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": null}]}),
            "messages[1].content",
        ),
    ];
    for (body, param) in cases {
        let v = env.chat(&body).assert_error(400, "invalid_request");
        assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
        assert_eq!(v["error"]["param"], param, "{body}: {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with(param)),
            "{v}"
        );
    }
    assert!(env.requests().is_empty(), "nothing went upstream");
    // An assistant turn that only calls tools needs no content.
    let ok = json!({"model": MODEL, "messages": [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "w", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c", "content": "sun"}
    ], "user": "u", "metadata": {"a": "b"}, "response_format": {"type": "text"}, "tool_choice": "auto"});
    assert_eq!(env.chat(&ok).status, 200);
}

#[test]
fn wrong_method_and_unknown_path() {
    let env = Env::start(MockConfig::default(), |_| {});
    let r = env.get("/v1/chat/completions");
    r.assert_error(405, "method_not_allowed");
    assert_eq!(r.header("allow").as_deref(), Some("POST"));
    let r = env.post("/v1/models", "{}");
    r.assert_error(405, "method_not_allowed");
    assert_eq!(r.header("allow").as_deref(), Some("GET"));
    env.get("/v2/anything").assert_error(404, "not_found");
    env.post("/api/chat/completions", "{}")
        .assert_error(404, "not_found");
}

#[test]
fn oversized_bodies_are_refused_with_413() {
    let env = Env::start(MockConfig::default(), |c| {
        c.limits.max_body_bytes = k2proxy::config::ByteSize(64 * 1024);
    });
    // Declared length over the limit: answered without reading the body. The raw socket
    // sends only the head; the answer must come anyway.
    let mut s = TcpStream::connect(env.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        50 * 1024 * 1024
    )
    .unwrap();
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let text = String::from_utf8_lossy(&resp);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(text.contains("request_too_large"), "{text}");

    // a chunked body (no Content-Length) that grows past the limit
    let big =
        json!({"model": MODEL, "messages": [{"role": "user", "content": "y".repeat(100 * 1024)}]})
            .to_string();
    let text = raw_chunked(&env, big.as_bytes());
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(text.contains("request_too_large"), "{text}");
    // just under the limit is fine
    let ok =
        json!({"model": MODEL, "messages": [{"role": "user", "content": "z".repeat(60 * 1024)}]})
            .to_string();
    assert_eq!(env.post("/v1/chat/completions", ok).status, 200);
    assert_eq!(env.requests().len(), 1);
}

/// POST a body with `Transfer-Encoding: chunked` over a raw socket; the response text.
fn raw_chunked(env: &Env, body: &[u8]) -> String {
    let mut s = TcpStream::connect(env.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let head = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
    let _ = s.write_all(head.as_bytes());
    for c in body.chunks(16 * 1024) {
        // the proxy may answer and close before everything is written
        if s.write_all(format!("{:x}\r\n", c.len()).as_bytes())
            .is_err()
            || s.write_all(c).is_err()
            || s.write_all(b"\r\n").is_err()
        {
            break;
        }
    }
    let _ = s.write_all(b"0\r\n\r\n");
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    String::from_utf8_lossy(&resp).into_owned()
}

#[test]
fn request_id_is_taken_or_generated_and_returned() {
    let env = Env::start(MockConfig::default(), |_| {});
    let r = env.send(
        env.client
            .get(env.url("/health"))
            .header("x-request-id", "client-id-42"),
    );
    assert_eq!(r.header("x-request-id").as_deref(), Some("client-id-42"));
    let r = env.send(
        env.client
            .get(env.url("/health"))
            .header("x-request-id", "bad id with spaces"),
    );
    assert!(r.header("x-request-id").unwrap().starts_with("req_"));
    let s = env.chat(&chat_body(MODEL, "id", true));
    assert!(s.header("x-request-id").unwrap().starts_with("req_"));
}

#[test]
fn h2c_clients_are_served() {
    let env = Env::start(MockConfig::default(), |_| {});
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = env.send(
        client
            .post(env.url("/v1/chat/completions"))
            .body(chat_body(MODEL, "over h2", true).to_string()),
    );
    assert_eq!(r.status, 200);
    let s = common::Sse::parse(&r.text());
    s.assert_well_formed();
    assert!(s.content().contains("over h2"));
}
