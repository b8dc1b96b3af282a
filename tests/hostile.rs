//! Hostile clients against the release binary (issue 16): idle and excess connections,
//! HTTP/2 peers that never open their window, floods of requests, pipelined and
//! half-closed requests, and request heads Pingora refuses. Each test speaks raw TCP or raw
//! HTTP/2, so the fault is exactly what is sent.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{free_port, raw, spawn_proxy, temp_dir, Proc};
use k2proxy::mock::{MockConfig, MockServer};
use serde_json::{json, Value};

const MODEL: &str = "IFM/K2-Horizon";
const KEY: &str = "sk-hostile-test-key-0001";

/// A mock, and the proxy binary on a config pointed at it with `limits` added.
struct Rig {
    _rt: tokio::runtime::Runtime,
    _mock: MockServer,
    _dir: PathBuf,
    _proc: Proc,
    port: u16,
}

fn rig(tag: &str, limits: &str) -> Rig {
    let rt = common::runtime();
    let mock = common::start_mock(&rt, MockConfig::horizon());
    let dir = temp_dir(tag);
    let port = free_port();
    let text = format!(
        "server:\n  listen: [\"127.0.0.1:{port}\"]\n  h2c: true\nupstream:\n  base_url: \"{}\"\npool:\n  tokens: [\"tok-a\"]\nauth:\n  api_keys: [\"{KEY}\"]\nlogging:\n  access_log: false\nlimits:\n{limits}",
        mock.base_url()
    );
    let path = dir.join("k2proxy.yaml");
    std::fs::write(&path, text).unwrap();
    let proc = spawn_proxy(&path, port);
    Rig {
        _rt: rt,
        _mock: mock,
        _dir: dir,
        _proc: proc,
        port,
    }
}

fn chat_json(prompt: &str, stream: bool) -> String {
    json!({
        "model": MODEL,
        "stream": stream,
        "messages": [{"role": "user", "content": prompt}],
    })
    .to_string()
}

fn post(path: &str, body: &str, extra: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: k2\r\nAuthorization: Bearer {KEY}\r\nx-api-key: {KEY}\r\nanthropic-version: 2023-06-01\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}\r\n{body}",
        body.len()
    )
}

fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

/// Every byte until the server closes (or 20 s pass).
fn read_all(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// The status and JSON body of the first answer in `raw`.
fn answer(raw: &str) -> (u16, Value) {
    let status = raw
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {raw:?}"));
    let body = raw.split("\r\n\r\n").nth(1).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// How long until the server closes `s` (reads EOF or a reset), if it does within `limit`.
fn closes_within(s: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    s.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Some(start.elapsed()),
            Ok(_) => continue,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return None
            }
            Err(_) => return Some(start.elapsed()),
        }
    }
}

/// Row 2: an HTTP/1.1 keep-alive connection after one request, and an h2c connection after
/// its preface, used to stay open for good; 990 of them locked every client out.
#[test]
fn idle_keep_alive_and_h2_connections_are_closed_after_client_idle_timeout() {
    let r = rig("idle", "  client_idle_timeout: 1s\n");
    let mut h1 = connect(r.port);
    h1.write_all(b"GET /health HTTP/1.1\r\nHost: k2\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = h1.read(&mut buf).unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.to_ascii_lowercase().contains("keep-alive"), "{head}");
    let closed = closes_within(&mut h1, Duration::from_secs(8));
    assert!(
        closed.is_some(),
        "the idle keep-alive connection stayed open"
    );

    // h2c prior knowledge: preface and an empty SETTINGS frame, then nothing
    let mut h2 = connect(r.port);
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .unwrap();
    let closed = closes_within(&mut h2, Duration::from_secs(8));
    assert!(closed.is_some(), "the idle h2c connection stayed open");

    // a connection in use is not idle: a stream longer than the idle timeout completes
    let body = chat_json("slow [[mock: pace_ms=300; answer_words=12]]", true);
    let out = raw(
        r.port,
        &post("/v1/chat/completions", &body, "Connection: close\r\n"),
    );
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("data: [DONE]"), "{out}");
}

