//! `POST /v1/responses` (OpenAI Responses, stateless) end to end: the real proxy in front of
//! the mock K2Think upstream, driven by a real client library (`async-openai`'s Responses
//! types parse every answer and every stream event) and checked against the event grammar
//! of OpenAI's streaming reference: `response.created`, `response.in_progress`, then per
//! output item `output_item.added`, `content_part.added`, deltas, `.done` events,
//! `output_item.done`, and one terminal `response.completed` / `incomplete` / `failed`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use async_openai::config::OpenAIConfig;
use async_openai::types::responses::{
    CreateResponse, OutputItem, OutputMessageContent, ReasoningItemContent, ResponseStreamEvent,
    Status,
};
use async_openai::Client;
use base64::Engine;
use common::grammar::{assemble, Assembled};
use common::{expected, tokens, Env, MODEL, NOTHINK};
use futures_util::StreamExt;
use k2proxy::mock::MockConfig;
use serde_json::{json, Value};

const KEY: &str = "sk-responses-test-key";

fn env() -> Env {
    Env::start(MockConfig::default(), |c| {
        c.auth.api_keys = vec![k2proxy::config::ApiKeyEntry {
            name: "codex".into(),
            key: KEY.into(),
        }];
    })
}

fn client(env: &Env) -> Client<OpenAIConfig> {
    Client::with_config(
        OpenAIConfig::new()
            .with_api_base(env.url("/v1"))
            .with_api_key(KEY),
    )
}

fn request(v: Value) -> CreateResponse {
    serde_json::from_value(v).expect("a valid async-openai request")
}

fn post(env: &Env, body: &Value) -> common::Resp {
    env.send(
        env.client
            .post(env.url("/v1/responses"))
            .bearer_auth(KEY)
            .json(body),
    )
}

fn weather_tool() -> Value {
    json!([{"type": "function", "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string", "description": "City name"},
            "unit": {"type": "string", "enum": ["c", "f"]}
        }, "required": ["city"]}}])
}

/// A prompt that makes the mock answer with a call of `get_weather(args)`.
fn calling(prompt: &str, args: Value) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(args.to_string());
    format!("{prompt} [[mock: tool_call=get_weather; tool_args={b64}]]")
}

fn stream_raw(env: &Env, body: &Value) -> Assembled {
    let r = post(env, body);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("text/event-stream"));
    assemble(&r.text())
}

