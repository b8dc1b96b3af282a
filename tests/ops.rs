//! Operations: hot reload (file, SIGHUP, admin), graceful shutdown, metrics, access log,
//! and the systemd unit.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{
    chat_body, raw, spawn_proxy, temp_dir, within, within_showing, Env, Proc, Sse,
    LEGACY_MODELS_YAML, MODEL,
};
use k2proxy::mock::{MockConfig, MockServer};
use serde_json::{json, Value};

const PROXY: &str = common::PROXY_BIN;

/// A full config for the reload tests.
fn yaml(base: &str, port: u16, keys: &[&str], tokens: &[&str], extra_models: &[&str]) -> String {
    let list = |v: &[&str]| {
        v.iter()
            .map(|s| format!("\"{s}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut models = format!("  - {{id: \"{MODEL}\", upstream: \"{MODEL}\"}}\n");
    for m in extra_models {
        models.push_str(&format!(
            "  - {{id: \"{m}\", upstream: \"{MODEL}\", reasoning: false}}\n"
        ));
    }
    format!(
        "server:\n  listen: [\"127.0.0.1:{port}\"]\nmetrics:\n  listen: null\n\
         upstream:\n  base_url: \"{base}\"\n  mode: user\n\
         auth:\n  api_keys: [{}]\npool:\n  tokens: [{}]\nretry:\n  backoff: 10ms\n\
         logging:\n  access_log: false\nmodels:\n{models}",
        list(keys),
        list(tokens)
    )
}

/// Replace a file the way editors and atomic writers do (write aside, rename over).
fn replace_file(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn authed(env: &Env, key: &str, req: reqwest::RequestBuilder) -> common::Resp {
    env.send(req.header("authorization", format!("Bearer {key}")))
}

#[test]
fn reload_under_load_loses_nothing_and_applies_within_a_second() {
    let dir = temp_dir("load");
    let path = dir.join("k2proxy.yaml");
    const KEY: &str = "sk-steady-client-key";
    let env = Env::start_file(MockConfig::default(), &path, |base, port| {
        yaml(base, port, &[KEY], &["tok-1"], &[])
    });
    let base = env.mock().base_url();
    let port = env.port;

    // Clients keep streams and plain requests flowing through every reload.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failures: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut tasks = Vec::new();
    for worker in 0..4 {
        let (stop, ok, failures) = (stop.clone(), ok.clone(), failures.clone());
        let client = env.client.clone();
        let url = env.url("/v1/chat/completions");
        tasks.push(env.rt.spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let stream = (worker + i).is_multiple_of(2);
                let body = chat_body(
                    MODEL,
                    &format!("w{worker} r{i} [[mock: pace_ms=3]]"),
                    stream,
                );
                let r = client
                    .post(&url)
                    .header("authorization", format!("Bearer {KEY}"))
                    .body(body.to_string())
                    .send()
                    .await;
                let verdict = match r {
                    Err(e) => Err(format!("transport: {e}")),
                    Ok(r) => {
                        let status = r.status().as_u16();
                        let text = r.text().await.unwrap_or_default();
                        if status != 200 {
                            Err(format!("status {status}: {text}"))
                        } else if stream
                            && (!text.contains("data: [DONE]") || text.contains("\"error\""))
                        {
                            Err(format!("broken stream: {text}"))
                        } else {
                            Ok(())
                        }
                    }
                };
                match verdict {
                    Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        failures.lock().unwrap().push(e);
                        0
                    }
                };
            }
        }));
    }

    // Many edits, valid and invalid mixed, written in place and by rename.
    let bad_edits = [
        "server: [unclosed\n".to_string(),
        format!(
            "{}upstream_typo: 1\n",
            yaml(&base, port, &[KEY], &["tok-1"], &[])
        ),
        yaml(&base, port, &[KEY], &["tok-1"], &[]).replace("backoff: 10ms", "backoff: 10 parsecs"),
    ];
    for i in 0..24 {
        let text = if i % 3 == 2 {
            bad_edits[i % bad_edits.len()].clone()
        } else {
            let key = format!("sk-key-generation-{i:02}");
            let tok = format!("tok-gen-{i}");
            let model = format!("model-gen-{i}");
            yaml(&base, port, &[KEY, &key], &["tok-1", &tok], &[&model])
        };
        if i % 2 == 0 {
            std::fs::write(&path, &text).unwrap();
        } else {
            replace_file(&path, &text);
        }
        std::thread::sleep(Duration::from_millis(60));
    }

    // The final edit: a new key, a new model and a new (only) token.
    const NEW_KEY: &str = "sk-brand-new-key-final";
    replace_file(
        &path,
        &yaml(
            &base,
            port,
            &[KEY, NEW_KEY],
            &["tok-final"],
            &["model-final"],
        ),
    );
    let took = within(Duration::from_secs(1), "new key, model and token", || {
        let models = authed(&env, NEW_KEY, env.client.get(env.url("/v1/models")));
        if models.status != 200 || !models.text().contains("model-final") {
            return false;
        }
        let r = authed(
            &env,
            NEW_KEY,
            env.client
                .post(env.url("/v1/chat/completions"))
                .body(chat_body("model-final", "after reload", false).to_string()),
        );
        r.status == 200
            && env
                .requests()
                .last()
                .and_then(|q| q.bearer.clone())
                .as_deref()
                == Some("tok-final")
    });
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        env.rt.block_on(t).unwrap();
    }
    let failures = failures.lock().unwrap();
    let served = ok.load(Ordering::Relaxed);
    assert!(
        failures.is_empty(),
        "{} failed of {}: {:?}",
        failures.len(),
        served + failures.len(),
        &failures[..failures.len().min(3)]
    );
    assert!(served > 20, "the clients kept working: {served}");
    eprintln!("reload under load: {served} requests, 0 failures; final edit applied in {took:?}");

    let status = authed(&env, KEY, env.client.get(env.url("/admin/config/status"))).json();
    let data = &status["data"];
    assert!(data["reloads"].as_u64().unwrap() >= 10, "{status}");
    assert!(data["failures"].as_u64().unwrap() >= 1, "{status}");
    assert_eq!(data["last_attempt"]["result"], "success");
    let changed: Vec<&str> = data["last_attempt"]["changed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        changed.contains(&"auth.api_keys")
            && changed.contains(&"models")
            && changed.contains(&"pool.tokens"),
        "{changed:?}"
    );
    assert!(
        !status.to_string().contains(NEW_KEY),
        "no secrets in the status"
    );

    // A bad edit keeps the old config serving and says exactly what is wrong.
    std::fs::write(
        &path,
        yaml(
            &base,
            port,
            &[KEY, NEW_KEY],
            &["tok-final"],
            &["model-final"],
        )
        .replace("mode: user", "mode: sometimes"),
    )
    .unwrap();
    within(Duration::from_secs(1), "failed reload recorded", || {
        let s = authed(&env, KEY, env.client.get(env.url("/admin/config/status"))).json();
        s["data"]["last_attempt"]["result"] == "failure"
    });
    let s = authed(&env, KEY, env.client.get(env.url("/admin/config/status"))).json();
    let err = s["data"]["last_attempt"]["error"].as_str().unwrap();
    assert!(
        err.contains("upstream.mode") && err.contains("line"),
        "{err}"
    );
    let r = authed(
        &env,
        NEW_KEY,
        env.client
            .post(env.url("/v1/chat/completions"))
            .body(chat_body("model-final", "x", false).to_string()),
    );
    assert_eq!(r.status, 200, "the previous configuration keeps serving");
}

