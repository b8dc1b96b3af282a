//! Codex CLI's own requests, replayed (issue 17). The bodies Codex CLI 0.171.0 sent with its
//! default settings and a `model_providers` entry (`wire_api = "responses"`), captured from
//! the real CLI (`tests/fixtures/clients/codex/README.md`), go through the proxy to the
//! mock upstream, streamed (as Codex asks) and not; every answer is checked with the
//! Responses grammar (`tests/common/grammar.rs`) and for what Codex reads from it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use async_openai::types::responses::Response;
use common::grammar::{assemble, Assembled};
use common::Env;
use k2proxy::mock::MockConfig;
use serde_json::{json, Value};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/clients/codex");

fn fixture(name: &str) -> Value {
    let path = format!("{FIXTURES}/{name}.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The proxy with its default catalogue: Codex's model names (`gpt-6.2-sol`, `gpt-5.5`, …)
/// reach K2 Horizon through the `gpt-*` alias.
fn env() -> Env {
    Env::start(MockConfig::horizon(), |_| {})
}

/// One answer to `body`, both ways: the streamed one assembled (it must complete), and the
/// non-stream `response` object (it must parse as the SDK's `Response`). Returns the
/// assembled stream and the non-stream output items.
fn replay(env: &Env, body: &Value) -> (Assembled, Vec<Value>) {
    assert_eq!(body["stream"], true, "Codex streams");
    let r = env.send(env.client.post(env.url("/v1/responses")).json(body));
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r
        .header("content-type")
        .is_some_and(|t| t.starts_with("text/event-stream")));
    let a = assemble(&r.text());
    let (end, response) = a.end.clone().expect("a terminal event");
    assert_eq!(end, "response.completed", "{response}");
    assert_eq!(response["model"], body["model"], "the client's model name");

    let mut whole = body.clone();
    whole["stream"] = json!(false);
    let r = env.send(env.client.post(env.url("/v1/responses")).json(&whole));
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    serde_json::from_value::<Response>(v.clone())
        .unwrap_or_else(|e| panic!("the SDK reads the response: {e}: {v}"));
    assert_eq!(v["status"], "completed", "{v}");
    let output = v["output"].as_array().expect("output").clone();
    let types = |items: &[Value]| -> Vec<String> {
        items
            .iter()
            .map(|i| i["type"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    assert_eq!(
        types(&output),
        types(&a.done_items),
        "streamed and not, the same items"
    );
    (a, output)
}

fn of_type<'a>(items: &'a [Value], kind: &str) -> Vec<&'a Value> {
    items.iter().filter(|i| i["type"] == kind).collect()
}

/// The text of the upstream request's system message (the tool prompt is in it).
fn upstream_system(env: &Env) -> String {
    let up = env.requests().last().and_then(|r| r.json.clone()).unwrap();
    up["messages"][0]["content"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn dropped(env: &Env, kind: &str) -> u64 {
    let text = String::from_utf8(env.app.metrics().render()).unwrap();
    let prefix = format!("k2proxy_hosted_tools_dropped_total{{type=\"{kind}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |n| n.trim().parse().unwrap())
}

/// `codex exec "say hi"` with the default model (`gpt-6.2-sol`): "Responses lite", its
/// tools (namespaces, the code-mode `exec` custom tool) in an `additional_tools` item.
#[test]
fn a_plain_prompt() {
    let body = fixture("plain");
    assert!(body.get("tools").is_none() && body["input"][0]["type"] == "additional_tools");
    let env = env();
    let (a, output) = replay(&env, &body);
    for items in [&a.done_items, &output] {
        let messages = of_type(items, "message");
        assert_eq!(messages.len(), 1, "{items:?}");
        assert_eq!(messages[0]["content"][0]["text"], "Echo: say hi");
        assert!(of_type(items, "function_call").is_empty());
    }
    assert_eq!(of_type(&output, "reasoning").len(), 1, "K2 Horizon reasons");
    let system = upstream_system(&env);
    for tool in ["functions__exec", "functions__wait", "clock__sleep"] {
        assert!(system.contains(tool), "{tool} offered to the model");
    }
    assert_eq!(dropped(&env, "other"), 0);
}

/// A turn where the model calls Codex's shell through the code-mode `exec` tool (a custom
/// tool in the `functions` namespace), then the turn that carries Codex's result back.
#[test]
fn a_tool_round_trip() {
    let env = env();
    let body = fixture("tool_call");
    let (a, output) = replay(&env, &body);
    for items in [&a.done_items, &output] {
        let calls = of_type(items, "custom_tool_call");
        assert_eq!(calls.len(), 1, "{items:?}");
        let c = calls[0];
        assert_eq!(
            (&c["namespace"], &c["name"]),
            (&json!("functions"), &json!("exec"))
        );
        let input = c["input"].as_str().unwrap();
        assert!(input.contains("tools.exec_command") && input.contains("echo k2-codex-ok"));
        assert!(c["call_id"].as_str().unwrap().starts_with("call_"));
    }

    // Codex ran it and sends the call and its output back.
    let body = fixture("tool_result");
    let items = body["input"].as_array().unwrap();
    assert!(items.iter().any(|i| i["type"] == "custom_tool_call"));
    assert!(items.iter().any(|i| i["type"] == "custom_tool_call_output"));
    let (a, output) = replay(&env, &body);
    for items in [&a.done_items, &output] {
        assert!(
            of_type(items, "custom_tool_call").is_empty(),
            "done calling"
        );
        let text = of_type(items, "message")[0]["content"][0]["text"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(text.contains("k2-codex-ok"), "{text}");
    }
    let up = env.requests().last().and_then(|r| r.json.clone()).unwrap();
    assert!(up["messages"]
        .to_string()
        .contains("<tool>functions__exec</tool>"));
}

/// A model Codex has no metadata for (`gpt-5.1-codex`): classic `tools` with a `namespace`
/// and `web_search`, and `reasoning.summary: auto`, which Codex shows as the turn's
/// thinking.
#[test]
fn a_streamed_turn_with_a_reasoning_summary() {
    let body = fixture("summary");
    assert_eq!(body["reasoning"]["summary"], "auto");
    let env = env();
    let (a, output) = replay(&env, &body);
    assert_eq!(a.summaries.len(), 1, "{a:?}");
    assert!(!a.summaries[0].is_empty());
    let reasoning = of_type(&output, "reasoning");
    assert_eq!(reasoning[0]["summary"][0]["type"], "summary_text");
    assert_eq!(
        reasoning[0]["summary"][0]["text"],
        reasoning[0]["content"][0]["text"]
    );
    assert!(upstream_system(&env).contains("multi_agent_v1__spawn_agent"));
    assert_eq!(
        dropped(&env, "web_search"),
        2,
        "web_search, once per request"
    );
}

/// `gpt-5.5`: classic `tools` with the freeform `apply_patch`, `tool_search` and
/// `web_search`; the model calls `exec_command`, a plain function, and Codex sends its
/// output back.
#[test]
fn a_classic_tool_round_trip() {
    let env = env();
    let body = fixture("classic_tool_call");
    let kinds: Vec<&str> = body["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["type"].as_str().unwrap())
        .collect();
    assert!(kinds.contains(&"custom") && kinds.contains(&"tool_search"));
    let (a, output) = replay(&env, &body);
    for items in [&a.done_items, &output] {
        let calls = of_type(items, "function_call");
        assert_eq!(calls.len(), 1, "{items:?}");
        assert_eq!(calls[0]["name"], "exec_command");
        assert!(calls[0].get("namespace").is_none());
        let args: Value = serde_json::from_str(calls[0]["arguments"].as_str().unwrap()).unwrap();
        assert_eq!(args, json!({"cmd": "echo k2-codex-ok"}));
    }
    let system = upstream_system(&env);
    assert!(system.contains("apply_patch") && system.contains("begin_patch"));
    assert_eq!(
        (dropped(&env, "tool_search"), dropped(&env, "web_search")),
        (2, 2)
    );

    let (a, output) = replay(&env, &fixture("classic_tool_result"));
    for items in [&a.done_items, &output] {
        assert!(of_type(items, "function_call").is_empty(), "done calling");
        let text = of_type(items, "message")[0]["content"][0]["text"].to_string();
        assert!(text.contains("k2-codex-ok"), "{text}");
    }
}
