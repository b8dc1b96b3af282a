//! `k2proxy probe` as an operator runs it: the real binary against the mock upstream in
//! each of its personalities (K2 Horizon, the old host, the old host's guest path as it
//! answers today), on loopback only.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{runtime, start_mock, temp_dir, PROXY_BIN};
use k2proxy::mock::{MockConfig, MockServer};
use k2proxy::provider::k2think::{HORIZON_MODEL, LEGACY_MODEL};
use k2proxy::secret::Secret;
use serde_json::Value;

/// A mock upstream on a loopback port, with the runtime serving it.
struct Upstream {
    rt: tokio::runtime::Runtime,
    mock: Option<MockServer>,
}

impl Upstream {
    fn start(cfg: MockConfig) -> Upstream {
        let rt = runtime();
        let mock = start_mock(&rt, cfg);
        Upstream {
            rt,
            mock: Some(mock),
        }
    }

    fn mock(&self) -> &MockServer {
        self.mock.as_ref().expect("running")
    }

    fn base_url(&self) -> String {
        self.mock().base_url()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(m) = self.mock.take() {
            self.rt.block_on(m.shutdown());
        }
    }
}

/// A config file pointing at `base`, with `models` (upstream ids; the public id is the
/// upstream id with `public-` in front), more `upstream` keys (`key: value` lines) and
/// `extra` YAML appended.
fn config_file(tag: &str, base: &str, models: &[&str], upstream: &[&str], extra: &str) -> PathBuf {
    let dir = temp_dir(&format!("probe-{tag}"));
    let path = dir.join("k2proxy.yaml");
    let mut text = format!("upstream:\n  base_url: \"{base}\"\n");
    for line in upstream {
        text.push_str(&format!("  {line}\n"));
    }
    text.push_str("models:\n");
    for m in models {
        text.push_str(&format!("  - {{id: \"public-{m}\", upstream: \"{m}\"}}\n"));
    }
    text.push_str(extra);
    std::fs::write(&path, text).expect("write the config");
    path
}

fn probe(args: &[&str]) -> Output {
    Command::new(PROXY_BIN)
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run k2proxy")
}

/// `k2proxy probe --json -c FILE ARGS…`: the exit code and the report.
fn probe_json(conf: &Path, args: &[&str]) -> (i32, Value) {
    let conf = conf.to_str().expect("utf-8 path");
    let mut all = vec!["probe", "--json", "-c", conf];
    all.extend_from_slice(args);
    let out = probe(&all);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "not a JSON report ({e}): {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().expect("an exit code"), report)
}

fn check<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name}: {report:#}"))
}

fn chat_checks(report: &Value) -> Vec<&Value> {
    report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .filter(|c| c["kind"] == "chat")
        .collect()
}

fn stream_check(model: &str) -> String {
    format!("chat {model} (stream)")
}

fn json_check(model: &str) -> String {
    format!("chat {model} (non-stream)")
}