#[test]
fn an_in_flight_stream_keeps_the_snapshot_it_started_with() {
    let dir = temp_dir("snapshot");
    let path = dir.join("k2proxy.yaml");
    const OLD_KEY: &str = "sk-old-key-123456789";
    let env = Env::start_file(MockConfig::default(), &path, |base, port| {
        yaml(base, port, &[OLD_KEY], &["tok-a"], &["model-old"])
    });
    let base = env.mock().base_url();
    env.rt.block_on(async {
        let mut resp = env
            .client
            .post(env.url("/v1/chat/completions"))
            .header("authorization", format!("Bearer {OLD_KEY}"))
            .body(
                chat_body("model-old", "hold [[mock: gate=snap; gate_after=2]]", true).to_string(),
            )
            .send()
            .await
            .unwrap();
        let first = resp.chunk().await.unwrap().unwrap();
        assert!(!first.is_empty());
        // Remove the key, the model and the token while the stream is held upstream.
        replace_file(
            &path,
            &yaml(&base, env.port, &["sk-other-key-98765432"], &["tok-b"], &[]),
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            env.app.snapshot().config.auth.api_keys[0].key,
            "sk-other-key-98765432"
        );
        env.mock().open_gate("snap");
        let mut raw = String::from_utf8(first.to_vec()).unwrap();
        while let Some(c) = resp.chunk().await.unwrap() {
            raw.push_str(std::str::from_utf8(&c).unwrap());
        }
        let s = Sse::parse(&raw);
        s.assert_well_formed();
        assert_eq!(s.finish_reason().as_deref(), Some("stop"));
    });
    // New requests see the new config.
    let r = authed(&env, OLD_KEY, env.client.get(env.url("/v1/models")));
    r.assert_error(401, "invalid_api_key");
}

