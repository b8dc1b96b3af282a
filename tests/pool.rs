//! The token pool's lifecycle against the mock upstream: account sign-in and refresh, the
//! tokens file, the seed-compatible admin API, and readiness.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{chat_body, temp_dir, within, Env, LEGACY_MODELS_YAML, MODEL};
use k2proxy::mock::{Account, MockConfig};
use k2proxy::tokens_file;
use serde_json::{json, Value};

const ADMIN: &str = "pool-test-admin-key-0001";

fn admin(env: &Env, method: reqwest::Method, path: &str, body: Option<Value>) -> common::Resp {
    let mut req = env
        .client
        .request(method, env.url(path))
        .header("authorization", format!("Bearer {ADMIN}"));
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    env.send(req)
}

fn add_token(env: &Env, token: &str) -> common::Resp {
    admin(
        env,
        reqwest::Method::POST,
        "/admin/tokens",
        Some(json!({"token": token})),
    )
}

fn stats(env: &Env) -> Value {
    admin(env, reqwest::Method::GET, "/admin/tokens/stats", None).json()["data"].clone()
}

fn strict_mock(accounts: &[(&str, &str)], ttl: Duration) -> MockConfig {
    MockConfig {
        accounts: accounts.iter().map(|(e, p)| Account::new(e, p)).collect(),
        strict_tokens: true,
        token_ttl: ttl,
        ..MockConfig::default()
    }
}

/// A config with accounts and a tokens file, both in `dir`.
fn accounts_yaml(base: &str, port: u16, dir: &Path, extra: &str) -> String {
    format!(
        "server:\n  listen: [\"127.0.0.1:{port}\"]\nmetrics:\n  listen: null\n\
         upstream:\n  base_url: \"{base}\"\n\
         updater:\n  accounts_file: \"{}\"\n\
         pool:\n  tokens_file: \"{}\"\n{extra}\
         admin:\n  key: \"{ADMIN}\"\nlogging:\n  access_log: false\nretry:\n  backoff: 10ms\n\
         {LEGACY_MODELS_YAML}",
        dir.join("accounts.jsonl").display(),
        dir.join("tokens.txt").display(),
    )
}

/// A proxy whose updater signs in with `accounts` (written to `accounts.jsonl`, the
/// strict mock knowing the same ones), `tokens.txt` as its tokens file; `edit` may
/// adjust the YAML.
fn with_accounts(
    tag: &str,
    accounts: &[(&str, &str)],
    ttl: Duration,
    edit: impl Fn(String) -> String,
) -> (Env, PathBuf) {
    let dir = temp_dir(tag);
    let lines: String = accounts
        .iter()
        .map(|(e, p)| format!("{}\n", json!({"email": e, "k2_password": p})))
        .collect();
    std::fs::write(dir.join("accounts.jsonl"), lines).unwrap();
    let d = dir.clone();
    let env = Env::start_file(
        strict_mock(accounts, ttl),
        &dir.join("k2proxy.yaml"),
        move |b, p| edit(accounts_yaml(b, p, &d, "")),
    );
    (env, dir)
}

fn saved_tokens(dir: &Path) -> Vec<(String, Option<String>)> {
    tokens_file::parse(&std::fs::read_to_string(dir.join("tokens.txt")).unwrap_or_default())
}