#[test]
fn the_sdk_parses_answers_streamed_and_not() {
    let env = env();
    let c = client(&env);
    let (reasoning, answer) = expected("hello codex", "");
    env.rt.block_on(async {
        let r = c
            .responses()
            .create(request(json!({"model": MODEL, "instructions": "Be terse.",
                "input": "hello codex", "metadata": {"run": "1"}})))
            .await
            .unwrap();
        assert!(r.id.starts_with("resp_"), "{}", r.id);
        assert_eq!(r.object, "response");
        assert_eq!(r.status, Status::Completed);
        assert_eq!(r.model, MODEL);
        assert_eq!(r.output.len(), 2, "{:?}", r.output);
        let OutputItem::Reasoning(ri) = &r.output[0] else {
            panic!("a reasoning item first: {:?}", r.output[0])
        };
        let Some(ReasoningItemContent::ReasoningText(rt)) =
            ri.content.as_ref().and_then(|c| c.first())
        else {
            panic!("reasoning text")
        };
        assert_eq!(rt.text, reasoning);
        let OutputItem::Message(m) = &r.output[1] else {
            panic!("then the message")
        };
        let OutputMessageContent::OutputText(t) = &m.content[0] else {
            panic!("output text")
        };
        assert_eq!(t.text, answer);
        let u = r.usage.expect("usage");
        assert!(u.input_tokens > 0 && u.output_tokens > 0);
        assert!(u.output_tokens_details.reasoning_tokens > 0);
        assert_eq!(u.total_tokens, u.input_tokens + u.output_tokens);
        assert_eq!(r.metadata.unwrap()["run"], "1", "the request is echoed");
        let up = env.requests()[0].json.clone().unwrap();
        assert_eq!(up["messages"][0]["role"], "system");
        assert_eq!(up["messages"][0]["content"], "Be terse.");

        let mut s = c
            .responses()
            .create_stream(request(
                json!({"model": MODEL, "input": "hello codex", "stream": true}),
            ))
            .await
            .unwrap();
        let (mut text, mut thought, mut done) = (String::new(), String::new(), None);
        while let Some(ev) = s.next().await {
            match ev.expect("every event parses") {
                ResponseStreamEvent::ResponseOutputTextDelta(d) => text.push_str(&d.delta),
                ResponseStreamEvent::ResponseReasoningTextDelta(d) => thought.push_str(&d.delta),
                ResponseStreamEvent::ResponseCompleted(c) => done = Some(c.response),
                _ => {}
            }
        }
        assert_eq!(text, answer);
        assert_eq!(thought, reasoning);
        let done = done.expect("response.completed");
        assert_eq!(done.status, Status::Completed);
        assert_eq!(done.output.len(), 2);
    });

    // the same stream, raw: the whole grammar
    let a = stream_raw(
        &env,
        &json!({"model": MODEL, "input": "hello codex", "stream": true}),
    );
    assert_eq!(
        a.items,
        [
            ("reasoning".to_string(), reasoning),
            ("message".to_string(), answer)
        ]
    );
    let (name, r) = a.end.unwrap();
    assert_eq!(name, "response.completed");
    assert_eq!(r["status"], "completed");
    assert!(r["usage"]["output_tokens"].as_u64().unwrap() > 0);
}