#[test]
fn admin_reload_and_status_need_the_admin_key() {
    let dir = temp_dir("admin");
    let path = dir.join("k2proxy.yaml");
    const ADMIN: &str = "admin-key-0123456789";
    let conf = |base: &str, port: u16, level: &str| {
        format!(
            "{}admin:\n  key: \"{ADMIN}\"\n",
            yaml(base, port, &["sk-client-key-000000"], &["tok"], &[]).replace(
                "logging:\n  access_log: false\n",
                &format!("logging:\n  access_log: false\n  level: {level}\n")
            )
        )
    };
    let env = Env::start_file(MockConfig::default(), &path, |b, p| conf(b, p, "info"));
    env.send(env.client.post(env.url("/admin/config/reload")))
        .assert_error(401, "invalid_admin_key");
    authed(
        &env,
        "sk-client-key-000000",
        env.client.get(env.url("/admin/config/status")),
    )
    .assert_error(401, "invalid_admin_key");
    let r = authed(
        &env,
        ADMIN,
        env.client.post(env.url("/admin/config/reload")),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["data"]["trigger"], "admin");
    assert_eq!(v["data"]["changed"], json!([]));
    // Write `text` as the config, reload; the reload's answer, and whether the API still
    // wants a key.
    let reload_with = |text: &str| {
        std::fs::write(&path, text).unwrap();
        let v = authed(
            &env,
            ADMIN,
            env.client.post(env.url("/admin/config/reload")),
        )
        .json();
        let locked = env.get("/v1/models").status == 401;
        (v, locked)
    };
    // a listener change is applied only after a restart, and says so
    let text = conf(&env.mock().base_url(), env.port, "debug").replace(
        "metrics:\n  listen: null",
        "metrics:\n  listen: \"127.0.0.1:1\"",
    );
    let (v, _) = reload_with(&text);
    assert_eq!(v["status"], "success");
    assert_eq!(v["data"]["need_restart"], json!(["metrics.listen"]));
    assert!(v["data"]["changed"]
        .as_array()
        .unwrap()
        .contains(&json!("logging.level")));
    authed(&env, ADMIN, env.client.get(env.url("/admin/config/reload")))
        .assert_error(405, "method_not_allowed");
    // An emptied file (a truncating rewrite caught midway, `: > file`) is refused: the keys
    // stay, and nobody gets in without one (issue 16, item 1).
    for blank in ["", "# nothing but a comment\n"] {
        let (v, locked) = reload_with(blank);
        assert_ne!(v["status"], "success", "{v}");
        assert!(
            v.to_string().contains("empty or holds only comments"),
            "{v}"
        );
        assert!(locked, "the keys stay in force");
    }
    // A file that lost its `auth` section keeps the keys; one that says `api_keys: []`
    // drops them (issue 16, item 1).
    let full = conf(&env.mock().base_url(), env.port, "info");
    let keys = "auth:\n  api_keys: [\"sk-client-key-000000\"]\n";
    assert!(full.contains(keys));
    let (v, locked) = reload_with(&full.replace(keys, ""));
    assert_ne!(v["status"], "success", "{v}");
    assert!(v.to_string().contains("auth: {api_keys: []}"), "{v}");
    assert!(locked, "the keys stay in force");
    let (v, locked) = reload_with(&full.replace(keys, "auth:\n  api_keys: []\n"));
    assert_eq!(v["status"], "success", "{v}");
    assert!(!locked, "said explicitly: the API is open");
}