#[test]
fn accounts_are_signed_in_at_start_used_and_saved() {
    let dir = temp_dir("signin");
    std::fs::write(
        dir.join("accounts.jsonl"),
        "{\"email\":\"a@x.io\",\"k2_password\":\"pw-a\"}\n{\"email\":\"b@x.io\",\"password\":\"pw-b\"}\n",
    )
    .unwrap();
    let mock = strict_mock(
        &[("a@x.io", "pw-a"), ("b@x.io", "pw-b")],
        Duration::from_secs(3600),
    );
    let env = Env::start_file(mock, &dir.join("k2proxy.yaml"), |b, p| {
        accounts_yaml(b, p, &dir, "")
    });
    within(Duration::from_secs(5), "both accounts signed in", || {
        stats(&env)["total_tokens"] == 2
    });
    let s = stats(&env);
    let accounts: Vec<&str> = s["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["account"].as_str().unwrap())
        .collect();
    assert!(
        accounts.contains(&"a@x.io") && accounts.contains(&"b@x.io"),
        "{s}"
    );
    assert!(s["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .all(|t| t["source"] == "account"));
    // the strict mock accepts only the JWTs it issued: the pool uses them
    for _ in 0..4 {
        assert_eq!(env.chat(&chat_body(MODEL, "signed in", false)).status, 200);
    }
    let bearers: Vec<String> = env
        .requests()
        .iter()
        .map(|r| r.bearer.clone().unwrap())
        .collect();
    assert!(bearers.iter().all(|b| b.starts_with("eyJ")), "{bearers:?}");
    // saved atomically with their accounts, mode 0600
    within(Duration::from_secs(2), "tokens saved", || {
        saved_tokens(&dir).len() == 2
    });
    let saved = saved_tokens(&dir);
    assert!(
        saved
            .iter()
            .all(|(t, a)| t.starts_with("eyJ") && a.is_some()),
        "{saved:?}"
    );
    let mode = std::fs::metadata(dir.join("tokens.txt"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    assert_eq!(
        (env.mock().signins("a@x.io"), env.mock().signins("b@x.io")),
        (1, 1)
    );
    // the status is written when each sign-in is recorded, a moment after its token
    // entered the pool
    let status = || {
        admin(
            &env,
            reqwest::Method::GET,
            "/admin/tokens/updater/status",
            None,
        )
        .json()
    };
    within(Duration::from_secs(2), "both sign-ins recorded", || {
        let st = status();
        st["data"]["update_count"] == 2
            && st["data"]["per_account"].as_array().map(Vec::len) == Some(2)
    });
    let st = status();
    assert_eq!(st["status"], "success");
    assert_eq!(st["data"]["update_count"], 2);
    assert_eq!(st["data"]["mode"], "file");
    assert_eq!(st["data"]["per_account"].as_array().unwrap().len(), 2);
    assert!(st["data"]["per_account"][0]["token_expires"]
        .as_u64()
        .is_some());
    assert!(
        !st.to_string().contains("pw-a") && !st.to_string().contains("eyJ"),
        "{st}"
    );
    assert_eq!(env.get("/ready").status, 200);
}

#[test]
fn a_refused_account_token_is_refreshed_for_that_account_alone() {
    let (env, dir) = with_accounts(
        "refused",
        &[("a@x.io", "pw-a"), ("b@x.io", "pw-b")],
        Duration::from_secs(3600),
        |y| y,
    );
    within(Duration::from_secs(5), "signed in and saved", || {
        saved_tokens(&dir).len() == 2
    });
    let a_token = saved_tokens(&dir)
        .into_iter()
        .find(|(_, a)| a.as_deref() == Some("a@x.io"))
        .unwrap()
        .0;
    env.mock().revoke_token(&a_token);
    // clients never notice: the refused attempt is retried with b's token at once
    for _ in 0..4 {
        assert_eq!(
            env.chat(&chat_body(MODEL, "after revoke", false)).status,
            200
        );
    }
    within(Duration::from_secs(5), "a signed in again", || {
        env.mock().signins("a@x.io") == 2
    });
    assert_eq!(
        env.mock().signins("b@x.io"),
        1,
        "only the refused account signs in again"
    );
    within(Duration::from_secs(2), "new token for a", || {
        saved_tokens(&dir)
            .iter()
            .any(|(t, a)| a.as_deref() == Some("a@x.io") && *t != a_token)
    });
    for _ in 0..4 {
        assert_eq!(env.chat(&chat_body(MODEL, "fresh", false)).status, 200);
    }
}

#[test]
fn a_failed_sign_in_keeps_the_working_token() {
    let (env, dir) = with_accounts(
        "failed",
        &[("a@x.io", "pw-a")],
        Duration::from_secs(3600),
        |y| y,
    );
    let accounts = dir.join("accounts.jsonl");
    within(Duration::from_secs(5), "signed in", || {
        stats(&env)["total_tokens"] == 1
    });
    std::fs::write(&accounts, "{\"email\":\"a@x.io\",\"password\":\"wrong\"}\n").unwrap();
    let r = admin(
        &env,
        reqwest::Method::POST,
        "/admin/tokens/updater/force-update",
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    within(
        Duration::from_secs(5),
        "the failed sign-in is reported",
        || {
            let st = admin(
                &env,
                reqwest::Method::GET,
                "/admin/tokens/updater/status",
                None,
            )
            .json();
            st["data"]["error_count"] == 1
        },
    );
    let st = admin(
        &env,
        reqwest::Method::GET,
        "/admin/tokens/updater/status",
        None,
    )
    .json();
    let err = st["data"]["last_error"].as_str().unwrap();
    assert!(
        err.contains("a@x.io") && err.contains("400") && !err.contains("wrong"),
        "{err}"
    );
    assert_eq!(stats(&env)["active_tokens"], 1, "the working token stays");
    assert_eq!(
        env.chat(&chat_body(MODEL, "still works", false)).status,
        200
    );
    assert_eq!(env.mock().signins("a@x.io"), 2);
}

#[test]
fn tokens_are_refreshed_ahead_of_their_jwt_expiry() {
    // 4 s tokens refreshed at half their life: a second sign-in within ~2 s
    let (env, _dir) = with_accounts(
        "expiry",
        &[("a@x.io", "pw-a")],
        Duration::from_secs(4),
        |y| y.replace("updater:\n", "updater:\n  refresh_at: 0.5\n"),
    );
    within(Duration::from_secs(5), "first sign-in", || {
        env.mock().signins("a@x.io") == 1
    });
    within(Duration::from_secs(5), "refresh before expiry", || {
        env.mock().signins("a@x.io") >= 2
    });
    // the token never lapsed: requests keep working right through
    for _ in 0..3 {
        assert_eq!(env.chat(&chat_body(MODEL, "x", false)).status, 200);
        std::thread::sleep(Duration::from_millis(700));
    }
}

#[test]
fn failures_in_a_row_refresh_every_account_in_the_background() {
    let dir = temp_dir("consecutive");
    std::fs::write(
        dir.join("accounts.jsonl"),
        "{\"email\":\"a@x.io\",\"password\":\"pw-a\"}\n",
    )
    .unwrap();
    let mock = MockConfig {
        accounts: vec![Account::new("a@x.io", "pw-a")],
        ..MockConfig::default()
    };
    let env = Env::start_file(mock, &dir.join("k2proxy.yaml"), |b, p| {
        accounts_yaml(
            b,
            p,
            &dir,
            "  tokens: [\"t1;fault=500\", \"t2;fault=500\"]\n",
        )
    });
    within(Duration::from_secs(5), "signed in", || {
        stats(&env)["total_tokens"] == 3
    });
    // t1 and t2 fail in a row (pool of 3 > 2): a refresh of every account starts; the
    // request itself is answered by the account token, without waiting for it
    assert_eq!(env.chat(&chat_body(MODEL, "x", false)).status, 200);
    within(Duration::from_secs(5), "background refresh", || {
        env.mock().signins("a@x.io") == 2
    });
    let cf = admin(
        &env,
        reqwest::Method::GET,
        "/admin/tokens/consecutive-failures",
        None,
    )
    .json();
    assert_eq!(cf["data"]["threshold"], 2);
    assert_eq!(cf["data"]["auto_refresh_enabled"], true);
}

#[test]
fn tokens_file_edits_apply_without_restart_and_admin_edits_are_saved_atomically() {
    let dir = temp_dir("file");
    let file = dir.join("tokens.txt");
    std::fs::write(
        &file,
        "# hand-written\ntok-a-0000000000000000\ntok-b-1111111111111111;fault=401\n",
    )
    .unwrap();
    let env = Env::start_file(
        MockConfig::default(),
        &dir.join("k2proxy.yaml"),
        |base, port| {
            format!(
                "server:\n  listen: [\"127.0.0.1:{port}\"]\nmetrics:\n  listen: null\n\
             upstream:\n  base_url: \"{base}\"\npool:\n  tokens_file: \"{}\"\n  max_failures: 1\n\
             admin:\n  key: \"{ADMIN}\"\nlogging:\n  access_log: false\n{LEGACY_MODELS_YAML}",
                file.display()
            )
        },
    );
    for _ in 0..2 {
        assert_eq!(env.chat(&chat_body(MODEL, "x", false)).status, 200);
    }
    assert_eq!(stats(&env)["disabled_tokens"], 1, "tok-b struck out");
    // an edit on disk (by rename, as editors do) is picked up; staying tokens keep state
    let tmp = dir.join("tokens.txt.new");
    std::fs::write(
        &tmp,
        "tok-a-0000000000000000\ntok-b-1111111111111111;fault=401\ntok-c-2222222222222222\n",
    )
    .unwrap();
    std::fs::rename(&tmp, &file).unwrap();
    within(Duration::from_secs(1), "file edit applied", || {
        stats(&env)["total_tokens"] == 3
    });
    let s = stats(&env);
    assert_eq!(
        (s["disabled_tokens"].clone(), s["active_tokens"].clone()),
        (json!(1), json!(2))
    );

    // add through the admin API: saved atomically, previous kept as .bak, mode 0600
    let r = add_token(&env, "tok-d-3333333333333333");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["data"]["persisted"], true);
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        text.contains("tok-d-3333333333333333") && text.contains("tok-a-0000000000000000"),
        "{text}"
    );
    let bak = std::fs::read_to_string(dir.join("tokens.txt.bak")).unwrap();
    assert!(
        bak.contains("tok-c-2222222222222222") && !bak.contains("tok-d"),
        "{bak}"
    );
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(add_token(&env, "tok-d-3333333333333333").status, 409);
    assert_eq!(add_token(&env, "has space").status, 400);
    // remove tok-a (index 0)
    let r = admin(&env, reqwest::Method::DELETE, "/admin/tokens/0", None);
    assert_eq!(r.status, 200, "{}", r.text());
    within(Duration::from_secs(1), "removal applied", || {
        stats(&env)["total_tokens"] == 3
    });
    assert!(!std::fs::read_to_string(&file)
        .unwrap()
        .contains("tok-a-0000000000000000"));
    let no_tmp = std::fs::read_dir(&dir)
        .unwrap()
        .all(|e| !e.unwrap().file_name().to_string_lossy().contains(".tmp."));
    assert!(no_tmp);
}

#[test]
fn seed_compatible_admin_api() {
    let env = Env::start(MockConfig::default(), |c| {
        c.admin.key = Some(ADMIN.into());
        c.pool.tokens = common::tokens(&[
            "good-token-000000000",
            "bad-token-1111111111;fault=401",
            "ok-token-22222222222",
        ]);
        c.pool.max_failures = 1;
    });
    // every admin route needs the key
    for (m, p) in [
        ("GET", "/admin/tokens/stats"),
        ("POST", "/admin/tokens/reset/0"),
        ("POST", "/admin/tokens/reset-all"),
        ("POST", "/admin/tokens/reload"),
        ("GET", "/admin/tokens/consecutive-failures"),
        ("POST", "/admin/tokens/reset-consecutive"),
        ("GET", "/admin/tokens/updater/status"),
        ("POST", "/admin/tokens/updater/force-update"),
        ("POST", "/admin/tokens"),
        ("DELETE", "/admin/tokens/0"),
        ("POST", "/admin/tokens/disable/0"),
        ("GET", "/admin/config/status"),
        ("POST", "/admin/config/reload"),
    ] {
        let r = env.send(env.client.request(m.parse().unwrap(), env.url(p)));
        r.assert_error(401, "invalid_admin_key");
        let r = env.send(
            env.client
                .request(m.parse().unwrap(), env.url(p))
                .header("authorization", "Bearer wrong-key-000000000000"),
        );
        assert_eq!(r.status, 401, "{m} {p}");
    }
    for _ in 0..3 {
        assert_eq!(env.chat(&chat_body(MODEL, "x", false)).status, 200);
    }
    let s = stats(&env);
    for key in [
        "total_tokens",
        "active_tokens",
        "inactive_tokens",
        "current_index",
        "failure_distribution",
        "max_failures",
        "consecutive_failures",
        "consecutive_failure_threshold",
        "consecutive_upstream_errors",
        "upstream_error_threshold",
        "tokens",
    ] {
        assert!(s.get(key).is_some(), "stats lacks {key}: {s}");
    }
    assert_eq!(
        (s["total_tokens"].clone(), s["inactive_tokens"].clone()),
        (json!(3), json!(1))
    );
    assert_eq!(s["failure_distribution"], json!({"0": 2, "1": 1}));
    let bad = s["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["state"] == "disabled")
        .unwrap()
        .clone();
    assert_eq!(bad["last_error"], "HTTP 401 (token refused)");
    assert!(
        !s.to_string().contains("bad-token-1111111111"),
        "tokens masked: {s}"
    );
    assert_eq!(env.get("/ready").status, 200);

    let i = bad["index"].as_u64().unwrap();
    let r = admin(
        &env,
        reqwest::Method::POST,
        &format!("/admin/tokens/reset/{i}"),
        None,
    );
    assert_eq!(
        r.json(),
        json!({"status": "success", "message": format!("Token {i} reset")})
    );
    assert_eq!(stats(&env)["active_tokens"], 3);
    let r = admin(&env, reqwest::Method::POST, "/admin/tokens/reset/99", None);
    assert_eq!(
        (r.status, r.json()),
        (
            400,
            json!({"status": "error", "message": "invalid token index: 99"})
        )
    );
    for idx in 0..3 {
        assert_eq!(
            admin(
                &env,
                reqwest::Method::POST,
                &format!("/admin/tokens/disable/{idx}"),
                None
            )
            .status,
            200
        );
    }
    assert_eq!(stats(&env)["disabled_tokens"], 3);
    let r = env.get("/ready");
    assert_eq!(r.status, 503, "no usable token: not ready");
    assert_eq!(r.json()["status"], "not_ready");
    assert_eq!(env.get("/health").status, 200, "liveness is unaffected");
    env.chat(&chat_body(MODEL, "x", false))
        .assert_error(503, "pool_exhausted");
    let r = admin(&env, reqwest::Method::POST, "/admin/tokens/reset-all", None);
    assert_eq!(r.json()["status"], "success");
    assert_eq!(stats(&env)["active_tokens"], 3);
    assert_eq!(env.get("/ready").status, 200);

    let cf = admin(
        &env,
        reqwest::Method::GET,
        "/admin/tokens/consecutive-failures",
        None,
    )
    .json();
    for key in [
        "consecutive_failures",
        "threshold",
        "consecutive_upstream_errors",
        "upstream_error_threshold",
        "last_upstream_error_time",
        "token_pool_size",
        "auto_refresh_enabled",
        "last_check",
    ] {
        assert!(cf["data"].get(key).is_some(), "{key}: {cf}");
    }
    assert_eq!(cf["data"]["token_pool_size"], 3);
    let r = admin(
        &env,
        reqwest::Method::POST,
        "/admin/tokens/reset-consecutive",
        None,
    )
    .json();
    assert_eq!(r["data"]["current_count"], 0);
    let r = admin(
        &env,
        reqwest::Method::GET,
        "/admin/tokens/updater/status",
        None,
    )
    .json();
    assert_eq!(r["status"], "disabled");
    assert_eq!(
        admin(
            &env,
            reqwest::Method::POST,
            "/admin/tokens/updater/force-update",
            None
        )
        .status,
        400
    );
    let r = admin(&env, reqwest::Method::POST, "/admin/tokens/reload", None);
    assert_eq!(r.status, 500, "no config file to reload from: {}", r.text());
    assert_eq!(r.json()["status"], "error");
}

#[test]
fn guest_mode_is_ready_with_an_empty_pool() {
    let env = Env::start(MockConfig::default(), |_| {});
    let r = env.get("/ready");
    assert_eq!((r.status, r.json()["mode"].clone()), (200, json!("guest")));
    assert_eq!(env.chat(&chat_body(MODEL, "guest", false)).status, 200);
}
