//! The admin API against hostile browsers and reverse proxies (issue 16, item 5), on the
//! real binary: a cross-site form POST, a DNS-rebinding page (foreign `Host`), a request
//! forwarded by a local reverse proxy; and the requests that must keep working (the
//! dashboard's same-origin JSON, curl).

// Test and bench code may panic: an unwrap or expect that fails is a failed test. The
// crate denies both outside tests (Cargo.toml [lints.clippy]).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};

use common::{raw, spawn_proxy, temp_dir, Proc};
use serde_json::Value;

const VICTIM: &str = "victim@example.com";
const TOKEN: &str = "tok-victim-0001";
const KEY: &str = "admin-guard-key-0123456789";

/// A proxy on the real binary with a tokens file holding one signed-in token; `admin` is
/// the config's admin section.
fn start(tag: &str, admin: &str) -> (Proc, u16, PathBuf) {
    let dir = temp_dir(tag);
    let tokens = dir.join("tokens.txt");
    std::fs::write(&tokens, format!("# account={VICTIM}\n{TOKEN}\n")).unwrap();
    let port = common::free_port();
    let path = dir.join("k2proxy.yaml");
    std::fs::write(
        &path,
        format!(
            "server:\n  listen: [\"127.0.0.1:{port}\"]\nmetrics:\n  listen: null\n\
             upstream:\n  base_url: \"http://127.0.0.1:9\"\n  mode: user\n\
             pool:\n  tokens_file: \"{}\"\nlogging:\n  access_log: false\n{admin}",
            tokens.display()
        ),
    )
    .unwrap();
    (spawn_proxy(&path, port), port, tokens)
}