#[test]
fn passes_against_k2_horizon() {
    let up = Upstream::start(MockConfig::horizon());
    let conf = config_file("horizon", &up.base_url(), &[HORIZON_MODEL], &[], "");
    let (code, report) = probe_json(&conf, &[]);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["ok"], true);
    assert_eq!(report["mode"], "guest");
    assert_eq!(report["token"], Value::Null);
    assert_eq!(report["upstream"], up.base_url());
    // the mock serves its model list to signed-in callers only
    let models = check(&report, "models");
    assert_eq!(models["result"], "skipped", "{models:#}");
    assert_eq!(models["status"], 401);
    let chats = chat_checks(&report);
    assert_eq!(chats.len(), 2, "one streamed and one non-streamed chat");
    for c in &chats {
        assert_eq!(c["result"], "ok", "{c:#}");
        assert_eq!(c["status"], 200);
        assert_eq!(c["upstream_model"], HORIZON_MODEL);
        assert_eq!(
            c["models"],
            serde_json::json!([format!("public-{HORIZON_MODEL}")])
        );
        let o = &c["observed"];
        assert_eq!(o["markup"], "details+bare", "{c:#}");
        assert!(o["answer_head"]
            .as_str()
            .is_some_and(|a| a.starts_with("Echo: Once more")));
        assert!(o["reasoning_chars"].as_u64().is_some_and(|n| n > 0));
        // the finish chunk after `done` was not added on top of the answer
        assert_eq!(o["answer_matches_text"], true, "{c:#}");
    }
    let s = &check(&report, &stream_check(HORIZON_MODEL))["observed"];
    assert_eq!(s["delivery"], "cumulative");
    assert_eq!(s["task_id"], true);
    assert_eq!(s["done_event"], true);
    assert_eq!(s["finish_chunk_after_done"], true);
    assert_eq!(s["finish_reason_after_done"], "stop");
    assert_eq!(s["end"], "done_then_ragged");
    assert_eq!(s["clean_end"], true);
    let j = &check(&report, &json_check(HORIZON_MODEL))["observed"];
    assert_eq!(j["delivery"], "json");
    assert_eq!(j["end"], "eof");
    // the checks sent what requests send: the two-turn history, once streamed, once not
    let sent: Vec<Value> = up
        .mock()
        .requests()
        .into_iter()
        .filter(|r| r.path == "/api/guest/chat/completions")
        .filter_map(|r| r.json)
        .collect();
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[0]["stream"], true);
    assert_eq!(sent[1]["stream"], false);
    for body in &sent {
        assert_eq!(body["model"], HORIZON_MODEL);
        assert_eq!(body["messages"].as_array().map(Vec::len), Some(3));
        assert_eq!(body["messages"][1]["role"], "assistant");
    }
}

#[test]
fn passes_against_the_old_host() {
    let up = Upstream::start(MockConfig::default());
    let conf = config_file("oldhost", &up.base_url(), &[LEGACY_MODEL], &[], "");
    let (code, report) = probe_json(&conf, &[]);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["ok"], true);
    for c in chat_checks(&report) {
        assert_eq!(c["result"], "ok", "{c:#}");
        assert_eq!(c["observed"]["markup"], "think", "{c:#}");
        assert_eq!(c["observed"]["task_id"], false);
        assert_eq!(c["observed"]["finish_chunk_after_done"], false);
        assert_eq!(c["observed"]["answer_matches_text"], true);
    }
    let s = &check(&report, &stream_check(LEGACY_MODEL))["observed"];
    assert_eq!(s["end"], "done_marker");
    assert_eq!(s["done_marker"], true);
    assert_eq!(s["delivery"], "cumulative");
}

