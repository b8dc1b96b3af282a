//! `POST /v1/responses` (OpenAI Responses, stateless) end to end: the real proxy in front of
//! the mock K2Think upstream, driven by a real client library (`async-openai`'s Responses
//! types parse every answer and every stream event) and checked against the event grammar
//! of OpenAI's streaming reference: `response.created`, `response.in_progress`, then per
//! output item `output_item.added`, `content_part.added`, deltas, `.done` events,
//! `output_item.done`, and one terminal `response.completed` / `incomplete` / `failed`.

mod common;

use async_openai::config::OpenAIConfig;
use async_openai::types::responses::{
    CreateResponse, OutputItem, OutputMessageContent, ReasoningItemContent, ResponseStreamEvent,
    Status,
};
use async_openai::Client;
use base64::Engine;
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

/// The `event:` name and `data:` JSON of each SSE event.
fn events(raw: &str) -> Vec<(String, Value)> {
    raw.split("\n\n")
        .filter(|b| !b.trim().is_empty())
        .map(|block| {
            let (mut name, mut data) = (String::new(), String::new());
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event: ") {
                    name = v.to_string();
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data.push_str(v);
                }
            }
            let data: Value = serde_json::from_str(&data).expect("each data line is JSON");
            (name, data)
        })
        .collect()
}

/// What a client assembles from a Responses stream; panics where the grammar is broken.
#[derive(Debug, Default)]
struct Assembled {
    /// Per output item: `(type, text or arguments)`.
    items: Vec<(String, String)>,
    calls: Vec<(String, String, Value)>,
    /// The terminal event's name and its response.
    end: Option<(String, Value)>,
}

fn assemble(raw: &str) -> Assembled {
    let evs = events(raw);
    assert!(!raw.contains("[DONE]"), "the Responses API sends no [DONE]");
    let mut a = Assembled::default();
    // (item id, type, open, text so far)
    let mut open: Vec<(String, String, bool, String)> = Vec::new();
    for (i, (name, data)) in evs.iter().enumerate() {
        // every event is one the SDK knows, named as its `type`
        serde_json::from_value::<ResponseStreamEvent>(data.clone())
            .unwrap_or_else(|e| panic!("event {i} `{name}` does not parse: {e}: {data}"));
        assert_eq!(data["type"], name.as_str(), "event {i}");
        assert_eq!(
            data["sequence_number"], i as u64,
            "sequence numbers count up from 0"
        );
        assert!(a.end.is_none(), "nothing after the terminal event: {name}");
        match (i, name.as_str()) {
            (0, n) => assert_eq!(n, "response.created"),
            (1, n) => assert_eq!(n, "response.in_progress"),
            (_, "response.created" | "response.in_progress") => panic!("{name} twice"),
            _ => {}
        }
        let index = data["output_index"].as_u64().map(|x| x as usize);
        let item = |idx: Option<usize>| -> usize {
            let idx = idx.expect("output_index");
            assert!(idx < open.len(), "event for an item never added: {data}");
            assert!(open[idx].2, "event for an item already done: {data}");
            if let Some(id) = data["item_id"].as_str() {
                assert_eq!(id, open[idx].0, "item_id matches the added item");
            }
            idx
        };
        match name.as_str() {
            "response.created" | "response.in_progress" => {
                assert_eq!(data["response"]["status"], "in_progress");
                assert_eq!(data["response"]["output"], json!([]));
            }
            "response.output_item.added" => {
                assert_eq!(index, Some(open.len()), "items are added in order");
                assert!(open.iter().all(|o| !o.2), "one item at a time");
                let it = &data["item"];
                assert_eq!(it["status"], "in_progress");
                open.push((
                    it["id"].as_str().unwrap().to_string(),
                    it["type"].as_str().unwrap().to_string(),
                    true,
                    String::new(),
                ));
            }
            "response.content_part.added" | "response.content_part.done" => {
                item(index);
                assert_eq!(data["content_index"], 0);
            }
            "response.reasoning_text.delta"
            | "response.output_text.delta"
            | "response.function_call_arguments.delta" => {
                let idx = item(index);
                let want = match name.as_str() {
                    "response.reasoning_text.delta" => "reasoning",
                    "response.output_text.delta" => "message",
                    _ => "function_call",
                };
                assert_eq!(open[idx].1, want, "{name} in a {} item", open[idx].1);
                open[idx].3.push_str(data["delta"].as_str().unwrap());
            }
            "response.reasoning_text.done" | "response.output_text.done" => {
                let idx = item(index);
                assert_eq!(
                    data["text"].as_str().unwrap(),
                    open[idx].3,
                    "done = the deltas"
                );
            }
            "response.function_call_arguments.done" => {
                let idx = item(index);
                assert_eq!(data["arguments"].as_str().unwrap(), open[idx].3);
            }
            "response.output_item.done" => {
                let idx = item(index);
                let it = &data["item"];
                assert_eq!(it["id"], open[idx].0.as_str());
                let text = match it["type"].as_str().unwrap() {
                    "reasoning" => it["content"][0]["text"].as_str().unwrap().to_string(),
                    "message" => it["content"][0]["text"].as_str().unwrap().to_string(),
                    "function_call" => {
                        a.calls.push((
                            it["call_id"].as_str().unwrap().to_string(),
                            it["name"].as_str().unwrap().to_string(),
                            serde_json::from_str(it["arguments"].as_str().unwrap()).unwrap(),
                        ));
                        it["arguments"].as_str().unwrap().to_string()
                    }
                    t => panic!("unexpected item type {t}"),
                };
                assert_eq!(
                    text, open[idx].3,
                    "the done item holds what the deltas said"
                );
                open[idx].2 = false;
                a.items.push((open[idx].1.clone(), text));
            }
            "response.completed" | "response.incomplete" => {
                assert!(
                    open.iter().all(|o| !o.2),
                    "every item is done before {name}"
                );
                let r = &data["response"];
                let ids: Vec<&str> = r["output"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|o| o["id"].as_str().unwrap())
                    .collect();
                let streamed: Vec<&str> = open.iter().map(|o| o.0.as_str()).collect();
                assert_eq!(ids, streamed, "the final output is the streamed items");
                a.end = Some((name.clone(), r.clone()));
            }
            "response.failed" => a.end = Some((name.clone(), data["response"].clone())),
            other => panic!("unexpected event {other}"),
        }
    }
    a
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
            json!({"model": MODEL, "input": "x", "tools": [{"type": "web_search_preview"}]}),
            "tools[0].type",
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
