//! Z.AI (chat.z.ai) as a provider, end to end: the proxy in front of the project's Z.AI
//! mock, which checks the signature, the front-end version and the query the way the site
//! does, through all three client APIs, with its guests, its captcha demand and its faults.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use k2proxy::config::providers::{CaptchaSourceKind, ProviderEntry, ZaiMode, ZaiSection};
use k2proxy::config::Config;
use k2proxy::mock::zai::{reply_for, ZaiDirectives, ZaiMock, ZaiMockConfig};
use k2proxy::mock::MockConfig;
use serde_json::{json, Value};

struct Zai {
    env: Env,
    mock: ZaiMock,
}

impl Zai {
    fn start(mock_cfg: ZaiMockConfig, edit: impl FnOnce(&mut ZaiSection, &mut Config)) -> Zai {
        let rt = runtime();
        let mock = rt
            .block_on(ZaiMock::start("127.0.0.1:0".parse().unwrap(), mock_cfg))
            .unwrap();
        let base = mock.base_url();
        let k2 = start_mock(&rt, MockConfig::horizon());
        let k2_base = k2.base_url();
        let mut env = Env::start_with(rt, |c| {
            c.upstream.base_url = k2_base;
            let mut z = ZaiSection {
                base_url: base,
                guests: 2,
                max_attempts: 3,
                ..ZaiSection::default()
            };
            edit(&mut z, c);
            c.providers
                .insert("zai".to_string(), ProviderEntry::Zai(Box::new(z)));
            c.models.extend(k2proxy::config::zai_models("zai"));
        });
        env.mock = Some(k2);
        Zai { env, mock }
    }

    fn completions(&self) -> Vec<k2proxy::mock::zai::ZaiRequest> {
        self.mock
            .requests()
            .into_iter()
            .filter(|r| r.path == "/api/v2/chat/completions")
            .collect()
    }
}

/// The answer the mock gives for `prompt` (directives as in the prompt).
fn zai_reply(prompt: &str) -> (String, String) {
    let mut d = ZaiDirectives::default();
    d.apply_text(prompt);
    reply_for(prompt, &d)
}

fn user(text: &str) -> Value {
    json!([{"role": "user", "content": text}])
}

#[test]
fn a_guest_streams_reasoning_and_answer_through_chat_completions() {
    let z = Zai::start(ZaiMockConfig::default(), |_, _| {});
    let prompt = "Say hello to the new provider";
    let (reasoning, answer) = zai_reply(prompt);
    let sse = z.env.stream(&chat_body("GLM-4.7-Thinking", prompt, true));
    sse.assert_well_formed();
    assert_eq!(sse.content(), answer);
    assert_eq!(sse.reasoning(), reasoning);
    assert_eq!(sse.finish_reason().as_deref(), Some("stop"));

    let done = z.env.chat(&chat_body("GLM-4.7-Thinking", prompt, false));
    assert_eq!(done.status, 200, "{}", done.text());
    let v = done.json();
    assert_eq!(v["choices"][0]["message"]["content"], answer.as_str());
    assert_eq!(
        v["choices"][0]["message"]["reasoning_content"],
        reasoning.as_str()
    );
    // GLM-4.7 itself does not think: thinking off upstream, no reasoning out.
    let plain = z.env.stream(&chat_body("GLM-4.7", prompt, true));
    assert_eq!(plain.content(), answer);
    assert_eq!(plain.reasoning(), "");
    assert!(v["usage"]["completion_tokens"].as_u64().unwrap() > 0, "{v}");

    // Every completion was signed, carried the scraped front-end version and the query.
    let calls = z.completions();
    assert_eq!(calls.len(), 3);
    let features =
        |i: usize| calls[i].json.as_ref().unwrap()["features"]["enable_thinking"].clone();
    assert_eq!((features(0), features(2)), (json!(true), json!(false)));
    for c in &calls {
        assert_eq!(c.response_status, 200);
        assert_eq!(c.header("x-fe-version"), Some(z.mock.fe_version().as_str()));
        assert!(c.header("x-signature").is_some_and(|s| s.len() == 64));
        for field in [
            "requestId",
            "timestamp",
            "user_id",
            "token",
            "signature_timestamp",
        ] {
            assert!(c.query_param(field).is_some(), "{field} missing");
        }
    }
    // Guests are made on demand (at most `guests`), and each request's chat is deleted
    // after its answer.
    assert!((1..=2).contains(&z.mock.guests_created()));
    within(Duration::from_secs(5), "chats deleted", || {
        z.mock.chats_deleted() == z.mock.chats_created()
    });
    assert_eq!(z.mock.chats_created(), 3);
}