#[test]
fn metrics_count_requests_attempts_streams_and_pool_state() {
    let metrics_port = common::free_port();
    let env = Env::start(MockConfig::default(), |c| {
        c.metrics.listen = Some(format!("127.0.0.1:{metrics_port}"));
        c.pool.tokens =
            common::tokens(&["tok-429-secret;fault=429;retry_after=30", "tok-ok-secret"]);
    });
    common::wait_port(metrics_port);
    assert_eq!(
        env.stream(&chat_body(MODEL, "one [[mock: pace_ms=2]]", true))
            .finish_reason()
            .as_deref(),
        Some("stop")
    );
    assert_eq!(env.chat(&chat_body(MODEL, "two", false)).status, 200);
    let cut = env.stream(&chat_body(
        MODEL,
        "three [[mock: fault=cut; cut_after=4]]",
        true,
    ));
    assert_eq!(cut.finish_reason().as_deref(), Some("error"));
    env.chat(&chat_body("no-such-model", "x", false))
        .assert_error(404, "model_not_found");

    let url = format!("http://127.0.0.1:{metrics_port}/metrics");
    let scrape = || env.send(env.client.get(&url)).text();
    let value = |text: &str, series: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(-1.0)
    };
    let m = format!("model=\"{MODEL}\"");
    // A request is counted once its answer has ended, which the client may see first;
    // the last scrape is shown if the counts never arrive.
    within_showing(Duration::from_secs(10), "request counters", || {
        let t = scrape();
        let counted = value(
            &t,
            &format!("k2proxy_requests_total{{{m},route=\"chat\",status=\"200\"}}"),
        ) == 3.0
            && value(
                &t,
                "k2proxy_requests_total{model=\"unknown\",route=\"chat\",status=\"404\"}",
            ) == 1.0;
        if counted {
            Ok(())
        } else {
            Err(t)
        }
    });
    let t = scrape();
    assert_eq!(
        value(&t, "k2proxy_upstream_attempts_total{result=\"429\"}"),
        1.0,
        "{t}"
    );
    assert_eq!(
        value(&t, "k2proxy_upstream_attempts_total{result=\"200\"}"),
        3.0,
        "{t}"
    );
    assert_eq!(value(&t, "k2proxy_upstream_retries_total"), 1.0, "{t}");
    assert_eq!(
        value(&t, "k2proxy_stream_outcomes_total{outcome=\"complete\"}"),
        1.0,
        "{t}"
    );
    assert_eq!(
        value(
            &t,
            "k2proxy_stream_outcomes_total{outcome=\"upstream_error\"}"
        ),
        1.0,
        "{t}"
    );
    assert_eq!(
        value(&t, "k2proxy_time_to_first_token_seconds_count"),
        2.0,
        "{t}"
    );
    assert!(
        value(&t, "k2proxy_stream_chunk_gap_seconds_count") > 2.0,
        "{t}"
    );
    assert_eq!(
        value(&t, "k2proxy_pool_tokens{state=\"cooling\"}"),
        1.0,
        "{t}"
    );
    assert_eq!(
        value(&t, "k2proxy_pool_tokens{state=\"active\"}"),
        1.0,
        "{t}"
    );
    assert_eq!(
        value(
            &t,
            &format!(
                "k2proxy_build_info{{version=\"{}\"}}",
                env!("CARGO_PKG_VERSION")
            )
        ),
        1.0
    );
    assert!(t.contains("# TYPE k2proxy_request_duration_seconds histogram"));
    assert!(
        !t.contains("secret") && !t.contains("tok-"),
        "no tokens in metrics"
    );
    assert_eq!(
        env.send(
            env.client
                .get(format!("http://127.0.0.1:{metrics_port}/other"))
        )
        .status,
        404
    );

    // a client that hangs up mid-stream is counted as client_abort
    env.rt.block_on(async {
        let mut r = env
            .client
            .post(env.url("/v1/chat/completions"))
            .body(chat_body(MODEL, "bye [[mock: pace_ms=20; answer_words=200]]", true).to_string())
            .send()
            .await
            .unwrap();
        assert!(r.chunk().await.unwrap().is_some());
    });
    within(Duration::from_secs(3), "client_abort counted", || {
        value(
            &scrape(),
            "k2proxy_stream_outcomes_total{outcome=\"client_abort\"}",
        ) == 1.0
    });
}

// ---- the real binary: SIGHUP, SIGTERM, access log ----

