//! The proxy driven by a real OpenAI client library for Rust (`async-openai`): its types parse
//! our answers, streamed and not, with emulated tool calls and a tool-result round trip.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use async_openai::config::OpenAIConfig;
use async_openai::types::chat::{
    ChatCompletionMessageToolCalls, CreateChatCompletionRequest, FinishReason,
};
use async_openai::Client;
use base64::Engine;
use common::{Env, MODEL};
use futures_util::StreamExt;
use k2proxy::mock::MockConfig;
use serde_json::{json, Value};

fn client(env: &Env) -> Client<OpenAIConfig> {
    Client::with_config(
        OpenAIConfig::new()
            .with_api_base(env.url("/v1"))
            .with_api_key("sk-unused"),
    )
}

fn request(v: Value) -> CreateChatCompletionRequest {
    serde_json::from_value(v).expect("a valid async-openai request")
}

fn weather_tool() -> Value {
    json!([{"type": "function", "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string", "description": "City name"},
            "unit": {"type": "string", "enum": ["c", "f"]}
        }, "required": ["city"]}
    }}])
}

/// A prompt that makes the mock answer with a call of `get_weather(args)`.
fn calling(prompt: &str, args: Value) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(args.to_string());
    format!("{prompt} [[mock: tool_call=get_weather; tool_args={b64}]]")
}

#[test]
fn plain_answers_parse_stream_and_non_stream() {
    let env = Env::start(MockConfig::default(), |_| {});
    let c = client(&env);
    env.rt.block_on(async {
        let r = c
            .chat()
            .create(request(
                json!({"model": MODEL, "messages": [{"role": "user", "content": "hello sdk"}]}),
            ))
            .await
            .unwrap();
        assert_eq!(
            r.choices[0].message.content.as_deref(),
            Some("Echo: hello sdk")
        );
        assert_eq!(r.choices[0].finish_reason, Some(FinishReason::Stop));
        assert!(r.usage.unwrap().total_tokens > 0);

        let mut s = c
            .chat()
            .create_stream(request(json!({"model": MODEL, "stream": true,
                "stream_options": {"include_usage": true},
                "messages": [{"role": "user", "content": "stream sdk"}]})))
            .await
            .unwrap();
        let (mut content, mut finish, mut usage, mut ids) = (String::new(), None, None, Vec::new());
        while let Some(chunk) = s.next().await {
            let chunk = chunk.unwrap();
            ids.push(chunk.id.clone());
            if let Some(u) = chunk.usage {
                usage = Some(u);
            }
            for ch in chunk.choices {
                content.push_str(ch.delta.content.as_deref().unwrap_or(""));
                if ch.finish_reason.is_some() {
                    finish = ch.finish_reason;
                }
            }
        }
        assert_eq!(content, "Echo: stream sdk");
        assert_eq!(finish, Some(FinishReason::Stop));
        assert!(usage.is_some());
        ids.dedup();
        assert_eq!(ids.len(), 1, "one id for the whole stream");
    });
}

#[test]
fn tool_calls_non_stream_and_a_tool_result_round_trip() {
    let env = Env::start(MockConfig::default(), |_| {});
    let c = client(&env);
    env.rt.block_on(async {
        let ask = calling("weather in Paris?", json!({"city": "Paris", "unit": "c"}));
        let r = c
            .chat()
            .create(request(json!({"model": MODEL, "tools": weather_tool(), "tool_choice": "auto",
                "messages": [{"role": "user", "content": ask}]})))
            .await
            .unwrap();
        let choice = &r.choices[0];
        assert_eq!(choice.finish_reason, Some(FinishReason::ToolCalls));
        let calls = choice.message.tool_calls.as_ref().expect("tool_calls");
        assert_eq!(calls.len(), 1);
        let ChatCompletionMessageToolCalls::Function(call) = &calls[0] else {
            panic!("a function call")
        };
        assert!(call.id.starts_with("call_"), "{}", call.id);
        assert_eq!(call.function.name, "get_weather");
        let args: Value = serde_json::from_str(&call.function.arguments).unwrap();
        assert_eq!(args, json!({"city": "Paris", "unit": "c"}));
        // no trigger or XML leaks into the content
        let content = choice.message.content.clone().unwrap_or_default();
        assert!(!content.contains("<Function_") && !content.contains("function_calls"), "{content}");

        // the round trip: the client sends the call and its result back
        let r = c
            .chat()
            .create(request(json!({"model": MODEL, "tools": weather_tool(), "messages": [
                {"role": "user", "content": "weather in Paris?"},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": call.id, "type": "function", "function": {"name": "get_weather", "arguments": call.function.arguments}}
                ]},
                {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"}
            ]})))
            .await
            .unwrap();
        assert_eq!(r.choices[0].finish_reason, Some(FinishReason::Stop));
        assert!(r.choices[0].message.tool_calls.is_none());
        let up = env.requests().last().unwrap().json.clone().unwrap();
        let msgs = up["messages"].as_array().unwrap();
        let system = msgs[0]["content"].as_str().unwrap();
        let trigger = system
            .split_whitespace()
            .find(|w| w.starts_with("<Function_") && w.ends_with("_Start/>"))
            .expect("the trigger is in the tool instructions");
        assert!(system.contains("get_weather") && system.contains("City name"));
        let history = msgs[2]["content"].as_str().unwrap();
        assert!(history.contains(trigger) && history.contains("<tool>get_weather</tool>"), "{history}");
        assert!(history.contains("<city>\"Paris\"</city>"), "{history}");
        let result = msgs[3]["content"].as_str().unwrap();
        assert_eq!(msgs[3]["role"], "user");
        assert!(result.contains("- Tool name: get_weather") && result.contains("sunny, 21 C"), "{result}");
    });
}