#[test]
fn input_items_become_the_conversation() {
    let env = env();
    let png = base64::engine::general_purpose::STANDARD.encode(b"\x89PNG\r\n\x1a\nfake");
    let r = post(
        &env,
        &json!({"model": MODEL, "input": [
            {"role": "developer", "content": "Answer in French."},
            {"type": "message", "role": "user", "content": [
                {"type": "input_text", "text": "first"},
                {"type": "input_image", "image_url": format!("data:image/png;base64,{png}")}
            ]},
            {"type": "reasoning", "id": "rs_old", "summary": []},
            {"type": "message", "role": "assistant", "content": [
                {"type": "output_text", "text": "premier", "annotations": []}
            ]},
            {"role": "user", "content": "second turn"}
        ]}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let (_, answer) = expected("second turn", "");
    assert_eq!(r.json()["output"][1]["content"][0]["text"], answer.as_str());
    let up = env.requests()[0].json.clone().unwrap();
    let msgs = up["messages"].as_array().unwrap();
    let roles: Vec<&str> = msgs.iter().map(|m| m["role"].as_str().unwrap()).collect();
    assert_eq!(roles[1..], ["user", "assistant", "user"], "{up}");
    let first = msgs[1]["content"].as_array().expect("parts with the image");
    assert!(first.iter().any(|p| p["type"] == "image_url"
        && p["image_url"]["url"]
            .as_str()
            .unwrap()
            .starts_with("data:image/png;base64,")));
    assert_eq!(msgs[2]["content"], "premier");
}

#[test]
fn function_tools_round_trip_through_the_emulation() {
    let env = env();
    let c = client(&env);
    let ask = calling("weather in Paris?", json!({"city": "Paris", "unit": "c"}));
    env.rt.block_on(async {
        let r = c
            .responses()
            .create(request(json!({"model": MODEL, "tools": weather_tool(),
                "tool_choice": "required", "input": ask})))
            .await
            .unwrap();
        let call = r
            .output
            .iter()
            .find_map(|o| match o {
                OutputItem::FunctionCall(f) => Some(f.clone()),
                _ => None,
            })
            .expect("a function_call item");
        assert!(call.call_id.starts_with("call_"), "{}", call.call_id);
        assert_eq!(call.name, "get_weather");
        let args: Value = serde_json::from_str(&call.arguments).unwrap();
        assert_eq!(args, json!({"city": "Paris", "unit": "c"}));
        assert!(r.output.iter().all(|o| match o {
            OutputItem::Message(m) => m.content.iter().all(|c| match c {
                OutputMessageContent::OutputText(t) => !t.text.contains("<Function_"),
                _ => true,
            }),
            _ => true,
        }));
        // the tool prompt went upstream in the system message
        let up = env.requests()[0].json.clone().unwrap();
        assert!(up["messages"][0]["content"]
            .as_str()
            .unwrap()
            .contains("City name"));

        // the round trip: the call and its output go back as items
        let r = c
            .responses()
            .create(request(
                json!({"model": MODEL, "tools": weather_tool(), "input": [
                    {"role": "user", "content": "weather in Paris?"},
                    {"type": "function_call", "call_id": call.call_id, "name": "get_weather",
                     "arguments": call.arguments},
                    {"type": "function_call_output", "call_id": call.call_id,
                     "output": "sunny, 21 C"}
                ]}),
            ))
            .await
            .unwrap();
        assert_eq!(r.status, Status::Completed);
        assert!(!r
            .output
            .iter()
            .any(|o| matches!(o, OutputItem::FunctionCall(_))));
        let up = env.requests().last().unwrap().json.clone().unwrap();
        let msgs = up["messages"].as_array().unwrap();
        let history = msgs[2]["content"].as_str().unwrap();
        assert!(history.contains("<tool>get_weather</tool>"), "{history}");
        let result = msgs[3]["content"].as_str().unwrap();
        assert!(result.contains("sunny, 21 C"), "{result}");
    });

    // streamed: a function_call item with its argument events
    let a = stream_raw(
        &env,
        &json!({"model": MODEL, "stream": true, "tools": weather_tool(), "input": ask}),
    );
    assert_eq!(a.calls.len(), 1, "{a:?}");
    assert_eq!(a.calls[0].1, "get_weather");
    assert_eq!(a.calls[0].2, json!({"city": "Paris", "unit": "c"}));
    assert_eq!(a.end.unwrap().0, "response.completed");
}

/// Issue 17: Codex CLI declares `namespace` tools, `custom` (freeform) tools and, in
/// "Responses lite", tools in `additional_tools` input items. Each is emulated under its
/// flat name (`namespace__name`); the call goes back as Codex reads it: a `function_call`
/// with `namespace` and the inner `name`, or a `custom_tool_call` with the free-text
/// `input`; the history items come back the same way.
#[test]
fn namespaced_and_custom_tools_round_trip() {
    let env = env();
    let tools = json!([
        {"type": "namespace", "name": "clock", "description": "Time tools", "tools": [
            {"type": "function", "name": "sleep", "description": "Pause",
             "parameters": {"type": "object", "properties": {"duration_ms": {"type": "number"}},
                            "required": ["duration_ms"]}}]},
        {"type": "custom", "name": "exec", "description": "Run JavaScript",
         "format": {"type": "grammar", "syntax": "lark", "definition": "start: SOURCE"}},
    ]);
    let ask = |prompt: &str, name: &str, args: Value| {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(args.to_string());
        format!("{prompt} [[mock: tool_call={name}; tool_args={b64}]]")
    };
    let lite = |prompt: String| {
        json!({"model": MODEL, "input": [
            {"type": "additional_tools", "role": "developer", "tools": tools},
            {"role": "user", "content": prompt}]})
    };

    // a namespaced function, non-stream and streamed
    let body = lite(ask("nap", "clock__sleep", json!({"duration_ms": 5})));
    let r = post(&env, &body);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let call = v["output"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["type"] == "function_call")
        .unwrap_or_else(|| panic!("a function call: {v}"));
    assert_eq!(
        (&call["namespace"], &call["name"]),
        (&json!("clock"), &json!("sleep"))
    );
    assert_eq!(
        serde_json::from_str::<Value>(call["arguments"].as_str().unwrap()).unwrap(),
        json!({"duration_ms": 5})
    );
    let up = env.requests()[0].json.clone().unwrap();
    let system = up["messages"][0]["content"].as_str().unwrap();
    assert!(
        system.contains("clock__sleep"),
        "the flat name is in the tool prompt"
    );
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let a = stream_raw(&env, &streamed);
    assert_eq!(a.calls.len(), 1, "{a:?}");
    assert_eq!(a.calls[0].1, "sleep");
    let done = a
        .done_items
        .iter()
        .find(|i| i["type"] == "function_call")
        .unwrap();
    assert_eq!(done["namespace"], "clock");

    // a custom tool: its input is free text
    let js = "const r = await tools.exec_command({cmd: \"ls\"}); text(r.output);";
    let mut body = lite(ask("run", "exec", json!({"input": js})));
    body["stream"] = json!(true);
    let a = stream_raw(&env, &body);
    assert_eq!(
        a.calls,
        [(a.calls[0].0.clone(), "exec".to_string(), json!(js))]
    );
    let done = a
        .done_items
        .iter()
        .find(|i| i["type"] == "custom_tool_call")
        .unwrap();
    assert!(done["id"].as_str().unwrap().starts_with("ctc_"));
    assert!(
        done.get("namespace").is_none(),
        "a top-level custom tool has none"
    );
    let system = env.requests().last().unwrap().json.clone().unwrap()["messages"][0]["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        system.contains("start: SOURCE"),
        "the grammar is in the tool prompt"
    );

    // the history: both calls and their outputs, as Codex sends them back
    let body = json!({"model": MODEL, "input": [
        {"type": "additional_tools", "role": "developer", "tools": tools},
        {"role": "user", "content": "go"},
        {"type": "function_call", "call_id": "call_a", "namespace": "clock", "name": "sleep",
         "arguments": "{\"duration_ms\":5}"},
        {"type": "function_call_output", "call_id": "call_a", "output": "slept"},
        {"type": "custom_tool_call", "call_id": "call_b", "name": "exec", "input": js},
        {"type": "custom_tool_call_output", "call_id": "call_b",
         "output": [{"type": "input_text", "text": "a.txt"}]},
    ]});
    let r = post(&env, &body);
    assert_eq!(r.status, 200, "{}", r.text());
    let up = env.requests().last().unwrap().json.clone().unwrap();
    let sent = up["messages"].to_string();
    assert!(sent.contains("<tool>clock__sleep</tool>"), "{sent}");
    assert!(sent.contains("<tool>exec</tool>"), "{sent}");
    assert!(sent.contains("slept") && sent.contains("a.txt"), "{sent}");
}

/// Issue 17: hosted tools (`web_search`, `tool_search`, …) follow `responses.hosted_tools`:
/// `drop` (the default) leaves them out and counts them by type; `refuse` is a 400 naming
/// the tool.
#[test]
fn hosted_tools_are_dropped_or_refused() {
    let body = json!({"model": MODEL, "input": "search the web",
        "tools": [
            {"type": "function", "name": "exec_command", "parameters": {"type": "object"}},
            {"type": "web_search", "external_web_access": false},
            {"type": "namespace", "name": "ns", "tools": [{"type": "mcp", "server_label": "x"}]},
            {"type": "web_search_from_the_future"},
        ],
        "tool_choice": {"type": "web_search_preview"}});
    let env = env();
    let r = post(&env, &body);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["status"], "completed");
    let up = env.requests()[0].json.clone().unwrap();
    let system = up["messages"][0]["content"].as_str().unwrap();
    assert!(system.contains("exec_command"));
    assert!(!system.contains("web_search"), "{system}");
    let metrics = String::from_utf8(env.app.metrics().render()).unwrap();
    for (kind, n) in [
        ("web_search", 1),
        ("mcp", 1),
        ("other", 1),
        ("web_search_preview", 1),
    ] {
        let line = format!("k2proxy_hosted_tools_dropped_total{{type=\"{kind}\"}} {n}");
        assert!(metrics.contains(&line), "{line} in\n{metrics}");
    }
    drop(env);

    let env = Env::start(MockConfig::default(), |c| {
        c.responses.hosted_tools = k2proxy::config::HostedTools::Refuse;
    });
    let r = post(&env, &body);
    assert_eq!(r.status, 400, "{}", r.text());
    let v = r.json();
    assert_eq!(v["error"]["param"], "tools[1].type", "{v}");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("`web_search`"));
    assert!(env.requests().is_empty(), "nothing went upstream");
}