fn signal(p: &Proc, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &p.child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

fn post(port: u16, key: &str, body: &str) -> String {
    raw(
        port,
        &format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {key}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    )
}

fn mock_runtime() -> (tokio::runtime::Runtime, MockServer) {
    let rt = common::runtime();
    let mock = common::start_mock(&rt, MockConfig::default());
    (rt, mock)
}

#[test]
fn sighup_reloads_the_binary_and_sigterm_lets_a_stream_finish() {
    let (rt, mock) = mock_runtime();
    let dir = temp_dir("signals");
    let path = dir.join("k2proxy.yaml");
    let port = common::free_port();
    let text = |key: &str| {
        yaml(&mock.base_url(), port, &[key], &["tok"], &[]).replace(
            "server:\n",
            "server:\n  grace_period: 4s\n  graceful_shutdown_timeout: 1s\n",
        )
    };
    std::fs::write(&path, text("sk-first-key-0000000")).unwrap();
    let proc = spawn_proxy(&path, port);
    let status = || {
        let r = raw(
            port,
            "GET /admin/config/status HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        );
        let body = r.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
        serde_json::from_str::<Value>(&body).unwrap_or(Value::Null)
    };
    // a file edit reloads by itself
    replace_file(&path, &text("sk-second-key-000000"));
    within(Duration::from_secs(2), "file-triggered reload", || {
        status()["data"]["last_attempt"]["trigger"] == "file"
    });
    assert!(post(
        port,
        "sk-second-key-000000",
        &chat_body(MODEL, "x", false).to_string()
    )
    .starts_with("HTTP/1.1 200"));
    // SIGHUP reloads too (no change on disk this time)
    signal(&proc, "-HUP");
    within(Duration::from_secs(2), "SIGHUP reload", || {
        status()["data"]["last_attempt"]["trigger"] == "sighup"
    });

    // SIGTERM with a stream in flight: the stream completes within the grace period.
    let body = chat_body(
        MODEL,
        "drain me [[mock: pace_ms=100; reasoning_words=10]]",
        true,
    )
    .to_string();
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(s, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer sk-second-key-000000\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
    let mut reader = BufReader::new(s);
    let mut got = String::new();
    while !got.contains("reasoning_content") {
        let mut line = String::new();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "stream ended early: {got}"
        );
        got.push_str(&line);
    }
    let sigterm_at = Instant::now();
    let mut proc = proc;
    signal(&proc, "-TERM");
    reader.read_to_string(&mut got).unwrap();
    assert!(
        got.contains("data: [DONE]"),
        "the in-flight stream finished: {got}"
    );
    assert!(!got.contains("\"finish_reason\":\"error\""));
    let exit = loop {
        if let Some(s) = proc.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            sigterm_at.elapsed() < Duration::from_secs(15),
            "the process must exit after the grace period"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "{exit:?}");
    drop(rt);
}

/// The access log is written off the worker threads in batches (issue 20); a graceful
/// shutdown still writes every line: the requests answered just before SIGTERM included.
#[test]
fn every_access_log_line_is_written_on_a_graceful_shutdown() {
    let (_rt, mock) = mock_runtime();
    let dir = temp_dir("accesslog-shutdown");
    let path = dir.join("k2proxy.yaml");
    let port = common::free_port();
    let text = yaml(
        &mock.base_url(),
        port,
        &["sk-log-key-000000000"],
        &["tok"],
        &[],
    )
    .replace(
        "server:\n",
        "server:\n  grace_period: 0s\n  graceful_shutdown_timeout: 1s\n",
    )
    .replace("access_log: false", "access_log: true");
    std::fs::write(&path, text).unwrap();
    let mut proc = spawn_proxy(&path, port);
    let stdout = proc.child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        let _ = BufReader::new(stdout).read_to_string(&mut all);
        all
    });
    let body = chat_body(MODEL, "hi", false).to_string();
    for _ in 0..40 {
        assert!(post(port, "sk-log-key-000000000", &body).starts_with("HTTP/1.1 200"));
    }
    // SIGTERM right after the last answer: its line is still queued (the writer puts its
    // batch out every 100 ms), and must be written before the process ends.
    signal(&proc, "-TERM");
    let status = proc.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let log = reader.join().unwrap();
    assert_eq!(log.lines().count(), 40, "{log}");
}