/// Row 2 and row 12: a cap on client connections, with a clear 503 beyond it.
#[test]
fn connections_beyond_max_connections_get_503_and_the_rest_are_served() {
    let r = rig("maxconn", "  max_connections: 3\n");
    let held: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut s = connect(r.port);
            s.write_all(b"GET /health HTTP/1.1\r\nHost: k2\r\n\r\n")
                .unwrap();
            let mut buf = [0u8; 512];
            let n = s.read(&mut buf).unwrap();
            assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
            s
        })
        .collect();
    let out = raw(
        r.port,
        "GET /health HTTP/1.1\r\nHost: k2\r\nConnection: close\r\n\r\n",
    );
    let (status, body) = answer(&out);
    assert_eq!(status, 503, "{out}");
    assert_eq!(body["error"]["code"], "server_overloaded", "{out}");
    assert!(out.to_ascii_lowercase().contains("retry-after: 1"), "{out}");
    drop(held);
    common::within(Duration::from_secs(10), "a freed place", || {
        raw(
            r.port,
            "GET /health HTTP/1.1\r\nHost: k2\r\nConnection: close\r\n\r\n",
        )
        .starts_with("HTTP/1.1 200")
    });
}

/// Row 12: a cap on chat requests in flight, in each surface's own error shape.
#[test]
fn requests_beyond_max_requests_get_503_in_the_surface_shape() {
    let r = rig("maxreq", "  max_requests: 2\n");
    let slow = chat_json("slow [[mock: pace_ms=200; answer_words=20]]", true);
    let mut open: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut s = connect(r.port);
            s.write_all(post("/v1/chat/completions", &slow, "").as_bytes())
                .unwrap();
            let mut buf = [0u8; 512];
            let n = s.read(&mut buf).unwrap();
            assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
            s
        })
        .collect();
    let out = raw(
        r.port,
        &post(
            "/v1/chat/completions",
            &chat_json("hi", false),
            "Connection: close\r\n",
        ),
    );
    let (status, body) = answer(&out);
    assert_eq!(status, 503, "{out}");
    assert_eq!(body["error"]["code"], "server_overloaded");
    assert!(out.to_ascii_lowercase().contains("retry-after:"), "{out}");
    let messages = json!({"model": MODEL, "max_tokens": 64,
        "messages": [{"role": "user", "content": "hi"}]})
    .to_string();
    let out = raw(
        r.port,
        &post("/v1/messages", &messages, "Connection: close\r\n"),
    );
    let (status, body) = answer(&out);
    assert_eq!(status, 503, "{out}");
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "overloaded_error", "{out}");
    // local routes are not counted
    assert!(raw(
        r.port,
        "GET /health HTTP/1.1\r\nHost: k2\r\nConnection: close\r\n\r\n"
    )
    .starts_with("HTTP/1.1 200"));
    for s in &mut open {
        let rest = read_all(s);
        assert!(rest.contains("data: [DONE]"), "{rest}");
    }
    let out = raw(
        r.port,
        &post(
            "/v1/chat/completions",
            &chat_json("hi", false),
            "Connection: close\r\n",
        ),
    );
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
}