/// Issue 17: asked for `reasoning.summary`, the reasoning item carries the reasoning as its
/// summary too, streamed with the summary events (Codex CLI shows summaries, not raw
/// reasoning); `responses.reasoning_summary: false` keeps the summary empty.
#[test]
fn the_reasoning_is_a_summary_when_asked() {
    let (reasoning, _) = expected("think aloud", "");
    let body = |stream: bool| {
        json!({"model": MODEL, "input": "think aloud", "stream": stream,
            "reasoning": {"effort": "low", "summary": "auto"}})
    };
    let env = env();
    let v = post(&env, &body(false)).json();
    assert_eq!(v["output"][0]["type"], "reasoning");
    assert_eq!(
        v["output"][0]["summary"],
        json!([{"type": "summary_text", "text": reasoning}])
    );
    let a = stream_raw(&env, &body(true));
    assert_eq!(a.summaries.len(), 1);
    assert_eq!(a.summaries[0], reasoning);
    // not asked: no summary
    let mut plain = body(true);
    plain["reasoning"] = json!({"effort": "low"});
    assert!(stream_raw(&env, &plain).summaries.is_empty());
    drop(env);

    let env = Env::start(MockConfig::default(), |c| {
        c.responses.reasoning_summary = false
    });
    let v = post(&env, &body(false)).json();
    assert_eq!(v["output"][0]["summary"], json!([]));
    assert_eq!(v["output"][0]["content"][0]["text"], reasoning.as_str());
    assert!(stream_raw(&env, &body(true)).summaries.is_empty());
}