/// One request: status and JSON body (`Null` when the body is not JSON). `headers` are
/// whole lines without their CRLF; `Host` is the caller's to give (or leave out).
fn send(port: u16, method: &str, path: &str, headers: &[&str], body: &str) -> (u16, Value) {
    let mut req = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    if !body.is_empty() {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    req.push_str(body);
    let r = raw(port, &req);
    let status = r
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no answer: {r:?}"));
    let body = r.split("\r\n\r\n").nth(1).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("-")
}

fn pool_size(port: u16) -> u64 {
    let host = format!("Host: 127.0.0.1:{port}");
    let (status, v) = send(port, "GET", "/admin/tokens/stats", &[&host], "");
    assert_eq!(status, 200, "{v}");
    v["data"]["total_tokens"].as_u64().unwrap()
}

fn saved(tokens: &Path) -> String {
    std::fs::read_to_string(tokens).unwrap()
}

#[test]
fn a_cross_site_form_post_adds_no_token() {
    let (_proc, port, tokens) = start("guard-csrf", "");
    let host = format!("Host: 127.0.0.1:{port}");
    let attack = r#"{"token":"tok-attacker-0001"}"#;
    // What an <form enctype="text/plain"> on evil.example sends from the victim's browser.
    let (status, v) = send(
        port,
        "POST",
        "/admin/tokens",
        &[
            &host,
            "Origin: https://evil.example",
            "Sec-Fetch-Site: cross-site",
            "Content-Type: text/plain",
        ],
        attack,
    );
    assert_eq!((status, code(&v)), (403, "admin_cross_site"), "{v}");
    // Origin alone, Sec-Fetch-Site alone, and the sandboxed-frame `Origin: null`.
    for headers in [
        [
            "Origin: https://evil.example",
            "Content-Type: application/json",
        ],
        [
            "Sec-Fetch-Site: cross-site",
            "Content-Type: application/json",
        ],
        ["Origin: null", "Content-Type: application/json"],
    ] {
        let (status, v) = send(
            port,
            "POST",
            "/admin/tokens",
            &[&host, headers[0], headers[1]],
            attack,
        );
        assert_eq!(
            (status, code(&v)),
            (403, "admin_cross_site"),
            "{headers:?} {v}"
        );
    }
    // A cross-site POST with no body at all (a reload, a reset) is refused too.
    let (status, v) = send(
        port,
        "POST",
        "/admin/tokens/reset-all",
        &[&host, "Origin: https://evil.example"],
        "",
    );
    assert_eq!((status, code(&v)), (403, "admin_cross_site"), "{v}");
    // A text/plain body without an Origin: not JSON, so refused all the same.
    let (status, v) = send(
        port,
        "POST",
        "/admin/tokens",
        &[&host, "Content-Type: text/plain"],
        attack,
    );
    assert_eq!((status, code(&v)), (415, "admin_json_only"), "{v}");
    // Nothing was added, nothing was saved.
    assert_eq!(pool_size(port), 1);
    assert!(
        !saved(&tokens).contains("tok-attacker"),
        "{}",
        saved(&tokens)
    );
    // The dashboard page itself is refused to a cross-site frame or link.
    let (status, v) = send(
        port,
        "GET",
        "/admin",
        &[&host, "Sec-Fetch-Site: cross-site"],
        "",
    );
    assert_eq!((status, code(&v)), (403, "admin_cross_site"), "{v}");
}

#[test]
fn a_foreign_host_cannot_read_token_stats() {
    let (_proc, port, _tokens) = start("guard-rebind", "");
    // A DNS-rebinding page: evil.example now resolves to 127.0.0.1, so its requests are
    // same-origin for the browser and arrive from loopback.
    let host = format!("Host: evil.example:{port}");
    let origin = format!("Origin: http://evil.example:{port}");
    for (path, headers) in [
        ("/admin/tokens/stats", vec![host.as_str()]),
        ("/admin/tokens/stats", vec![host.as_str(), origin.as_str()]),
        (
            "/admin/tokens/stats",
            vec![host.as_str(), "Sec-Fetch-Site: same-origin"],
        ),
        ("/admin/config/status", vec![host.as_str()]),
        ("/admin", vec![host.as_str()]),
    ] {
        let (status, v) = send(port, "GET", path, &headers, "");
        assert_eq!(
            (status, code(&v)),
            (403, "admin_host_not_allowed"),
            "{path} {v}"
        );
        let text = v.to_string();
        assert!(!text.contains(VICTIM) && !text.contains("tok-"), "{text}");
    }
    // No Host at all (HTTP/1.0) is no better.
    let r = raw(port, "GET /admin/tokens/stats HTTP/1.0\r\n\r\n");
    assert_eq!(r.split(' ').nth(1), Some("403"), "{r}");
    assert!(!r.contains(VICTIM), "{r}");
    // The same request with the proxy's own address is answered (and does show the account).
    let (status, v) = send(
        port,
        "GET",
        "/admin/tokens/stats",
        &[&format!("Host: 127.0.0.1:{port}")],
        "",
    );
    assert_eq!(status, 200, "{v}");
    assert!(v.to_string().contains(VICTIM), "{v}");
}

#[test]
fn same_origin_json_and_curl_style_requests_still_work() {
    let (_proc, port, tokens) = start("guard-ok", "");
    // The dashboard: same-origin fetch with a JSON body.
    let (status, v) = send(
        port,
        "POST",
        "/admin/tokens",
        &[
            &format!("Host: 127.0.0.1:{port}"),
            &format!("Origin: http://127.0.0.1:{port}"),
            "Sec-Fetch-Site: same-origin",
            "Content-Type: application/json",
        ],
        r#"{"token":"tok-added-0002"}"#,
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["data"]["persisted"], true, "{v}");
    assert_eq!(pool_size(port), 2);
    assert!(saved(&tokens).contains("tok-added-0002"));
    // The page opened from the address bar.
    let r = raw(
        port,
        &format!("GET /admin HTTP/1.1\r\nHost: localhost:{port}\r\nSec-Fetch-Site: none\r\nConnection: close\r\n\r\n"),
    );
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    // curl: `curl -X POST localhost:PORT/admin/config/reload` (no body, no content type),
    // also with an explicit empty body, over IPv4 literal and `localhost`.
    for headers in [
        vec![format!("Host: localhost:{port}")],
        vec![
            format!("Host: 127.0.0.1:{port}"),
            "Content-Length: 0".into(),
        ],
    ] {
        let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
        let (status, v) = send(port, "POST", "/admin/config/reload", &headers, "");
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["data"]["result"], "success", "{v}");
    }
    let (status, v) = send(
        port,
        "DELETE",
        "/admin/tokens/1",
        &[&format!("Host: localhost:{port}")],
        "",
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(pool_size(port), 1);
}

#[test]
fn allowed_hosts_admit_a_public_name_and_forwarded_requests_need_a_key() {
    // No key: a request that came through a reverse proxy is refused, even from loopback.
    let (proc, port, _tokens) = start("guard-fwd", "");
    for fwd in [
        "X-Forwarded-For: 203.0.113.9",
        "Forwarded: for=203.0.113.9",
        "X-Real-IP: 203.0.113.9",
    ] {
        let (status, v) = send(
            port,
            "GET",
            "/admin/tokens/stats",
            &[&format!("Host: 127.0.0.1:{port}"), fwd],
            "",
        );
        assert_eq!((status, code(&v)), (403, "admin_behind_proxy"), "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("admin.key"),
            "{v}"
        );
    }
    drop(proc);

    // A key and the public name: the reverse proxy's requests are answered.
    let (_proc, port, _tokens) = start(
        "guard-public",
        &format!("admin:\n  key: \"{KEY}\"\n  allowed_hosts: [admin.example.com]\n"),
    );
    let auth = format!("Authorization: Bearer {KEY}");
    let (status, v) = send(
        port,
        "GET",
        "/admin/tokens/stats",
        &[
            "Host: admin.example.com",
            "X-Forwarded-For: 203.0.113.9",
            "X-Forwarded-Proto: https",
            &auth,
        ],
        "",
    );
    assert_eq!(status, 200, "{v}");
    // The dashboard's same-origin POST through it.
    let (status, v) = send(
        port,
        "POST",
        "/admin/tokens/reset-all",
        &[
            "Host: admin.example.com",
            "Origin: https://admin.example.com",
            "Sec-Fetch-Site: same-origin",
            "X-Forwarded-For: 203.0.113.9",
            &auth,
        ],
        "",
    );
    assert_eq!(status, 200, "{v}");
    // Other names are still refused, key or not.
    let (status, v) = send(
        port,
        "GET",
        "/admin/tokens/stats",
        &["Host: other.example.com", &auth],
        "",
    );
    assert_eq!((status, code(&v)), (403, "admin_host_not_allowed"), "{v}");
    // And the key is still needed.
    let (status, v) = send(
        port,
        "GET",
        "/admin/tokens/stats",
        &["Host: admin.example.com"],
        "",
    );
    assert_eq!((status, code(&v)), (401, "invalid_admin_key"), "{v}");
}