#[test]
fn tool_calls_stream_as_deltas() {
    let env = Env::start(MockConfig::default(), |_| {});
    let c = client(&env);
    env.rt.block_on(async {
        let ask = calling("weather in Oslo? 你好", json!({"city": "Oslo 你好"}));
        let mut s = c
            .chat()
            .create_stream(request(
                json!({"model": MODEL, "stream": true, "tools": weather_tool(),
                "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
                "messages": [{"role": "user", "content": ask}]}),
            ))
            .await
            .unwrap();
        let (mut name, mut args, mut id, mut finish, mut content) = (
            String::new(),
            String::new(),
            String::new(),
            None,
            String::new(),
        );
        while let Some(chunk) = s.next().await {
            for ch in chunk.unwrap().choices {
                content.push_str(ch.delta.content.as_deref().unwrap_or(""));
                for t in ch.delta.tool_calls.unwrap_or_default() {
                    assert_eq!(t.index, 0);
                    if let Some(i) = t.id {
                        id = i;
                    }
                    if let Some(f) = t.function {
                        name.push_str(f.name.as_deref().unwrap_or(""));
                        args.push_str(f.arguments.as_deref().unwrap_or(""));
                    }
                }
                if ch.finish_reason.is_some() {
                    finish = ch.finish_reason;
                }
            }
        }
        assert_eq!(finish, Some(FinishReason::ToolCalls));
        assert!(id.starts_with("call_"));
        assert_eq!(name, "get_weather");
        assert_eq!(
            serde_json::from_str::<Value>(&args).unwrap(),
            json!({"city": "Oslo 你好"})
        );
        assert_eq!(content, "I will use a tool.");
        // a named tool_choice is in the instructions
        let up = env.requests().last().unwrap().json.clone().unwrap();
        assert!(up["messages"][0]["content"]
            .as_str()
            .unwrap()
            .contains("get_weather"));
    });
}

#[test]
fn bad_tools_are_a_400_naming_the_field() {
    let env = Env::start(MockConfig::default(), |_| {});
    let r = env.chat(&json!({"model": MODEL, "messages": [{"role": "user", "content": "x"}],
        "tools": [{"type": "function", "function": {"name": "ok"}}, {"type": "function", "function": {"description": "no name"}}]}));
    let v = r.assert_error(400, "invalid_request");
    assert!(
        v["error"]["param"]
            .as_str()
            .unwrap()
            .starts_with("tools[1]"),
        "{v}"
    );
    let r = env.chat(&json!({"model": MODEL, "messages": [{"role": "user", "content": "x"}],
        "tools": weather_tool(), "tool_choice": {"type": "function", "function": {"name": "nope"}}}));
    let v = r.assert_error(400, "invalid_request");
    assert!(
        v["error"]["param"]
            .as_str()
            .unwrap()
            .starts_with("tool_choice"),
        "{v}"
    );
    assert!(env.requests().is_empty());
}

#[test]
fn a_malformed_block_comes_back_as_content_and_is_counted() {
    let metrics_port = common::free_port();
    let env = Env::start(MockConfig::default(), |c| {
        c.metrics.listen = Some(format!("127.0.0.1:{metrics_port}"));
    });
    common::wait_port(metrics_port);
    // a call with the required `city` missing
    let ask = calling("weather?", json!({"unit": "c"}));
    let r = env.chat(&json!({"model": MODEL, "tools": weather_tool(), "messages": [{"role": "user", "content": ask}]}));
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert!(v["choices"][0]["message"]
        .get("tool_calls")
        .is_none_or(Value::is_null));
    let content = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(
        content.contains("<function_calls>") && content.contains("<unit>"),
        "the text is returned: {content}"
    );
    let url = format!("http://127.0.0.1:{metrics_port}/metrics");
    // Counted when the request is logged, just after its last byte went out.
    let mut t = String::new();
    common::within(Duration::from_secs(2), "the failure counted", || {
        t = env.send(env.client.get(&url)).text();
        t.contains("k2proxy_tool_parse_failures_total 1")
    });
    assert!(t.contains("k2proxy_tool_calls_total 0"), "{t}");
}