/// An h2c client whose connection and stream windows are 0: the answer cannot be sent.
/// Returns the response status and when the stream ended (reset or end), from the request.
async fn h2_zero_window_request(port: u16, body: String) -> (u16, Duration) {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let (mut client, conn) = h2::client::Builder::new()
        .initial_window_size(0)
        .initial_connection_window_size(65_535) // the minimum; the stream window stays 0
        .handshake::<_, bytes::Bytes>(tcp)
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("http://127.0.0.1:{port}/v1/chat/completions"))
        .header("authorization", format!("Bearer {KEY}"))
        .header("content-type", "application/json")
        .body(())
        .unwrap();
    let start = Instant::now();
    let (resp, mut send) = client.send_request(req, false).unwrap();
    send.send_data(bytes::Bytes::from(body), true).unwrap();
    let resp = resp.await.unwrap();
    let status = resp.status().as_u16();
    let mut body = resp.into_body();
    // never release capacity: wait for the server to end or reset the stream
    let ended = tokio::time::timeout(Duration::from_secs(40), async {
        while let Some(chunk) = body.data().await {
            if chunk.is_err() {
                break;
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the stream was still open after 40 s");
    (status, start.elapsed())
}

/// Row 3: an HTTP/2 client that never opens its flow-control window kept a streaming
/// request, its upstream connection and its key's concurrency slot past both
/// `client_write_timeout` and `request_timeout`.
#[test]
fn an_h2_client_that_never_opens_its_window_is_cut_off_and_frees_its_slot() {
    let body = chat_json("long [[mock: pace_ms=50; answer_words=2000]]", true);
    // the write timeout
    let r = rig(
        "h2window",
        "  client_write_timeout: 2s\n  request_timeout: 60s\n  per_key:\n    concurrency: 1\n",
    );
    let rt = common::runtime();
    let (status, took) = rt.block_on(h2_zero_window_request(r.port, body.clone()));
    assert_eq!(status, 200);
    assert!(
        took < Duration::from_secs(30),
        "ended after {took:?}, past client_write_timeout"
    );
    // the key's only concurrency slot is free again
    common::within(Duration::from_secs(10), "the slot back", || {
        raw(
            r.port,
            &post(
                "/v1/chat/completions",
                &chat_json("hi", false),
                "Connection: close\r\n",
            ),
        )
        .starts_with("HTTP/1.1 200")
    });

    // the request timeout, with a write timeout that alone would wait much longer
    let r = rig(
        "h2deadline",
        "  client_write_timeout: 50s\n  request_timeout: 3s\n",
    );
    let (status, took) = rt.block_on(h2_zero_window_request(r.port, body));
    assert_eq!(status, 200);
    assert!(
        took < Duration::from_secs(30),
        "ended after {took:?}, past request_timeout"
    );
}

/// Row 11: two pipelined requests in one write; the second used to be dropped silently.
#[test]
fn pipelined_requests_are_answered_in_order() {
    let r = rig("pipeline", "");
    let mut s = connect(r.port);
    s.write_all(
        b"GET /health HTTP/1.1\r\nHost: k2\r\n\r\nGET /v1/models HTTP/1.1\r\nHost: k2\r\nAuthorization: Bearer sk-hostile-test-key-0001\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let out = read_all(&mut s);
    assert_eq!(out.matches("HTTP/1.1 200").count(), 2, "{out}");
    let health = out.find("\"status\":\"ok\"").expect("the first answer");
    let models = out.find(MODEL).expect("the second answer");
    assert!(health < models, "{out}");

    // two chat completions with bodies, in one write
    let mut s = connect(r.port);
    let one = post("/v1/chat/completions", &chat_json("first", false), "");
    let two = post(
        "/v1/chat/completions",
        &chat_json("second", false),
        "Connection: close\r\n",
    );
    s.write_all(format!("{one}{two}").as_bytes()).unwrap();
    let out = read_all(&mut s);
    assert_eq!(out.matches("HTTP/1.1 200").count(), 2, "{out}");
    assert_eq!(out.matches("chat.completion").count(), 2, "{out}");
}

/// A client that half-closes (FIN) after its request still gets its answer (RFC 9112 §9.6).
#[test]
fn a_half_closed_client_still_gets_its_answer() {
    let r = rig("halfclose", "");
    for stream in [false, true] {
        let mut s = connect(r.port);
        let req = post(
            "/v1/chat/completions",
            &chat_json("hello [[mock: pace_ms=20]]", stream),
            "Connection: close\r\n",
        );
        s.write_all(req.as_bytes()).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let out = read_all(&mut s);
        // the proxy may tell a half-close from a close with an interim answer first
        let out = out
            .strip_prefix("HTTP/1.1 100 Continue\r\n\r\n")
            .unwrap_or(&out);
        assert!(out.starts_with("HTTP/1.1 200"), "stream={stream}: {out}");
        if stream {
            assert!(out.contains("data: [DONE]"), "{out}");
        } else {
            assert!(out.contains("\"finish_reason\":\"stop\""), "{out}");
        }
    }
}

/// A request head Pingora refuses itself (an absolute-form target whose host is not the
/// `Host` header) used to get a 400 with an empty body.
#[test]
fn heads_refused_before_routing_get_a_json_error_body() {
    let r = rig("absform", "");
    for target in ["http://evil.example/v1/models", "https://x/health"] {
        let out = raw(
            r.port,
            &format!("GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"),
        );
        let (status, body) = answer(&out);
        assert_eq!(status, 400, "{out}");
        assert_eq!(body["error"]["code"], "bad_request", "{out}");
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert!(out
            .to_ascii_lowercase()
            .contains("content-type: application/json"));
        let len: usize = out
            .to_ascii_lowercase()
            .split("content-length: ")
            .nth(1)
            .and_then(|v| v.split("\r\n").next())
            .and_then(|v| v.parse().ok())
            .unwrap();
        assert_eq!(len, out.split("\r\n\r\n").nth(1).unwrap().len(), "{out}");
    }
    // a matching absolute-form target is served
    let out = raw(
        r.port,
        &format!(
            "GET http://127.0.0.1:{}/health HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
            r.port, r.port
        ),
    );
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
}

/// Row 7: the client's `model` went raw into the plain access log: CR/LF forged lines, NUL
/// bytes passed, a 1 MB name made a 2 MB line.
#[test]
fn client_model_names_cannot_forge_or_bloat_access_log_lines() {
    let rt = common::runtime();
    let mock = common::start_mock(&rt, MockConfig::horizon());
    let dir = temp_dir("accesslog");
    let port = free_port();
    let path = dir.join("k2proxy.yaml");
    std::fs::write(
        &path,
        format!(
            "server:\n  listen: [\"127.0.0.1:{port}\"]\nupstream:\n  base_url: \"{}\"\nauth:\n  api_keys: [\"{KEY}\"]\nlogging:\n  access_log: true\n  format: plain\n",
            mock.base_url()
        ),
    )
    .unwrap();
    let mut proc = spawn_proxy(&path, port);
    let forged = "m\r\n2026-12-01T00:00:00.000Z req_forged POST /admin 200 key=root\u{0}";
    let huge = "x".repeat(1_000_000);
    for model in [forged, huge.as_str()] {
        let body = json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
        let out = raw(
            port,
            &post(
                "/v1/chat/completions",
                &body.to_string(),
                "Connection: close\r\n",
            ),
        );
        assert!(
            out.starts_with("HTTP/1.1 404"),
            "{}",
            &out[..out.len().min(300)]
        );
    }
    // The access log's writer puts its lines out at least every 100 ms (a SIGKILL loses
    // what it has not written yet).
    std::thread::sleep(k2proxy::access_log::FLUSH_EVERY * 3);
    let _ = proc.child.kill();
    let mut log = String::new();
    proc.child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 2, "one line per request: {log}");
    assert!(!log.contains('\0') && !log.contains('\r'), "{log:?}");
    assert!(!log.contains("\nreq_forged") && lines.iter().all(|l| !l.contains(" key=root ")));
    assert!(
        lines.iter().all(|l| l.len() < 2048),
        "a line stays short: {}",
        lines.iter().map(|l| l.len()).max().unwrap_or(0)
    );
}