#[test]
fn fails_clearly_against_the_legacy_host_switch() {
    let up = Upstream::start(MockConfig {
        legacy_guest_400: true,
        ..MockConfig::default()
    });
    let conf = config_file("legacy", &up.base_url(), &[LEGACY_MODEL], &[], "");
    let (code, report) = probe_json(&conf, &[]);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(report["ok"], false);
    let chats = chat_checks(&report);
    assert_eq!(chats.len(), 2);
    for c in chats {
        assert_eq!(c["result"], "failed", "{c:#}");
        assert_eq!(c["status"], 400);
        assert_eq!(c["detail"], "Model not found");
        assert_eq!(c["reason"], "HTTP 400: Model not found");
        assert_eq!(c["observed"], Value::Null);
    }
    // and for people: each check named, the failure's detail under it
    let out = probe(&["probe", "-c", conf.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(1));
    let table = String::from_utf8_lossy(&out.stdout);
    for name in [stream_check(LEGACY_MODEL), json_check(LEGACY_MODEL)] {
        let row = table
            .lines()
            .find(|l| l.starts_with(&name))
            .unwrap_or_else(|| panic!("no row {name}: {table}"));
        assert!(
            row.contains("FAILED") && row.contains("HTTP 400: Model not found"),
            "{row}"
        );
    }
    assert!(
        table
            .lines()
            .any(|l| l.trim() == "detail   Model not found"),
        "{table}"
    );
    assert!(
        table.contains("0 ok, 2 failed, 1 skipped: FAILED"),
        "{table}"
    );
}

#[test]
fn fails_clearly_on_a_thinking_field_violation() {
    let up = Upstream::start(MockConfig::horizon());
    // `thinking_field: ""`: assistant turns go upstream without a thinking field
    let conf = config_file(
        "thinking",
        &up.base_url(),
        &[HORIZON_MODEL],
        &["thinking_field: \"\""],
        "",
    );
    let (code, report) = probe_json(&conf, &[]);
    assert_eq!(code, 1, "{report:#}");
    for c in chat_checks(&report) {
        assert_eq!(c["result"], "failed", "{c:#}");
        assert_eq!(c["status"], 400);
        let detail = c["detail"].as_str().expect("a detail");
        assert!(
            detail.starts_with("messages[1]: Add a supported thinking field"),
            "{detail}"
        );
        assert!(detail.contains("reasoning_content"), "{detail}");
    }
}

#[test]
fn user_mode_sends_the_token_and_shows_it_masked_only() {
    let raw = "eyJhbGciOiJIUzI1NiJ9.probe-secret-payload.sig-X9c";
    let masked = Secret::new(raw).masked();
    let up = Upstream::start(MockConfig::default());
    let conf = config_file(
        "token",
        &up.base_url(),
        &[LEGACY_MODEL],
        &[],
        &format!("pool:\n  tokens: [\"{raw}\"]\n"),
    );
    let path = conf.to_str().expect("utf-8");
    let json = probe(&["probe", "--json", "-c", path]);
    let table = probe(&["-c", path, "probe"]);
    for out in [&json, &table] {
        assert_eq!(out.status.code(), Some(0));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !stdout.contains(raw) && !stderr.contains(raw),
            "{stdout}{stderr}"
        );
        assert!(!stdout.contains("probe-secret-payload"), "{stdout}");
        assert!(stdout.contains(&masked), "{stdout}");
    }
    let report: Value = serde_json::from_slice(&json.stdout).expect("JSON");
    assert_eq!(report["mode"], "user");
    assert_eq!(report["token"], masked.as_str());
    // signed in, the model list is served and checked
    let models = check(&report, "models");
    assert_eq!(models["result"], "ok", "{models:#}");
    assert_eq!(models["observed"]["missing"], serde_json::json!([]));
    // the token really went upstream, on every check
    let requests = up.mock().requests();
    assert_eq!(requests.len(), 6, "two runs of three checks");
    for r in requests {
        assert_eq!(r.bearer.as_deref(), Some(raw), "{}", r.path);
    }
}

#[test]
fn a_missing_model_and_a_missing_token_fail_with_what_to_do() {
    let up = Upstream::start(MockConfig::default());
    let conf = config_file(
        "missing",
        &up.base_url(),
        &[LEGACY_MODEL, "MBZUAI-IFM/K2-Retired"],
        &[],
        "pool:\n  tokens: [\"tok-models\"]\n",
    );
    let (code, report) = probe_json(&conf, &[]);
    assert_eq!(code, 1, "{report:#}");
    let models = check(&report, "models");
    assert_eq!(models["result"], "failed");
    assert_eq!(
        models["reason"],
        "configured upstream model(s) not listed: MBZUAI-IFM/K2-Retired"
    );
    assert_eq!(
        models["observed"]["missing"],
        serde_json::json!(["MBZUAI-IFM/K2-Retired"])
    );
    // --model narrows the run to that model's upstream id
    let (code, report) = probe_json(&conf, &["--model", &format!("public-{LEGACY_MODEL}")]);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(chat_checks(&report).len(), 2);

    let conf = config_file(
        "notoken",
        &up.base_url(),
        &[LEGACY_MODEL],
        &["mode: user"],
        "",
    );
    let sent = up.mock().requests().len();
    let (code, report) = probe_json(&conf, &[]);
    assert_eq!(code, 1, "{report:#}");
    let token = check(&report, "token");
    assert_eq!(token["result"], "failed");
    assert!(
        token["reason"]
            .as_str()
            .is_some_and(|r| r.contains("pool.tokens") && r.contains("pool.tokens_file")),
        "{token:#}"
    );
    for c in &report["checks"].as_array().expect("checks")[1..] {
        assert_eq!(c["result"], "skipped", "{c:#}");
    }
    assert_eq!(
        up.mock().requests().len(),
        sent,
        "nothing sent without a token"
    );
}

