//! Client faults (issue 7, point 2): clients that leave, stop reading, dribble their
//! headers or body, or sit idle. Raw TCP clients, so each fault is exactly what is sent.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use common::{chat_body, within, Env, MODEL};
use k2proxy::config::Config;
use k2proxy::mock::MockConfig;
use k2proxy::provider::k2think::decode::ContentDelivery;

/// Raw HTTP/1.1 request bytes for a chat completion.
fn request(prompt: &str, stream: bool) -> Vec<u8> {
    let body = chat_body(MODEL, prompt, stream).to_string();
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: k2\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn connect(env: &Env) -> TcpStream {
    let s = TcpStream::connect(env.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

/// Read until `needle` has arrived; everything read so far.
fn read_until(s: &mut TcpStream, needle: &str) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains(needle) {
        let n = s.read(&mut buf).expect("read");
        assert!(
            n > 0,
            "closed before {needle:?}: {}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// True once the server has closed the connection (reads to EOF or a reset).
fn closed_by_server(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return false,
            Err(_) => return true,
        }
    }
}

fn gauge(env: &Env, which: &str) -> i64 {
    let m = env.app.metrics();
    match which {
        "in_flight" => m.requests_in_flight.get(),
        "connections" => m.client_connections.get(),
        _ => unreachable!(),
    }
}

fn stream_outcome(env: &Env, outcome: &str) -> u64 {
    env.app
        .metrics()
        .stream_outcomes
        .with_label_values(&[outcome])
        .get()
}

fn chat_status_count(env: &Env, status: &str) -> u64 {
    env.app
        .metrics()
        .requests
        .with_label_values(&["chat", MODEL, status])
        .get()
}

#[test]
fn a_client_that_leaves_mid_stream_drops_the_upstream_at_once() {
    let env = Env::start(MockConfig::default(), |c| {
        c.upstream.content_delivery = ContentDelivery::Incremental;
    });
    let mut s = connect(&env);
    // Paced: the whole answer would take a minute.
    s.write_all(&request(
        "leave [[mock: pace_ms=200; answer_words=300; delivery=incremental]]",
        true,
    ))
    .unwrap();
    read_until(&mut s, "data: ");
    assert_eq!(env.mock().active_streams(), 1);
    drop(s);
    let took = within(Duration::from_secs(3), "upstream dropped", || {
        env.mock().active_streams() == 0
    });
    within(Duration::from_secs(2), "request finished", || {
        gauge(&env, "in_flight") == 0
    });
    assert_eq!(stream_outcome(&env, "client_abort"), 1);
    assert_eq!(stream_outcome(&env, "complete"), 0);
    assert_eq!(gauge(&env, "connections"), 0);
    eprintln!("upstream dropped {took:?} after the client left");
    // and the proxy still serves
    let r = env.chat(&chat_body(MODEL, "still here", false));
    assert_eq!(r.status, 200);
}

#[test]
fn a_client_that_leaves_before_the_first_token_drops_the_upstream() {
    let env = Env::start(MockConfig::default(), |_| {});
    for stream in [true, false] {
        let mut s = connect(&env);
        // The mock holds the answer at a gate that never opens: a long prefill.
        s.write_all(&request(
            "prefill [[mock: gate=never; gate_after=0]]",
            stream,
        ))
        .unwrap();
        within(Duration::from_secs(3), "upstream asked", || {
            env.mock().active_streams() == 1
        });
        s.shutdown(Shutdown::Both).unwrap();
        drop(s);
        within(Duration::from_secs(3), "upstream dropped", || {
            env.mock().active_streams() == 0 && gauge(&env, "in_flight") == 0
        });
    }
    assert_eq!(chat_status_count(&env, "499"), 2);
    assert_eq!(stream_outcome(&env, "client_abort"), 1, "the streaming one");
}

#[test]
fn a_client_that_stops_reading_is_cut_off_by_the_write_timeout() {
    let env = Env::start(MockConfig::default(), |c| {
        c.limits.client_write_timeout = Duration::from_millis(500);
        c.upstream.content_delivery = ContentDelivery::Incremental;
    });
    let mut s = connect(&env);
    // Far more than the socket buffers hold, as fast as the mock can send it.
    s.write_all(&request(
        "flood [[mock: answer_words=400000; delivery=incremental; chunk=16]]",
        true,
    ))
    .unwrap();
    read_until(&mut s, "data: ");
    // Never read again, never close.
    within(Duration::from_secs(20), "slow reader cut off", || {
        stream_outcome(&env, "client_abort") == 1
    });
    within(Duration::from_secs(3), "upstream dropped", || {
        env.mock().active_streams() == 0
    });
    within(Duration::from_secs(3), "request finished", || {
        gauge(&env, "in_flight") == 0
    });
    assert_eq!(stream_outcome(&env, "complete"), 0);
    // The proxy let go of the connection while the client still holds its end.
    within(Duration::from_secs(3), "connection released", || {
        gauge(&env, "connections") == 0
    });
    assert!(closed_by_server(&mut s));
}

#[test]
fn slow_and_endless_request_heads_are_cut() {
    let env = Env::start(MockConfig::default(), |c| {
        c.limits.client_header_timeout = Duration::from_millis(800);
    });
    // A connection that says nothing is closed.
    let mut silent = connect(&env);
    // A head dribbled a byte at a time, each byte well inside Pingora's per-read timeout.
    let mut drip = connect(&env);
    drip.set_nonblocking(false).unwrap();
    let started = Instant::now();
    let head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: k2\r\nX-Slow: ";
    let mut cut = false;
    for b in head.iter().chain(std::iter::repeat(&b'a')) {
        if drip.write_all(&[*b]).is_err() {
            cut = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
        if started.elapsed() > Duration::from_secs(10) {
            break;
        }
    }
    assert!(cut, "a dribbled head must be cut off");
    assert!(closed_by_server(&mut drip));
    assert!(
        closed_by_server(&mut silent),
        "a silent connection is closed"
    );

    // An endless head (sent fast) ends with 400 or a close, never holds on.
    let mut endless = connect(&env);
    endless
        .write_all(b"GET /v1/models HTTP/1.1\r\nHost: k2\r\n")
        .unwrap();
    let line = format!("X-Junk: {}\r\n", "j".repeat(1000));
    let mut refused = false;
    for _ in 0..4000 {
        if endless.write_all(line.as_bytes()).is_err() {
            refused = true;
            break;
        }
    }
    assert!(refused || closed_by_server(&mut endless));

    // A kept-alive connection is not cut while idle between requests.
    let mut keep = connect(&env);
    keep.write_all(b"GET /health HTTP/1.1\r\nHost: k2\r\n\r\n")
        .unwrap();
    read_until(&mut keep, "\r\n\r\n");
    std::thread::sleep(Duration::from_millis(1500));
    keep.write_all(b"GET /health HTTP/1.1\r\nHost: k2\r\n\r\n")
        .unwrap();
    let again = read_until(&mut keep, "\r\n\r\n");
    assert!(again.starts_with("HTTP/1.1 200"), "{again}");

    // Everything else still works.
    assert_eq!(env.chat(&chat_body(MODEL, "fine", false)).status, 200);
}

#[test]
fn a_slow_request_body_gets_408() {
    let env = Env::start(MockConfig::default(), |c: &mut Config| {
        c.limits.client_body_timeout = Duration::from_millis(500);
    });
    let mut s = connect(&env);
    s.write_all(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: k2\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"model\":",
    )
    .unwrap();
    let got = read_until(&mut s, "}}");
    assert!(got.starts_with("HTTP/1.1 408"), "{got}");
    assert!(got.contains("\"code\":\"request_body_timeout\""), "{got}");
    assert!(
        closed_by_server(&mut s),
        "not kept alive after a broken body"
    );
    assert!(env.requests().is_empty(), "nothing reached the upstream");
}

#[test]
fn many_idle_connections_do_not_starve_active_ones() {
    let env = Env::start(MockConfig::default(), |c| {
        c.limits.client_header_timeout = Duration::from_secs(30);
    });
    // 150 connections that never send a byte, 50 kept alive after one request.
    let mut idle: Vec<TcpStream> = (0..150).map(|_| connect(&env)).collect();
    for _ in 0..50 {
        let mut s = connect(&env);
        s.write_all(b"GET /health HTTP/1.1\r\nHost: k2\r\n\r\n")
            .unwrap();
        read_until(&mut s, "\r\n\r\n");
        idle.push(s);
    }
    within(Duration::from_secs(5), "all connections accepted", || {
        gauge(&env, "connections") >= 200
    });
    // Active clients are served in full, streaming and not, with the idle ones open.
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let client = env.client.clone();
            let url = env.url("/v1/chat/completions");
            env.rt.spawn(async move {
                let body = chat_body(MODEL, &format!("busy {i}"), i % 2 == 0);
                let r = client.post(url).json(&body).send().await.unwrap();
                let status = r.status().as_u16();
                let text = r.text().await.unwrap();
                (status, text)
            })
        })
        .collect();
    for h in handles {
        let (status, text) = env.rt.block_on(h).unwrap();
        assert_eq!(status, 200, "{text}");
        assert!(
            text.contains("data: [DONE]") || text.contains("\"finish_reason\":\"stop\""),
            "{text}"
        );
        assert!(!text.contains("\"finish_reason\":\"error\""), "{text}");
    }
    assert!(
        gauge(&env, "connections") >= 200,
        "idle ones are still open"
    );
    drop(idle);
    within(
        Duration::from_secs(5),
        "closed connections are let go",
        || gauge(&env, "connections") == 0,
    );
}