#[test]
fn json_access_log_has_every_field_and_no_secrets() {
    let (rt, mock) = mock_runtime();
    let dir = temp_dir("accesslog");
    let path = dir.join("k2proxy.yaml");
    let port = common::free_port();
    let conf = format!(
        "server:\n  listen: [\"127.0.0.1:{port}\"]\nmetrics:\n  listen: null\n\
         upstream:\n  base_url: \"{}\"\n\
         auth:\n  api_keys: [{{name: team-blue, key: sk-blue-very-secret-key}}]\n\
         pool:\n  tokens: [\"eyJhbGciOi.super-secret-token-payload.sig\"]\n\
         logging:\n  format: json\n{LEGACY_MODELS_YAML}",
        mock.base_url()
    );
    std::fs::write(&path, conf).unwrap();
    let mut proc = spawn_proxy(&path, port);
    let stdout = proc.child.stdout.take().unwrap();
    let prompt = "my private prompt text";
    let r = raw(port, &{
        let b = chat_body(MODEL, prompt, true).to_string();
        format!("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Request-Id: trace-123\r\nAuthorization: Bearer sk-blue-very-secret-key\r\nContent-Length: {}\r\n\r\n{b}", b.len())
    });
    assert!(
        r.starts_with("HTTP/1.1 200") && r.contains("x-request-id: trace-123"),
        "{r}"
    );
    let r = post(port, "sk-wrong", "{}");
    assert!(r.starts_with("HTTP/1.1 401"));
    let mut lines = BufReader::new(stdout).lines();
    let first: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    let second: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(first["request_id"], "trace-123");
    assert_eq!(first["status"], 200);
    assert_eq!(first["key"], "team-blue");
    assert_eq!(first["model"], MODEL);
    assert_eq!(first["attempts"], 1);
    assert_eq!(first["token"], "eyJh….sig");
    assert_eq!(first["outcome"], "complete");
    assert!(first["ttft_ms"].as_f64().unwrap() > 0.0);
    assert!(first["duration_ms"].as_f64().unwrap() >= first["ttft_ms"].as_f64().unwrap());
    assert!(first["bytes_in"].as_u64().unwrap() > 0 && first["bytes_out"].as_u64().unwrap() > 0);
    assert!(first["ts"].as_str().unwrap().ends_with('Z'));
    assert_eq!(second["status"], 401);
    assert!(second["request_id"].as_str().unwrap().starts_with("req_"));
    let all = format!("{first}{second}");
    for secret in [
        "sk-blue-very-secret-key",
        "super-secret-token",
        prompt,
        "sk-wrong",
    ] {
        assert!(!all.contains(secret), "{secret} leaked: {all}");
    }
    drop(proc);
    drop(rt);
}