#[test]
fn each_check_has_its_own_timeout() {
    let up = Upstream::start(MockConfig::default());
    let conf = config_file(
        "timeout",
        &up.base_url(),
        &[LEGACY_MODEL],
        &[],
        "pool:\n  tokens: [\"slow-token;fault=slowhead;slowhead_ms=8000\"]\n",
    );
    let started = Instant::now();
    let (code, report) = probe_json(&conf, &["--timeout", "1s"]);
    let took = started.elapsed();
    assert_eq!(code, 1, "{report:#}");
    // the model list is not slowed down, and is still checked
    assert_eq!(check(&report, "models")["result"], "ok", "{report:#}");
    let chats = chat_checks(&report);
    assert_eq!(chats.len(), 2, "a timed-out check does not stop the others");
    for c in chats {
        assert_eq!(c["result"], "failed", "{c:#}");
        assert_eq!(c["reason"], "no response head within 1s (--timeout)");
        let ms = c["elapsed_ms"].as_u64().expect("elapsed_ms");
        assert!((900..3000).contains(&ms), "{ms} ms");
    }
    assert!(took < Duration::from_secs(6), "{took:?}");
}

#[test]
fn the_table_names_every_check() {
    let up = Upstream::start(MockConfig::default());
    let conf = config_file("table", &up.base_url(), &[LEGACY_MODEL], &[], "");
    let out = probe(&["probe", "--conf", conf.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(0));
    let table = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(
        lines[0],
        format!("k2proxy probe: {} (guest mode)", up.base_url())
    );
    let header = lines
        .iter()
        .position(|l| l.starts_with("CHECK"))
        .expect("a header row");
    assert!(lines[header].contains("RESULT") && lines[header].contains("SUMMARY"));
    let rows: Vec<&str> = lines[header + 1..]
        .iter()
        .copied()
        .filter(|l| !l.starts_with("    ") && !l.is_empty())
        .take(3)
        .collect();
    // Under each chat row, the events the upstream sent.
    let events: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.starts_with("    events   "))
        .collect();
    assert_eq!(events.len(), 2, "{table}");
    assert!(events[0].ends_with("done [DONE]"), "{table}");
    assert_eq!(events[1], "    events   json", "{table}");
    assert!(
        rows[0].starts_with("models") && rows[0].contains("skipped"),
        "{table}"
    );
    assert!(
        rows[0].contains("not served to this caller: HTTP 401"),
        "{table}"
    );
    for (row, name) in rows[1..]
        .iter()
        .zip([stream_check(LEGACY_MODEL), json_check(LEGACY_MODEL)])
    {
        assert!(row.starts_with(&name), "{row}");
        assert!(row.contains(" ok "), "{row}");
        assert!(row.contains("HTTP 200") && row.contains("think"), "{row}");
        assert!(row.contains("\"Echo: Once more"), "{row}");
    }
    assert!(
        rows[1].contains("[DONE]") && rows[2].contains("end of body"),
        "{table}"
    );
    assert_eq!(lines.last().copied(), Some("2 ok, 0 failed, 1 skipped: OK"));
}

#[test]
fn usage_and_config_errors_exit_2() {
    let up = Upstream::start(MockConfig::default());
    let conf = config_file("usage", &up.base_url(), &[LEGACY_MODEL], &[], "");
    let path = conf.to_str().expect("utf-8");
    let cases: [&[&str]; 4] = [
        &["probe", "-c", path, "--model", "no-such-model"],
        &["probe", "-c", path, "--timeout", "soon"],
        &["-t", "probe", "-c", path],
        &["probe", "-c", "/nonexistent/k2proxy.yaml"],
    ];
    for args in cases {
        let out = probe(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
        assert!(!out.stderr.is_empty(), "{args:?}");
    }
    let out = probe(&["probe", "-c", path, "--model", "no-such-model"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--model no-such-model: not a configured model"),
        "{err}"
    );
    assert!(up.mock().requests().is_empty(), "nothing was sent");
}