#[test]
fn a_client_that_leaves_before_the_answer_still_has_its_chat_deleted() {
    use std::io::Write;
    let z = Zai::start(ZaiMockConfig::default(), |_, _| {});
    // The upstream takes its time: no event until the gate opens.
    let body = chat_body(
        "GLM-4.7",
        "Take your time [[mock: gate=held; gate_after=0]]",
        true,
    )
    .to_string();
    let mut client = std::net::TcpStream::connect(("127.0.0.1", z.env.port)).unwrap();
    write!(
        client,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    within(Duration::from_secs(5), "the completion upstream", || {
        z.completions().len() == 1
    });
    assert_eq!(z.mock.chats_created(), 1);
    assert_eq!(z.mock.chats_deleted(), 0);
    drop(client);
    within(Duration::from_secs(5), "the chat deleted", || {
        z.mock.chats_deleted() == 1
    });
    z.mock.open_gate("held");
}

#[test]
fn messages_and_responses_work_with_a_zai_model() {
    let z = Zai::start(ZaiMockConfig::default(), |_, _| {});
    let prompt = "Both other surfaces too";
    let (_, answer) = zai_reply(prompt);

    let r = z.env.send(
        z.env
            .client
            .post(z.env.url("/v1/messages"))
            .json(&json!({"model": "GLM-4.7", "max_tokens": 256, "messages": user(prompt)})),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let text: String = v["content"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["type"] == "text")
        .map(|b| b["text"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(text, answer);

    let r = z.env.send(
        z.env
            .client
            .post(z.env.url("/v1/responses"))
            .json(&json!({"model": "GLM-4.7", "input": prompt, "stream": true})),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.text();
    assert!(body.contains("response.completed"), "{body}");
    let mut streamed = String::new();
    for line in body.lines() {
        if let Some(d) = line.strip_prefix("data: ") {
            let e: Value = serde_json::from_str(d).unwrap();
            if e["type"] == "response.output_text.delta" {
                streamed.push_str(e["delta"].as_str().unwrap());
            }
        }
    }
    assert_eq!(streamed, answer);
}

#[test]
fn a_k2think_model_still_goes_to_k2think_beside_zai() {
    let z = Zai::start(ZaiMockConfig::default(), |_, _| {});
    let r = z.env.chat(&chat_body("IFM/K2-Horizon", "hi k2", false));
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(z.completions().is_empty());
    assert_eq!(z.env.mock().requests().len(), 1);
}

#[test]
fn every_edit_and_envelope_form_reaches_the_client_whole() {
    let z = Zai::start(ZaiMockConfig::default(), |_, _| {});
    for knobs in [
        "edit=rune; edit_at=start",
        "edit=rune; edit_at=middle",
        "envelope=bare; done_marker=off",
        "chunk=1; edit_at=middle",
        "chunk=7; envelope=bare",
        "search=on",
    ] {
        let prompt = format!("forms [[mock: {knobs}]]");
        let (_, answer) = zai_reply(&prompt);
        let sse = z.env.stream(&chat_body("GLM-4.7", &prompt, true));
        sse.assert_well_formed();
        let got = sse.content();
        if knobs.contains("search") {
            assert!(!got.contains("turn0search"), "{knobs}: {got}");
        } else {
            assert_eq!(got, answer, "{knobs}");
        }
    }
}

#[test]
fn tool_calls_are_emulated_for_zai_models() {
    let z = Zai::start(ZaiMockConfig::default(), |_, _| {});
    let body = json!({
        "model": "GLM-4.7",
        "stream": true,
        "messages": user("What is the weather in Paris? [[mock: tool=k2]]"),
        "tools": [{"type": "function", "function": {"name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
    });
    let sse = z.env.stream(&body);
    sse.assert_well_formed();
    assert_eq!(
        sse.finish_reason().as_deref(),
        Some("tool_calls"),
        "{:?}",
        sse.events
    );
}

#[test]
fn a_captcha_demand_without_a_source_names_the_setting_and_is_not_retried() {
    let cfg = ZaiMockConfig {
        require_captcha: true,
        captcha_proofs: vec!["proof-1".to_string()],
        ..ZaiMockConfig::default()
    };
    let z = Zai::start(cfg.clone(), |_, _| {});
    let r = z.env.chat(&chat_body("GLM-4.7", "hi", false));
    let e = r.assert_error(503, "upstream_captcha_required");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("providers.zai.captcha"),
        "{e}"
    );
    assert_eq!(z.completions().len(), 1, "no retry storm");

    // A fixed proof is sent and accepted; a command's output too.
    let z = Zai::start(cfg.clone(), |s, _| {
        s.captcha.source = CaptchaSourceKind::Fixed;
        s.captcha.value = Some("proof-1".to_string());
    });
    let r = z.env.chat(&chat_body("GLM-4.7", "hi", false));
    assert_eq!(r.status, 200, "{}", r.text());
    let body = z.completions()[0].json.clone().unwrap();
    assert_eq!(body["captcha_verify_param"], "proof-1");

    let z = Zai::start(cfg, |s, _| {
        s.captcha.source = CaptchaSourceKind::Command;
        s.captcha.command = vec!["echo".to_string(), "proof-1".to_string()];
    });
    let r = z.env.chat(&chat_body("GLM-4.7", "hi", false));
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn a_stale_front_end_version_is_scraped_again_and_the_request_succeeds() {
    let z = Zai::start(ZaiMockConfig::default(), |_, _| {});
    assert_eq!(z.env.chat(&chat_body("GLM-4.7", "one", false)).status, 200);
    z.mock.set_fe_version("prod-fe-1.2.3");
    let r = z.env.chat(&chat_body("GLM-4.7", "two", false));
    assert_eq!(r.status, 200, "{}", r.text());
    let calls = z.completions();
    assert_eq!(
        calls.last().unwrap().header("x-fe-version"),
        Some("prod-fe-1.2.3")
    );
    assert!(calls.iter().any(|c| c.response_status == 426));
}

#[test]
fn waf_blocks_are_final_and_say_what_helps() {
    let z = Zai::start(ZaiMockConfig::default(), |_, _| {});
    let r = z
        .env
        .chat(&chat_body("GLM-4.7", "hi [[mock: fault=waf]]", false));
    let e = r.assert_error(502, "upstream_blocked");
    assert!(
        e["error"]["message"].as_str().unwrap().contains("WAF"),
        "{e}"
    );
    assert_eq!(z.completions().len(), 1);
}

#[test]
fn a_refused_guest_is_replaced_and_rate_limits_reach_the_client() {
    let z = Zai::start(ZaiMockConfig::default(), |_, _| {});
    let r = z
        .env
        .chat(&chat_body("GLM-4.7", "hi [[mock: fault=401]]", false));
    r.assert_error(502, "upstream_auth_failed");
    assert_eq!(z.completions().len(), 3, "one attempt per identity");
    // Every refused guest was dropped: the next request makes new ones and succeeds.
    let before = z.mock.guests_created();
    assert_eq!(z.env.chat(&chat_body("GLM-4.7", "hi", false)).status, 200);
    assert!(z.mock.guests_created() > before);

    let r = z
        .env
        .chat(&chat_body("GLM-4.7", "hi [[mock: fault=429]]", false));
    let e = r.assert_error(429, "upstream_rate_limited");
    assert!(r.header("retry-after").is_some(), "{e}");

    let r = z.env.chat(&chat_body(
        "GLM-4.7",
        "hi [[mock: fault=concurrency]]",
        false,
    ));
    r.assert_error(429, "upstream_rate_limited");
}

#[test]
fn guests_may_not_use_the_members_models_and_user_tokens_may() {
    let z = Zai::start(ZaiMockConfig::default(), |_, _| {});
    let r = z.env.chat(&chat_body("GLM-5", "hi", false));
    let e = r.assert_error(403, "model_not_available");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("providers.zai.tokens"),
        "{e}"
    );

    let rt = runtime();
    let mock = rt
        .block_on(ZaiMock::start(
            "127.0.0.1:0".parse().unwrap(),
            ZaiMockConfig::default(),
        ))
        .unwrap();
    let token = mock.issue_user_token();
    let base = mock.base_url();
    let env = Env::start_with(rt, |c| {
        let z = ZaiSection {
            base_url: base,
            mode: ZaiMode::User,
            tokens: vec![token.clone()],
            ..ZaiSection::default()
        };
        c.providers
            .insert("zai".to_string(), ProviderEntry::Zai(Box::new(z)));
        c.models.extend(k2proxy::config::zai_models("zai"));
    });
    let r = env.chat(&chat_body("GLM-5", "members only", false));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(mock.guests_created(), 0);
}

#[test]
fn ready_metrics_and_the_access_log_name_the_provider() {
    let z = Zai::start(ZaiMockConfig::default(), |_, c| c.metrics.listen = None);
    assert_eq!(z.env.chat(&chat_body("GLM-4.7", "hi", false)).status, 200);
    let ready = z.env.get("/ready").json();
    assert_eq!(ready["providers"]["zai"]["kind"], "zai");
    assert_eq!(ready["providers"]["zai"]["ready"], true);
    assert_eq!(ready["providers"]["k2think"]["kind"], "k2think");
    assert!(ready["providers"]["zai"]["models"]
        .as_array()
        .unwrap()
        .contains(&json!("GLM-4.7")));
    // The admin API shows the same, loopback without a key.
    let admin = z.env.get("/admin/providers").json();
    assert_eq!(admin["data"]["zai"]["mode"], "guest", "{admin}");
    assert_eq!(admin["data"]["zai"]["guests"]["target"], 2, "{admin}");
    assert!(!admin.to_string().contains("eyJ"), "no token in {admin}");
    let m = String::from_utf8(z.env.app.metrics().render()).unwrap();
    assert!(
        m.contains("k2proxy_provider_requests_total{provider=\"zai\",status=\"200\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("k2proxy_provider_attempts_total{provider=\"zai\",result=\"200\"} 1"),
        "{m}"
    );
}

#[test]
fn user_mode_checks_each_token_once_and_disables_a_guests() {
    let rt = runtime();
    let mock = rt
        .block_on(ZaiMock::start(
            "127.0.0.1:0".parse().unwrap(),
            ZaiMockConfig::default(),
        ))
        .unwrap();
    let base = mock.base_url();
    let guest: Value = rt
        .block_on(async {
            reqwest::get(format!("{base}/api/v1/auths/"))
                .await
                .unwrap()
                .json()
                .await
        })
        .unwrap();
    let guest_token = guest["token"].as_str().unwrap().to_string();
    let user_token = mock.issue_user_token();
    let env = Env::start_with(rt, |c| {
        let z = ZaiSection {
            base_url: base,
            mode: ZaiMode::User,
            tokens: vec![guest_token.clone(), user_token.clone()],
            ..ZaiSection::default()
        };
        c.providers
            .insert("zai".to_string(), ProviderEntry::Zai(Box::new(z)));
        c.models.extend(k2proxy::config::zai_models("zai"));
    });
    for i in 0..4 {
        let r = env.chat(&chat_body("GLM-5", &format!("members {i}"), false));
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let completions: Vec<_> = mock
        .requests()
        .into_iter()
        .filter(|r| r.path == "/api/v2/chat/completions")
        .collect();
    assert!(completions
        .iter()
        .all(|r| r.bearer.as_deref() == Some(user_token.as_str())));
    let checks = mock
        .requests()
        .into_iter()
        .filter(|r| r.path == "/api/v1/auths/")
        .count();
    assert_eq!(checks, 3, "the guest's fetch, then one check per token");
    let ready = env.get("/ready").json();
    assert_eq!(ready["providers"]["zai"]["tokens"]["active"], 1, "{ready}");
    assert_eq!(
        ready["providers"]["zai"]["tokens"]["disabled"], 1,
        "{ready}"
    );
}

fn replace_file(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
fn reload_adds_changes_and_removes_a_provider() {
    let rt = runtime();
    let zai = rt
        .block_on(ZaiMock::start(
            "127.0.0.1:0".parse().unwrap(),
            ZaiMockConfig::default(),
        ))
        .unwrap();
    let zai_base = zai.base_url();
    let dir = temp_dir("zai-reload");
    let path = dir.join("k2proxy.yaml");
    let config = |base: &str, port: u16, providers: &str| {
        format!(
            "server: {{listen: [\"127.0.0.1:{port}\"], threads: 2}}\nupstream: {{base_url: \"{base}\"}}\nlogging: {{access_log: false}}\nmetrics: {{listen: null}}\n{providers}"
        )
    };
    let env = Env::start_file(MockConfig::horizon(), &path, |base, port| {
        config(base, port, "")
    });
    let k2_base = env.mock().base_url();
    let has = |id: &str| {
        env.get("/v1/models").json()["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == id)
    };
    assert!(!has("GLM-4.7"));

    // Added: its catalogue appears and serves.
    let added = format!("providers:\n  zai: {{kind: zai, base_url: \"{zai_base}\", guests: 2}}\n");
    replace_file(&path, &config(&k2_base, env.port, &added));
    within(Duration::from_secs(3), "the Z.AI models", || has("GLM-4.7"));
    let r = env.chat(&chat_body("GLM-4.7", "after reload", false));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(zai.guests_created(), 1);

    // Changed: the new settings apply to the next request (the guest pool starts over).
    let changed = format!(
        "providers:\n  zai: {{kind: zai, base_url: \"{zai_base}\", guests: 1, create_chats: false}}\n"
    );
    replace_file(&path, &config(&k2_base, env.port, &changed));
    within(Duration::from_secs(3), "the change", || {
        matches!(
            env.app.snapshot().config.providers.get("zai"),
            Some(ProviderEntry::Zai(z)) if !z.create_chats
        )
    });
    let chats = zai.chats_created();
    assert_eq!(
        env.chat(&chat_body("GLM-4.7", "changed", false)).status,
        200
    );
    assert_eq!(zai.chats_created(), chats, "create_chats: false applies");
    assert_eq!(zai.guests_created(), 2, "a new runtime, a new guest");

    // Removed: its models are gone; K2Think still serves.
    replace_file(&path, &config(&k2_base, env.port, ""));
    within(Duration::from_secs(3), "the removal", || !has("GLM-4.7"));
    env.chat(&chat_body("GLM-4.7", "gone", false))
        .assert_error(404, "model_not_found");
    assert_eq!(
        env.chat(&chat_body("IFM/K2-Horizon", "k2", false)).status,
        200
    );
}