/// One bodiless admin POST to the real binary, as curl sends it: status line and JSON body.
fn admin_post(port: u16, path: &str) -> (String, Value) {
    let r = raw(
        port,
        &format!("POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"),
    );
    let status = r.lines().next().unwrap_or("").to_string();
    let body = r.split("\r\n\r\n").nth(1).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Put a FIFO at `path` (atomically, as a rename over the file).
fn fifo_over(path: &Path) {
    let tmp = path.with_extension("fifo~");
    let _ = std::fs::remove_file(&tmp);
    assert!(Command::new("mkfifo").arg(&tmp).status().unwrap().success());
    std::fs::rename(&tmp, path).unwrap();
}

/// Put a regular file with `text` at `path`, renamed over whatever is there.
fn rename_in(path: &Path, text: &str) {
    let tmp = path.with_extension("new~");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Put a symlink to `/dev/zero` at `path`.
fn dev_zero_over(path: &Path) {
    let tmp = path.with_extension("zero~");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink("/dev/zero", &tmp).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
fn a_fifo_or_dev_zero_at_the_config_or_tokens_path_fails_the_reload_and_nothing_hangs() {
    // issue 16, item 4: a FIFO at the config path hung the watcher, and one admin reload
    // then hung every route; a symlink to /dev/zero grew the process to gigabytes.
    let dir = temp_dir("fifo");
    let path = dir.join("k2proxy.yaml");
    let tokens = dir.join("tokens.txt");
    std::fs::write(&tokens, "tok-from-file-0001\n").unwrap();
    let port = common::free_port();
    let text = yaml("http://127.0.0.1:9", port, &[], &[], &[]).replace(
        "pool:\n  tokens: []\n",
        &format!("pool:\n  tokens_file: \"{}\"\n", tokens.display()),
    );
    std::fs::write(&path, &text).unwrap();
    let proc = spawn_proxy(&path, port);
    let pid = proc.child.id();
    let health = || {
        raw(
            port,
            "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
    };
    let token_count = || {
        let r = raw(
            port,
            &format!("GET /admin/tokens/stats HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"),
        );
        let body = r.split("\r\n\r\n").nth(1).unwrap_or("");
        serde_json::from_str::<Value>(body).unwrap_or(Value::Null)["data"]["total_tokens"].clone()
    };
    assert_eq!(token_count(), 1);
    let rss_before = rss_kib(pid);

    // The config file, then the tokens file, replaced by a FIFO and by /dev/zero.
    type Case<'a> = (&'a Path, fn(&Path), &'a str, &'a str);
    let cases: [Case; 4] = [
        (&path, fifo_over, "/admin/config/reload", "422"),
        (&path, dev_zero_over, "/admin/config/reload", "422"),
        (&tokens, fifo_over, "/admin/tokens/reload", "500"),
        (&tokens, dev_zero_over, "/admin/tokens/reload", "500"),
    ];
    for (target, replace, route, code) in cases {
        replace(target);
        let (status, v) = admin_post(port, route);
        assert!(
            status.starts_with(&format!("HTTP/1.1 {code}")),
            "{route} after {} became special: {status} {v}",
            target.display()
        );
        let why = if route == "/admin/config/reload" {
            v["data"]["error"].as_str().unwrap_or_default().to_string()
        } else {
            v["message"].as_str().unwrap_or_default().to_string()
        };
        assert!(why.contains("not a regular file"), "{v}");
        assert!(
            health().starts_with("HTTP/1.1 200"),
            "/health keeps answering"
        );
        assert_eq!(token_count(), 1, "the previous tokens keep serving");
        // The files back, each renamed over what is there (writing into a FIFO would block
        // the test). Never removed or truncated first: the watcher may reload at any moment,
        // and a missing or empty tokens file is a valid file with no tokens.
        rename_in(&path, &text);
        rename_in(&tokens, "tok-from-file-0001\n");
    }
    let (status, v) = admin_post(port, "/admin/config/reload");
    assert!(status.starts_with("HTTP/1.1 200"), "{status} {v}");
    let rss_after = rss_kib(pid);
    assert!(
        rss_after < rss_before + 64 * 1024,
        "resident memory grew from {rss_before} KiB to {rss_after} KiB"
    );
    drop(proc);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn other_files_next_to_the_config_cost_nothing_even_the_trace_log_itself() {
    // issue 16, item 9: with RUST_LOG=trace and stderr written into the config's directory,
    // every log line was a file-system event that the watcher machinery logged: the proxy
    // fed itself hundreds of MB a minute.
    let dir = temp_dir("watchnoise");
    let path = dir.join("k2proxy.yaml");
    let port = common::free_port();
    let text = |key: &str| yaml("http://127.0.0.1:9", port, &[key], &["tok"], &[]);
    std::fs::write(&path, text("sk-first-key-0000000")).unwrap();
    let log = dir.join("k2proxy.stderr.log");
    let stderr = std::fs::File::create(&log).unwrap();
    let proc = common::spawn_proxy_env(
        &path,
        port,
        std::process::Stdio::from(stderr),
        &[("RUST_LOG", "trace")],
    );
    let status = || {
        let r = raw(
            port,
            "GET /admin/config/status HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        );
        let body = r.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
        serde_json::from_str::<Value>(&body).unwrap_or(Value::Null)["data"].clone()
    };
    let log_size = || std::fs::metadata(&log).unwrap().len();
    // the watcher is up once it says so
    within(Duration::from_secs(5), "the watcher started", || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("for changes"))
    });
    assert_eq!(status()["reloads"], 0);
    let sibling = dir.join("notes.txt");
    for i in 0..2000 {
        std::fs::write(&sibling, format!("edit {i}\n")).unwrap();
    }
    std::thread::sleep(Duration::from_millis(500));
    let after_writes = log_size();
    std::thread::sleep(Duration::from_secs(1));
    let settled = log_size();
    assert!(
        after_writes < 256 * 1024,
        "2,000 writes to another file grew the log to {after_writes} bytes"
    );
    assert!(
        settled - after_writes < 16 * 1024,
        "the log keeps feeding itself: {after_writes} -> {settled} bytes in a second"
    );
    assert_eq!(status()["reloads"], 0, "no reload for another file");
    // The config file itself still reloads.
    replace_file(&path, &text("sk-second-key-000000"));
    within(Duration::from_secs(3), "file-triggered reload", || {
        let s = status();
        s["reloads"] == 1 && s["last_attempt"]["trigger"] == "file"
    });
    assert_eq!(status()["last_attempt"]["result"], "success");
    let models = |key: &str| {
        raw(
            port,
            &format!("GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nConnection: close\r\n\r\n"),
        )
    };
    assert!(models("sk-second-key-000000").starts_with("HTTP/1.1 200"));
    assert!(models("sk-first-key-0000000").starts_with("HTTP/1.1 401"));
    drop(proc);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn systemd_unit_is_valid_and_stops_after_the_grace_period() {
    let unit =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/conf/k2proxy.service"))
            .unwrap();
    let get = |key: &str| -> Vec<&str> {
        unit.lines()
            .filter_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
            .collect()
    };
    assert!(
        get("ExecStartPre").iter().any(|c| c.contains(" -t ")),
        "config checked before start"
    );
    assert!(get("ExecReload").iter().any(|c| c.contains("-HUP")));
    assert_eq!(get("NoNewPrivileges"), ["yes"]);
    assert_eq!(get("ProtectSystem"), ["strict"]);
    assert_eq!(get("StateDirectory"), ["k2proxy"]);
    assert!(
        get("DynamicUser") == ["yes"] || !get("User").is_empty(),
        "unprivileged"
    );
    let stop: u64 = get("TimeoutStopSec")[0].parse().unwrap();
    let conf = k2proxy::config::Config::load(Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/conf/k2proxy.yaml"
    )))
    .unwrap();
    let needed = conf.server.grace_period + conf.server.graceful_shutdown_timeout;
    assert!(
        Duration::from_secs(stop) > needed,
        "TimeoutStopSec {stop}s must exceed {needed:?}"
    );

    // systemd-analyze verify, where the machine has it (with the unit pointed at this build)
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok()
    {
        let dir = temp_dir("systemd");
        let file = dir.join("k2proxy.service");
        std::fs::write(&file, unit.replace("/usr/local/bin/k2proxy", PROXY)).unwrap();
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&file)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && !err.contains("k2proxy.service:"),
            "{err}"
        );
    }
}