#[test]
fn nothink_models_have_no_reasoning_item() {
    let env = env();
    let v = post(&env, &json!({"model": NOTHINK, "input": "quiet"})).json();
    let types: Vec<&str> = v["output"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["message"], "{v}");
    let a = stream_raw(
        &env,
        &json!({"model": NOTHINK, "input": "quiet", "stream": true}),
    );
    assert_eq!(a.items.len(), 1);
    assert_eq!(a.items[0].0, "message");
}

#[test]
fn errors_are_openai_shaped_and_name_the_field() {
    let env = env();
    let check = |r: &common::Resp, status: u16, param: Option<&str>| {
        assert_eq!(r.status, status, "{}", r.text());
        let v = r.json();
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{v}"
        );
        assert!(
            v["error"]["type"].is_string() && v["error"]["code"].is_string(),
            "{v}"
        );
        if let Some(p) = param {
            assert_eq!(v["error"]["param"], p, "{v}");
        }
    };
    let bad = [
        (json!({"model": MODEL}), "input"),
        (json!({"model": MODEL, "input": []}), "input"),
        (json!({"model": MODEL, "input": 3}), "input"),
        (
            json!({"model": MODEL, "input": "x", "previous_response_id": "resp_1"}),
            "previous_response_id",
        ),
        (
            json!({"model": MODEL, "input": [{"type": "item_reference", "id": "msg_1"}]}),
            "input[0]",
        ),
        (
            json!({"model": MODEL, "input": [{"role": "user", "content": [{"type": "input_audio"}]}]}),
            "input[0].content[0].type",
        ),
        (
            json!({"model": MODEL, "input": [{"type": "function_call_output", "output": "x"}]}),
            "input[0].call_id",
        ),
        (
            json!({"model": MODEL, "input": "x", "tool_choice": "sometimes"}),
            "tool_choice",
        ),
        (
            json!({"model": MODEL, "input": "x", "temperature": 3}),
            "temperature",
        ),
        (json!({"input": "x"}), "model"),
    ];
    for (body, param) in bad {
        check(&post(&env, &body), 400, Some(param));
    }
    check(
        &post(&env, &json!({"model": "llama-3", "input": "x"})),
        404,
        None,
    );
    let r = env.send(
        env.client
            .post(env.url("/v1/responses"))
            .bearer_auth("sk-wrong")
            .json(&json!({"model": MODEL, "input": "x"})),
    );
    check(&r, 401, None);
    let r = env.send(env.client.get(env.url("/v1/responses")).bearer_auth(KEY));
    check(&r, 405, None);
    assert!(env.requests().is_empty(), "nothing went upstream");
}