#[test]
fn systemd_probe_units_are_valid_and_hardened_like_the_proxy() {
    let read = |name: &str| {
        std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("conf")
                .join(name),
        )
        .unwrap()
    };
    let (main, service, timer) = (
        read("k2proxy.service"),
        read("k2proxy-probe.service"),
        read("k2proxy-probe.timer"),
    );
    let get = |unit: &str, key: &str| -> Vec<String> {
        unit.lines()
            .filter_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
            .map(str::to_string)
            .collect()
    };
    assert_eq!(get(&service, "Type"), ["oneshot"]);
    let exec = get(&service, "ExecStart");
    assert_eq!(exec.len(), 1);
    assert!(
        exec[0].starts_with("/usr/local/bin/k2proxy probe -c /etc/k2proxy/k2proxy.yaml"),
        "{exec:?}"
    );
    // the proxy's user, state directory and every hardening setting
    let hardening = main
        .split_once("# Hardening")
        .map(|(_, rest)| rest.split("[Install]").next().unwrap_or(rest))
        .unwrap();
    for key in ["DynamicUser", "User", "Group", "StateDirectory", "UMask"] {
        assert_eq!(get(&service, key), get(&main, key), "{key}");
    }
    for line in hardening.lines().skip(1).filter(|l| !l.trim().is_empty()) {
        assert!(service.lines().any(|l| l == line), "missing: {line}");
    }
    assert_eq!(get(&timer, "OnCalendar"), ["hourly"]);
    assert_eq!(get(&timer, "Unit"), ["k2proxy-probe.service"]);
    assert_eq!(get(&timer, "WantedBy"), ["timers.target"]);

    // systemd-analyze verify, where the machine has it (the units pointed at this build)
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok()
    {
        let dir = temp_dir("systemd-probe");
        let service_file = dir.join("k2proxy-probe.service");
        let timer_file = dir.join("k2proxy-probe.timer");
        std::fs::write(
            &service_file,
            service.replace("/usr/local/bin/k2proxy", PROXY),
        )
        .unwrap();
        std::fs::write(&timer_file, &timer).unwrap();
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&service_file)
            .arg(&timer_file)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && !err.contains("k2proxy-probe."),
            "{err}"
        );
    }
}