#[test]
fn lax_fields_and_later_checks_name_the_input_item() {
    let env = Env::start(MockConfig::default(), |c| {
        c.auth.api_keys = vec![k2proxy::config::ApiKeyEntry {
            name: "codex".into(),
            key: KEY.into(),
        }];
        c.limits.max_messages = 4;
        for m in &mut c.models {
            m.images = false;
        }
    });
    let look = |part: Value| json!([{"role": "user", "content": [{"type": "input_text", "text": "look"}, part]}]);
    let image = json!({"type": "input_image", "image_url": "https://x.test/a.png"});
    let pdf = json!({"type": "input_file", "filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBERi0x"});
    let tool = json!({"type": "function", "name": "w", "parameters": {"type": "object"}});
    let turn = json!({"role": "user", "content": "again"});
    let cases = [
        // Issue 16: `metadata: 5` got a 200 (and was echoed back).
        (json!({"metadata": 5, "input": "x"}), "metadata"),
        (
            json!({"reasoning": {"summary": "long"}, "input": "x"}),
            "reasoning.summary",
        ),
        (
            json!({"text": {"verbosity": "loud"}, "input": "x"}),
            "text.verbosity",
        ),
        // Checks after the conversion name the input item, never `messages[…]` (the
        // instructions are a message of their own there).
        (
            json!({"instructions": "be brief", "input": look(image)}),
            "input[0].content[1]",
        ),
        (
            json!({"instructions": "be brief", "input": look(pdf)}),
            "input[0].content[1]",
        ),
        (
            json!({"tools": [tool.clone(), tool.clone()], "input": "x"}),
            "tools[1].name",
        ),
        (
            json!({"tools": [tool], "tool_choice": {"type": "function", "name": "nope"}, "input": "x"}),
            "tool_choice.name",
        ),
        (
            json!({"instructions": "i", "input": [turn, turn, turn, turn]}),
            "input",
        ),
    ];
    for (mut body, param) in cases {
        body["model"] = json!(MODEL);
        let r = post(&env, &body);
        assert_eq!(r.status, 400, "{body}: {}", r.text());
        let v = r.json();
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
}

#[test]
fn upstream_failures_end_in_an_error_never_a_completed_response() {
    let env = Env::start(MockConfig::default(), |c| {
        c.pool.tokens = tokens(&["e1;fault=500", "e2;fault=500"]);
    });
    let r = env.send(
        env.client
            .post(env.url("/v1/responses"))
            .json(&json!({"model": MODEL, "input": "x"})),
    );
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "upstream_error");
    drop(env);

    let env = Env::start(MockConfig::default(), |c| {
        c.pool.tokens = tokens(&["cut;fault=cut;cut_after=4"]);
    });
    let r = env.send(env.client.post(env.url("/v1/responses")).json(&json!({
        "model": MODEL, "stream": true, "input": "cut [[mock: reasoning_words=30]]"
    })));
    assert_eq!(r.status, 200);
    let a = assemble(&r.text());
    let (name, resp) = a.end.expect("a terminal event");
    assert_eq!(name, "response.failed", "{}", r.text());
    assert_eq!(resp["status"], "failed");
    assert_eq!(resp["error"]["code"], "upstream_stream_error");
    let out = resp["output"].as_array().unwrap();
    assert_eq!(out.last().unwrap()["status"], "incomplete", "{resp}");
}
