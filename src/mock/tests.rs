//! Black-box tests of the mock K2Think upstream over raw HTTP/1.1 on a TcpStream.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::{markup_for, Account, Delivery, Directives, Form, MockConfig, MockServer, TokenIn};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const MODEL: &str = "MBZUAI-IFM/K2-Think-v2";

async fn start(cfg: MockConfig) -> MockServer {
    MockServer::start("127.0.0.1:0".parse().unwrap(), cfg)
        .await
        .unwrap()
}

/// A raw HTTP/1.1 exchange, read incrementally.
struct Conn {
    s: TcpStream,
    buf: Vec<u8>,
    sent_at: Instant,
    head_at: Option<Instant>,
    eof: bool,
    /// The read side ended with an error (e.g. reset) rather than a clean EOF.
    reset: bool,
}

impl Conn {
    async fn send(
        addr: SocketAddr,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Conn {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if !body.is_empty() || method == "POST" {
            req.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);
        s.write_all(&bytes).await.unwrap();
        Conn {
            s,
            buf: Vec::new(),
            sent_at: Instant::now(),
            head_at: None,
            eof: false,
            reset: false,
        }
    }

    /// Reads once; false on timeout or EOF.
    async fn read_some(&mut self, t: Duration) -> bool {
        if self.eof {
            return false;
        }
        let mut tmp = [0u8; 16384];
        match tokio::time::timeout(t, self.s.read(&mut tmp)).await {
            Err(_) => false,
            Ok(Ok(0)) => {
                self.eof = true;
                false
            }
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&tmp[..n]);
                if self.head_at.is_none() && find(&self.buf, b"\r\n\r\n").is_some() {
                    self.head_at = Some(Instant::now());
                }
                true
            }
            Ok(Err(_)) => {
                self.eof = true;
                self.reset = true;
                false
            }
        }
    }

    async fn read_to_end(&mut self, t: Duration) -> &mut Conn {
        let deadline = Instant::now() + t;
        while !self.eof {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "response did not end in {t:?}: {}",
                String::from_utf8_lossy(&self.buf)
            );
            self.read_some(left).await;
        }
        self
    }

    /// Reads until `pred` holds on the parsed response.
    async fn read_until(&mut self, t: Duration, pred: impl Fn(&Parsed) -> bool) -> Parsed {
        let deadline = Instant::now() + t;
        loop {
            let p = parse(&self.buf);
            if pred(&p) {
                return p;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero() && !self.eof,
                "condition not met: {}",
                String::from_utf8_lossy(&self.buf)
            );
            self.read_some(left).await;
        }
    }

    fn parsed(&self) -> Parsed {
        parse(&self.buf)
    }
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

#[derive(Debug, Default)]
struct Parsed {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    chunks: usize,
    /// Chunked terminator seen, or Content-Length satisfied.
    complete: bool,
}

impl Parsed {
    fn header(&self, n: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.as_str())
    }
    fn text(&self) -> String {
        String::from_utf8(self.body.clone()).unwrap()
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
    /// SSE `data:` payloads in order.
    fn events(&self) -> Vec<String> {
        let t = String::from_utf8_lossy(&self.body).replace("\r\n", "\n");
        t.split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .map(str::to_string)
            .collect()
    }
}

fn parse(buf: &[u8]) -> Parsed {
    let Some(h) = find(buf, b"\r\n\r\n") else {
        return Parsed::default();
    };
    let head = String::from_utf8_lossy(&buf[..h]).to_string();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut p = Parsed {
        status,
        headers,
        ..Parsed::default()
    };
    let rest = &buf[h + 4..];
    if p.header("transfer-encoding") == Some("chunked") {
        let mut at = 0;
        while let Some(e) = find(&rest[at..], b"\r\n") {
            let size =
                usize::from_str_radix(std::str::from_utf8(&rest[at..at + e]).unwrap().trim(), 16)
                    .unwrap();
            let start = at + e + 2;
            if size == 0 {
                p.complete = rest.len() >= start + 2;
                break;
            }
            if rest.len() < start + size + 2 {
                break;
            }
            p.body.extend_from_slice(&rest[start..start + size]);
            p.chunks += 1;
            at = start + size + 2;
        }
    } else {
        let len: usize = p.header("content-length").map_or(0, |v| v.parse().unwrap());
        p.body = rest[..rest.len().min(len)].to_vec();
        p.complete = rest.len() >= len;
    }
    p
}

fn chat_body(text: &str, stream: bool) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "model": MODEL, "stream": stream, "params": {},
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": text}],
        "features": {"web_search": false}, "chat_id": "c1", "id": "i1", "session_id": "s1",
    }))
    .unwrap()
}

async fn chat(addr: SocketAddr, bearer: Option<&str>, text: &str, stream: bool) -> Conn {
    let auth = bearer.map(|b| format!("Bearer {b}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    Conn::send(
        addr,
        "POST",
        "/api/chat/completions",
        &headers,
        &chat_body(text, stream),
    )
    .await
}

async fn chat_done(addr: SocketAddr, bearer: Option<&str>, text: &str, stream: bool) -> Parsed {
    let mut c = chat(addr, bearer, text, stream).await;
    c.read_to_end(Duration::from_secs(5)).await.parsed()
}

/// Folds the content events into the final text, per delivery.
fn accumulate(events: &[String], delivery: Delivery) -> String {
    let mut acc = String::new();
    for e in events {
        if e == "[DONE]" {
            continue;
        }
        let v: Value = serde_json::from_str(e).unwrap();
        if v.get("done").is_some() || v.get("usage").is_some() {
            continue;
        }
        match delivery {
            Delivery::Cumulative => acc = v["content"].as_str().unwrap().to_string(),
            Delivery::Incremental => acc.push_str(v["content"].as_str().unwrap()),
            Delivery::Delta => {
                acc.push_str(v["choices"][0]["delta"]["content"].as_str().unwrap_or(""))
            }
        }
    }
    acc
}

#[tokio::test]
async fn every_form_and_delivery_accumulates_to_the_markup() {
    let m = start(MockConfig::default()).await;
    for form in Form::ALL {
        for delivery in Delivery::ALL {
            let text = format!(
                "Grüße, 世界 🙂 [[mock: form={}; delivery={}; chunk=5; reasoning_words=11; answer_words=3]]",
                form.as_str(),
                delivery.as_str()
            );
            let d = Directives::parse(&format!(
                "form={} delivery={} chunk=5 reasoning_words=11 answer_words=3",
                form.as_str(),
                delivery.as_str()
            ));
            let expected = markup_for(&text, &d);
            let p = chat_done(m.addr(), Some("tok"), &text, true).await;
            assert_eq!(p.status, 200);
            assert!(p.complete);
            assert!(p
                .header("content-type")
                .unwrap()
                .starts_with("text/event-stream"));
            let events = p.events();
            assert!(events.len() > 5, "{form:?} {delivery:?}: {events:?}");
            assert_eq!(
                accumulate(&events, delivery),
                expected,
                "{form:?} {delivery:?}"
            );
            // Default end: done event with the full text, then [DONE]; usage before them.
            assert_eq!(events.last().unwrap(), "[DONE]");
            let done: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
            assert_eq!(done["done"], true);
            assert_eq!(done["content"], expected.as_str());
            let usage: Value = serde_json::from_str(&events[events.len() - 3]).unwrap();
            assert!(usage["usage"]["total_tokens"].as_u64().unwrap() > 0);
            if delivery == Delivery::Delta {
                let fin: Value = serde_json::from_str(&events[events.len() - 4]).unwrap();
                assert_eq!(fin["choices"][0]["finish_reason"], "stop");
            }
        }
    }
    let fixed = markup_for("hi", &Directives::parse("form=v2 duration=4"));
    assert_eq!(fixed, "<think duration=\"4\">The user wrote 2 characters.\nI should reply with an echo.</think>\nEcho: hi");
    m.shutdown().await;
}

#[test]
fn markup_forms_are_the_documented_ones() {
    let r = "The user wrote 2 characters.\nI should reply with an echo.";
    let cases = [
        ("v1", format!("<think>{r}</think>\n<answer>Echo: hi</answer>")),
        ("v2", format!("<think duration=\"3\">{r}</think>\nEcho: hi")),
        ("v2-answer", format!("<think duration=\"3\">{r}</think>\n<answer>Echo: hi</answer>")),
        ("v2-noopen", format!("{r}</think>\n\nEcho: hi")),
        ("details", "<details type=\"reasoning\" done=\"true\" duration=\"3\">\n<summary>Thought for 3 seconds</summary>\n> The user wrote 2 characters.\n> I should reply with an echo.\n</details>\n<answer>Echo: hi</answer>".to_string()),
        ("none", "Echo: hi".to_string()),
    ];
    for (form, want) in cases {
        let d = Directives::parse(&format!("form={form}"));
        assert_eq!(markup_for("hi [[mock: pace_ms=1]]", &d), want, "{form}");
    }
    let d = Directives::parse("answer_words=2 reasoning_words=3");
    let (r, a) = super::reply_for("日本", &d);
    assert_eq!(
        r,
        "The user wrote 2 characters.\nI should reply with an echo.\nalpha bravo charlie"
    );
    assert_eq!(a, "Echo: 日本 alpha bravo");
}

#[tokio::test]
async fn details_head_is_rewritten_in_cumulative_content() {
    let m = start(MockConfig::default()).await;
    let p = chat_done(
        m.addr(),
        Some("tok;form=details;chunk=6"),
        "hello there",
        true,
    )
    .await;
    let contents: Vec<String> = p
        .events()
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter(|v| v.get("done").is_none())
        .filter_map(|v| v["content"].as_str().map(str::to_string))
        .collect();
    let first_done = contents
        .iter()
        .position(|c| c.contains("done=\"true\""))
        .unwrap();
    assert!(first_done >= 2);
    for c in &contents[..first_done] {
        assert!(c.starts_with(
            "<details type=\"reasoning\" done=\"false\">\n<summary>Thinking…</summary>\n> "
        ));
        assert!(!c.contains("</details>"));
    }
    // The rewrite: the new snapshot does not extend the previous one.
    assert!(!contents[first_done].starts_with(&contents[first_done - 1]));
    assert!(contents[first_done].contains("<summary>Thought for 3 seconds</summary>\n> The user wrote 11 characters.\n> I should reply with an echo.\n</details>\n<answe"));
    // Before the rewrite, every snapshot extends the previous one.
    for w in contents[..first_done].windows(2) {
        assert!(w[1].starts_with(&w[0]));
    }
    m.shutdown().await;
}

#[tokio::test]
async fn non_stream_gives_a_json_completion() {
    let m = start(MockConfig::default()).await;
    let p = chat_done(m.addr(), Some("tok;form=v2-answer"), "ping", false).await;
    assert_eq!(p.status, 200);
    assert_eq!(p.header("content-type"), Some("application/json"));
    assert!(p.header("content-length").is_some());
    let v = p.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], MODEL);
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    let expected = markup_for("ping", &Directives::parse("form=v2-answer"));
    assert_eq!(v["choices"][0]["message"]["content"], expected.as_str());
    assert!(v["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    let p = chat_done(m.addr(), Some("tok;usage=false"), "ping", false).await;
    assert!(p.json().get("usage").is_none());
    m.shutdown().await;
}

#[tokio::test]
async fn end_usage_crlf_and_python_json() {
    let m = start(MockConfig::default()).await;
    let p = chat_done(
        m.addr(),
        Some("t;end=marker;usage=false;crlf=true"),
        "x",
        true,
    )
    .await;
    let raw = String::from_utf8(p.body.clone()).unwrap();
    assert!(raw.contains("\r\n\r\n") && !raw.contains("}\n\n"));
    let ev = p.events();
    assert_eq!(ev.last().unwrap(), "[DONE]");
    assert!(ev
        .iter()
        .all(|e| !e.contains("\"done\"") && !e.contains("usage")));
    let p = chat_done(m.addr(), Some("t;end=done"), "x", true).await;
    let ev = p.events();
    assert!(ev.last().unwrap().contains("\"done\":true"));
    assert!(!ev.contains(&"[DONE]".to_string()));
    let p = chat_done(m.addr(), Some("t;end=none;usage=false"), "x", true).await;
    assert!(p.complete);
    assert!(p
        .events()
        .iter()
        .all(|e| !e.contains("done") && e != "[DONE]"));
    let p = chat_done(m.addr(), Some("t;json=python;chunk=100"), "é", true).await;
    let raw = p.text();
    assert!(raw.contains("data: {\"content\": \"<think>"), "{raw}");
    assert!(raw.contains("Echo: \\u00e9"), "{raw}");
    m.shutdown().await;
}

#[tokio::test]
async fn status_faults() {
    let m = start(MockConfig::default()).await;
    for (tok, status) in [
        ("t;fault=401", 401),
        ("t;fault=403", 403),
        ("t;fault=500", 500),
        ("t;fault=503", 503),
        ("t;fault=418", 418),
    ] {
        let p = chat_done(m.addr(), Some(tok), "x", true).await;
        assert_eq!(p.status, status, "{tok}");
        assert_eq!(p.header("content-type"), Some("application/json"));
        assert!(p.json()["detail"].is_string());
    }
    let p = chat_done(m.addr(), Some("t;fault=502"), "x", true).await;
    assert_eq!(p.status, 502);
    assert!(p.header("content-type").unwrap().starts_with("text/html"));
    let p = chat_done(m.addr(), Some("t;fault=429"), "x", true).await;
    assert_eq!((p.status, p.header("retry-after")), (429, Some("2")));
    let p = chat_done(m.addr(), Some("t;fault=429;retry_after=3"), "x", false).await;
    assert_eq!(p.header("retry-after"), Some("3"));
    let p = chat_done(m.addr(), Some("t;fault=429;retry_after=date:30"), "x", true).await;
    let date = p.header("retry-after").unwrap();
    assert!(date.ends_with(" GMT") && date.len() == 29, "{date}");
    let p = chat_done(m.addr(), Some("t"), "x [[mock: fault=html]]", true).await;
    assert_eq!(p.status, 200);
    assert!(p.header("content-type").unwrap().starts_with("text/html"));
    assert!(p.text().contains("Just a moment..."));
    let p = chat_done(m.addr(), Some("t;fault=garbage"), "x", true).await;
    assert_eq!(p.status, 200);
    assert!(p
        .header("content-type")
        .unwrap()
        .starts_with("text/event-stream"));
    assert!(p.body.len() >= 256 && find(&p.body, b"data:").is_none());
    assert!(std::str::from_utf8(&p.body).is_err());
    m.shutdown().await;
}

#[tokio::test]
async fn cut_close_and_error_event() {
    let m = start(MockConfig::default()).await;
    let mut c = chat(m.addr(), Some("t;fault=cut"), "hello", true).await;
    c.read_to_end(Duration::from_secs(5)).await;
    let p = c.parsed();
    assert_eq!(p.status, 200);
    assert!(!p.complete, "cut must not send the terminator");
    assert!(find(&c.buf, b"\r\n0\r\n\r\n").is_none());
    assert_eq!(p.events().len(), 2);
    let p = chat_done(m.addr(), Some("t;fault=cut;cut_after=4"), "hello", true).await;
    assert_eq!(p.events().len(), 4);
    assert!(!p.complete);
    // Non-stream cut: half a JSON body, then the connection drops.
    let p = chat_done(m.addr(), Some("t;fault=cut"), "hello", false).await;
    assert!(!p.complete && !p.body.is_empty() && serde_json::from_slice::<Value>(&p.body).is_err());

    let mut c = chat(m.addr(), Some("t;fault=close"), "hello", true).await;
    c.read_to_end(Duration::from_secs(5)).await;
    assert!(c.buf.is_empty(), "close must send nothing");

    let p = chat_done(
        m.addr(),
        Some("t;fault=error_event;cut_after=3"),
        "hello",
        true,
    )
    .await;
    let ev = p.events();
    assert_eq!(ev.len(), 4);
    let last: Value = serde_json::from_str(&ev[3]).unwrap();
    assert_eq!(last["error"]["message"], "upstream model error");

    let recs = m.requests();
    let cut = &recs[0];
    assert_eq!(
        (cut.response_status, cut.events_written, cut.completed),
        (200, 2, false)
    );
    let close = &recs[3];
    assert_eq!((close.response_status, close.completed), (0, false));
    m.shutdown().await;
}

#[tokio::test]
async fn slowhead_delays_the_head() {
    let m = start(MockConfig::default()).await;
    let mut c = chat(
        m.addr(),
        Some("t;fault=slowhead;slowhead_ms=300"),
        "x",
        true,
    )
    .await;
    c.read_to_end(Duration::from_secs(5)).await;
    let waited = c.head_at.unwrap() - c.sent_at;
    assert!(waited >= Duration::from_millis(290), "{waited:?}");
    assert!(c.parsed().complete);
    let mut c = chat(m.addr(), Some("t"), "x", true).await;
    c.read_to_end(Duration::from_secs(5)).await;
    assert!(c.head_at.unwrap() - c.sent_at < Duration::from_millis(250));
    m.shutdown().await;
}

#[tokio::test]
async fn stall_holds_then_drops_and_disconnect_frees_the_stream() {
    let m = start(MockConfig::default()).await;
    let mut c = chat(
        m.addr(),
        Some("t;fault=stall;stall_ms=400;cut_after=1"),
        "x",
        true,
    )
    .await;
    let p = c
        .read_until(Duration::from_secs(2), |p| p.events().len() == 1)
        .await;
    assert_eq!(p.status, 200);
    assert!(
        !c.read_some(Duration::from_millis(200)).await,
        "nothing during the stall"
    );
    assert!(!c.eof, "connection still open during the stall");
    assert_eq!(m.active_streams(), 1);
    c.read_to_end(Duration::from_secs(2)).await;
    assert!(!c.parsed().complete);

    // A client that goes away mid-stall frees the stream at once.
    let mut c = chat(m.addr(), Some("t;fault=stall;cut_after=1"), "x", true).await;
    c.read_until(Duration::from_secs(2), |p| p.events().len() == 1)
        .await;
    assert_eq!(m.active_streams(), 1);
    drop(c);
    let t0 = Instant::now();
    while m.active_streams() != 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "stream leaked after disconnect"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    m.shutdown().await;
}

#[tokio::test]
async fn gates_hold_streams_until_opened() {
    let m = start(MockConfig::default()).await;
    let mut c = chat(
        m.addr(),
        Some("t;gate=g1;gate_after=2"),
        "hello world",
        true,
    )
    .await;
    c.read_until(Duration::from_secs(2), |p| p.events().len() == 2)
        .await;
    assert!(!c.read_some(Duration::from_millis(200)).await);
    assert_eq!(c.parsed().events().len(), 2);
    assert_eq!(m.requests()[0].events_written, 2);
    assert!(!m.requests()[0].completed);
    m.open_gate("g1");
    c.read_to_end(Duration::from_secs(2)).await;
    let p = c.parsed();
    assert!(p.complete);
    assert_eq!(
        accumulate(&p.events(), Delivery::Cumulative),
        markup_for("hello world", &Directives::default())
    );
    assert!(m.requests()[0].completed);

    // Opened before the request arrives: no wait.
    m.open_gate("g2");
    let p = chat_done(m.addr(), Some("t;gate=g2"), "x", true).await;
    assert!(p.complete);

    // Opened through the control endpoint; gate_after=0 holds even the first event.
    let mut c = chat(m.addr(), Some("t;gate=g3;gate_after=0"), "x", true).await;
    let p = c
        .read_until(Duration::from_secs(2), |p| p.status == 200)
        .await;
    assert!(p.events().is_empty());
    assert!(!c.read_some(Duration::from_millis(150)).await);
    let mut o = Conn::send(m.addr(), "POST", "/__mock/gates/g3/open", &[], b"").await;
    assert_eq!(
        o.read_to_end(Duration::from_secs(2)).await.parsed().json()["opened"],
        "g3"
    );
    c.read_to_end(Duration::from_secs(2)).await;
    assert!(c.parsed().complete);

    // Non-stream requests wait before the head.
    let mut c = chat(m.addr(), Some("t;gate=g4"), "x", false).await;
    assert!(!c.read_some(Duration::from_millis(150)).await);
    assert!(c.buf.is_empty());
    m.open_gate("g4");
    assert_eq!(
        c.read_to_end(Duration::from_secs(2)).await.parsed().status,
        200
    );
    m.shutdown().await;
}

#[tokio::test]
async fn split_writes_small_frames_and_pace_spaces_events() {
    let m = start(MockConfig::default()).await;
    let p = chat_done(m.addr(), Some("t;split=7;chunk=50"), "hé 世界", true).await;
    let events = p.events();
    assert!(
        p.chunks > events.len() * 3,
        "{} frames for {} events",
        p.chunks,
        events.len()
    );
    assert_eq!(
        accumulate(&events, Delivery::Cumulative),
        markup_for("hé 世界", &Directives::default())
    );

    let t0 = Instant::now();
    let p = chat_done(
        m.addr(),
        Some("t;pace_ms=40;chunk=1000;usage=false"),
        "x",
        true,
    )
    .await;
    assert_eq!(p.events().len(), 3); // content, done, [DONE]
    assert!(t0.elapsed() >= Duration::from_millis(80));
    m.shutdown().await;
}

#[tokio::test]
async fn signin_hands_out_tokens_in_body_or_cookie() {
    let mut cookie_acc = Account::new("c@x.io", "pw2");
    cookie_acc.token_in = TokenIn::Cookie;
    let mut body_acc = Account::new("b@x.io", "pw1");
    body_acc.token_in = TokenIn::Body;
    let mut failing = Account::new("f@x.io", "pw3");
    failing.fail_status = Some(500);
    let cfg = MockConfig {
        accounts: vec![
            body_acc,
            cookie_acc,
            failing,
            Account::new("both@x.io", "pw"),
        ],
        strict_tokens: true,
        ..MockConfig::default()
    };
    let m = start(cfg).await;
    let signin = |email: &str, pw: &str| {
        let body = serde_json::to_vec(&json!({"email": email, "password": pw})).unwrap();
        let addr = m.addr();
        async move {
            let mut c = Conn::send(addr, "POST", "/api/v1/auths/signin", &[], &body).await;
            c.read_to_end(Duration::from_secs(2)).await.parsed()
        }
    };
    let p = signin("b@x.io", "pw1").await;
    assert_eq!(p.status, 200);
    assert!(p.header("set-cookie").is_none());
    let v = p.json();
    assert_eq!(
        (v["role"].as_str(), v["token_type"].as_str()),
        (Some("user"), Some("Bearer"))
    );
    let body_token = v["token"].as_str().unwrap().to_string();
    let parts: Vec<&str> = body_token.split('.').collect();
    assert_eq!(parts.len(), 3);
    use base64::Engine;
    let payload: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(parts[1])
            .unwrap(),
    )
    .unwrap();
    assert_eq!(payload["exp"], v["expires_at"]);
    assert_eq!(payload["id"], v["id"]);

    let p = signin("c@x.io", "pw2").await;
    assert!(p.json().get("token").is_none());
    let sc = p.header("set-cookie").unwrap();
    assert!(
        sc.starts_with("token=eyJ") && sc.ends_with("; Path=/; HttpOnly; SameSite=Lax"),
        "{sc}"
    );
    let cookie_token = sc["token=".len()..sc.find(';').unwrap()].to_string();

    let p = signin("both@x.io", "pw").await;
    assert!(p.header("set-cookie").is_some() && p.json()["token"].is_string());

    let p = signin("b@x.io", "nope").await;
    assert_eq!(p.status, 400);
    assert_eq!(
        p.json()["detail"],
        "The email or password provided is incorrect."
    );
    assert_eq!(signin("nobody@x.io", "pw").await.status, 400);
    assert_eq!(signin("f@x.io", "pw3").await.status, 500);
    assert_eq!(m.signins("b@x.io"), 2);
    assert_eq!(m.signins("c@x.io"), 1);
    assert_eq!(m.signins("nobody@x.io"), 0);

    // Strict mode: issued tokens work by bearer and by cookie, others do not.
    assert_eq!(
        chat_done(m.addr(), Some(&body_token), "x", true)
            .await
            .status,
        200
    );
    let cookie = format!("theme=dark; token={cookie_token}");
    let mut c = Conn::send(
        m.addr(),
        "POST",
        "/api/chat/completions",
        &[("Cookie", &cookie)],
        &chat_body("x", true),
    )
    .await;
    assert_eq!(
        c.read_to_end(Duration::from_secs(2)).await.parsed().status,
        200
    );
    assert_eq!(
        m.requests().last().unwrap().cookie.as_deref(),
        Some(cookie_token.as_str())
    );
    let p = chat_done(m.addr(), Some("made-up"), "x", true).await;
    assert_eq!(p.status, 401);
    m.revoke_tokens();
    assert_eq!(
        chat_done(m.addr(), Some(&body_token), "x", true)
            .await
            .status,
        401
    );
    m.shutdown().await;
}

#[tokio::test]
async fn strict_tokens_and_auth() {
    let cfg = MockConfig {
        strict_tokens: true,
        valid_tokens: vec!["good".into()],
        token_ttl: Duration::from_secs(1),
        accounts: vec![Account::new("a@x.io", "pw")],
        ..MockConfig::default()
    };
    let m = start(cfg).await;
    let p = chat_done(m.addr(), None, "x", true).await;
    assert_eq!(
        (p.status, p.json()["detail"].as_str()),
        (401, Some("Not authenticated"))
    );
    assert_eq!(
        chat_done(m.addr(), Some("bad"), "x", true).await.status,
        401
    );
    let p = chat_done(
        m.addr(),
        Some("good;form=none;chunk=100;usage=false;end=marker"),
        "x",
        true,
    )
    .await;
    assert_eq!(p.status, 200);
    assert_eq!(p.events()[0], r#"{"content":"Echo: x"}"#);
    // Guest mode needs nothing and ignores the bearer for auth.
    let mut c = Conn::send(
        m.addr(),
        "POST",
        "/api/guest/chat/completions",
        &[("Authorization", "Bearer sk-suroy-123")],
        &chat_body("x", true),
    )
    .await;
    assert_eq!(
        c.read_to_end(Duration::from_secs(2)).await.parsed().status,
        200
    );
    let mut c = Conn::send(
        m.addr(),
        "POST",
        "/api/guest/chat/completions",
        &[],
        &chat_body("x", false),
    )
    .await;
    assert_eq!(
        c.read_to_end(Duration::from_secs(2)).await.parsed().status,
        200
    );
    // Issued tokens expire with token_ttl.
    let body = serde_json::to_vec(&json!({"email": "a@x.io", "password": "pw"})).unwrap();
    let mut c = Conn::send(m.addr(), "POST", "/api/v1/auths/signin", &[], &body).await;
    let tok = c.read_to_end(Duration::from_secs(2)).await.parsed().json()["token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        chat_done(m.addr(), Some(&tok), "x", false).await.status,
        200
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        chat_done(m.addr(), Some(&tok), "x", false).await.status,
        401
    );
    m.shutdown().await;
}

#[tokio::test]
async fn request_errors_and_other_endpoints() {
    let m = start(MockConfig::default()).await;
    let addr = m.addr();
    let run = |method: &'static str,
               path: &'static str,
               headers: Vec<(&'static str, &'static str)>,
               body: Vec<u8>| async move {
        let mut c = Conn::send(addr, method, path, &headers, &body).await;
        c.read_to_end(Duration::from_secs(2)).await.parsed()
    };
    let auth = vec![("Authorization", "Bearer tok")];
    let bad_model = serde_json::to_vec(
        &json!({"model": "gpt-4", "messages": [{"role": "user", "content": "x"}]}),
    )
    .unwrap();
    let p = run("POST", "/api/chat/completions", auth.clone(), bad_model).await;
    assert_eq!(
        (p.status, p.json()["detail"].as_str()),
        (400, Some("Model not found"))
    );
    let p = run(
        "POST",
        "/api/chat/completions",
        auth.clone(),
        b"{not json".to_vec(),
    )
    .await;
    assert_eq!(p.status, 400);
    assert!(p.json()["detail"].is_string());
    let p = run(
        "POST",
        "/api/chat/completions",
        auth.clone(),
        br#"{"model":"MBZUAI-IFM/K2-Think","messages":[]}"#.to_vec(),
    )
    .await;
    assert_eq!(p.status, 422);
    let p = run("GET", "/api/nope", vec![], vec![]).await;
    assert_eq!(
        (p.status, p.json()["detail"].as_str()),
        (404, Some("Not Found"))
    );
    let p = run("GET", "/api/chat/completions", auth.clone(), vec![]).await;
    assert_eq!(p.status, 405);
    let p = run("GET", "/api/models", auth.clone(), vec![]).await;
    let v = p.json();
    assert_eq!(v["data"][0]["id"], MODEL);
    assert_eq!(v["data"][1]["id"], "MBZUAI-IFM/K2-Think");
    assert_eq!(
        (
            v["data"][0]["owned_by"].as_str(),
            v["data"][0]["status"].as_str()
        ),
        (Some("MBZUAI"), Some("active"))
    );
    assert_eq!(run("GET", "/api/models", vec![], vec![]).await.status, 401);
    assert_eq!(
        run(
            "GET",
            "/api/models",
            vec![("Authorization", "Bearer t;fault=503")],
            vec![]
        )
        .await
        .status,
        503
    );
    assert_eq!(
        run("GET", "/api/v1/models", vec![], vec![]).await.json(),
        json!({"data": []})
    );
    let p = run("GET", "/guest", vec![], vec![]).await;
    assert_eq!(p.status, 200);
    assert!(p.headers.iter().filter(|(k, _)| k == "set-cookie").count() >= 1);
    let p = run(
        "POST",
        "/api/v1/chats/guest/new",
        vec![("Cookie", "guest_id=1")],
        br#"{"chat":{"title":"Guest Chat"}}"#.to_vec(),
    )
    .await;
    assert_eq!(p.json()["id"].as_str().unwrap().len(), 36);
    // Content as parts: text parts joined with \n.
    let parts = serde_json::to_vec(&json!({"model": MODEL, "stream": false, "messages": [
        {"role": "user", "content": "first"}, {"role": "assistant", "content": "ok"},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {"url": "data:x"}}, {"type": "text", "text": "b"}]}]})).unwrap();
    let p = run("POST", "/api/chat/completions", auth, parts).await;
    assert_eq!(
        p.json()["choices"][0]["message"]["content"],
        markup_for("a\nb", &Directives::default()).as_str()
    );
    m.shutdown().await;
}

#[tokio::test]
async fn directive_precedence() {
    let defaults = Directives {
        form: Form::V2,
        chunk: 1000,
        ..Directives::default()
    };
    let m = start(MockConfig {
        defaults,
        ..MockConfig::default()
    })
    .await;
    let content = |p: &Parsed| {
        p.json()["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let p = chat_done(m.addr(), Some("t"), "q", false).await;
    assert!(content(&p).starts_with("<think duration=\"3\">"));
    let p = chat_done(m.addr(), Some("t"), "q [[mock: form=details]]", false).await;
    assert!(content(&p).starts_with("<details"));
    let p = chat_done(
        m.addr(),
        Some("t;form=none;bogus=1;chunk=zero"),
        "q [[mock: form=details]]",
        false,
    )
    .await;
    assert_eq!(content(&p), "Echo: q");
    // Token beats text for faults too; bad values keep the earlier layer.
    let p = chat_done(
        m.addr(),
        Some("t;fault=none"),
        "q [[mock: fault=500]]",
        false,
    )
    .await;
    assert_eq!(p.status, 200);
    let p = chat_done(
        m.addr(),
        Some("t;fault=banana"),
        "q [[mock: fault=500]]",
        false,
    )
    .await;
    assert_eq!(p.status, 500);
    m.shutdown().await;
}

#[tokio::test]
async fn recording() {
    let m = start(MockConfig::default()).await;
    let p = chat_done(m.addr(), Some("tok-a;form=v2"), "rec me", true).await;
    assert!(p.complete);
    let r = m.requests();
    assert_eq!(r.len(), 1);
    let r = &r[0];
    assert_eq!(
        (r.method.as_str(), r.path.as_str()),
        ("POST", "/api/chat/completions")
    );
    assert_eq!(r.bearer.as_deref(), Some("tok-a;form=v2"));
    assert_eq!(r.header("authorization"), Some("Bearer tok-a;form=v2"));
    assert!(r.headers.iter().all(|(k, _)| k == &k.to_ascii_lowercase()));
    assert_eq!(r.json.as_ref().unwrap()["messages"][1]["content"], "rec me");
    assert_eq!(r.json.as_ref().unwrap()["chat_id"], "c1");
    assert_eq!(r.body, chat_body("rec me", true));
    assert_eq!(r.response_status, 200);
    assert!(r.completed);
    assert_eq!(r.events_written, p.events().len());

    let mut c = Conn::send(m.addr(), "GET", "/__mock/requests", &[], b"").await;
    let v = c.read_to_end(Duration::from_secs(2)).await.parsed().json();
    assert_eq!(
        v.as_array().unwrap().len(),
        1,
        "control calls are not recorded"
    );
    assert_eq!(v[0]["body"]["messages"][1]["content"], "rec me");
    assert_eq!(v[0]["bearer"], "tok-a;form=v2");
    let mut c = Conn::send(m.addr(), "DELETE", "/__mock/requests", &[], b"").await;
    assert_eq!(
        c.read_to_end(Duration::from_secs(2)).await.parsed().json()["cleared"],
        1
    );
    assert!(m.requests().is_empty());
    chat_done(m.addr(), Some("t"), "x", false).await;
    assert_eq!(m.requests().len(), 1);
    m.clear_requests();
    assert!(m.requests().is_empty());
    m.shutdown().await;

    let m = start(MockConfig {
        record: false,
        ..MockConfig::default()
    })
    .await;
    assert_eq!(chat_done(m.addr(), Some("t"), "x", true).await.status, 200);
    assert!(m.requests().is_empty());
    assert_eq!(m.active_streams(), 0);
    m.shutdown().await;
}

#[tokio::test]
async fn shutdown_drops_open_streams() {
    let m = start(MockConfig::default()).await;
    let addr = m.addr();
    let mut c = chat(addr, Some("t;gate=never"), "x", true).await;
    c.read_until(Duration::from_secs(2), |p| p.events().len() == 1)
        .await;
    m.shutdown().await;
    c.read_to_end(Duration::from_secs(2)).await;
    assert!(!c.parsed().complete);
    assert!(TcpStream::connect(addr).await.is_err());
}

/// A Horizon chat body: `messages` as given, `model` K2 Horizon, optional extra fields.
fn horizon_body(messages: Value, extra: Value) -> Vec<u8> {
    let mut v = json!({"model": crate::provider::k2think::HORIZON_MODEL, "stream": true, "messages": messages});
    if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
        o.extend(e.clone());
    }
    serde_json::to_vec(&v).unwrap()
}

async fn horizon_chat(addr: SocketAddr, body: &[u8]) -> Conn {
    let mut c = Conn::send(addr, "POST", "/api/guest/chat/completions", &[], body).await;
    c.read_to_end(Duration::from_secs(5)).await;
    c
}

#[tokio::test]
async fn horizon_personality_answers_like_chat_ifm_ai() {
    let m = start(MockConfig::horizon()).await;
    let user = json!([{"role": "user", "content": "hi"}]);
    let c = horizon_chat(m.addr(), &horizon_body(user.clone(), json!({}))).await;
    let p = c.parsed();
    assert_eq!(p.status, 200);
    assert!(
        !p.complete,
        "ragged: no chunked terminator after the last event"
    );
    let ev: Vec<Value> = p
        .events()
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert!(
        ev[0]["task_id"].is_string(),
        "a leading task_id: {:?}",
        ev[0]
    );
    let n = ev.len();
    assert_eq!(ev[n - 2]["done"], true);
    let d = Directives::horizon();
    let full = markup_for("hi", &d);
    assert_eq!(ev[n - 2]["content"], full.as_str());
    assert!(full.contains("</details>\nEcho: hi") && !full.contains("<answer>"));
    assert!(full.contains("\n> The user wrote 2 characters.\n> I should"));
    // The finish chunk repeats the answer after `done`.
    assert_eq!(ev[n - 1]["choices"][0]["finish_reason"], "stop");
    assert_eq!(ev[n - 1]["choices"][0]["delta"]["content"], "Echo: hi");
    assert!(!p.events().iter().any(|e| e == "[DONE]"));

    // The thinking-field rule: missing or null is a 400 with the upstream's words.
    for assistant in [
        json!({"role": "assistant", "content": "a"}),
        json!({"role": "assistant", "content": "a", "reasoning": null}),
    ] {
        let msgs =
            json!([{"role": "user", "content": "q"}, assistant, {"role": "user", "content": "q2"}]);
        let c = horizon_chat(m.addr(), &horizon_body(msgs, json!({}))).await;
        let p = c.parsed();
        assert_eq!(p.status, 400);
        let detail = p.json()["detail"].as_str().unwrap().to_string();
        assert!(
            detail.starts_with("messages[1]") && detail.contains("Add a supported thinking field"),
            "{detail}"
        );
    }
    for field in crate::provider::k2think::THINKING_FIELDS {
        let msgs = json!([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", field: ""}, {"role": "user", "content": "q2"}]);
        let c = horizon_chat(m.addr(), &horizon_body(msgs, json!({}))).await;
        assert_eq!(c.parsed().status, 200, "{field}");
    }

    // Effort closers, from either placement.
    for (kwargs, tag) in [
        (
            json!({"extra_body": {"chat_template_kwargs": {"reasoning_effort": "low"}}}),
            "think_faster",
        ),
        (
            json!({"chat_template_kwargs": {"reasoning_effort": "medium"}}),
            "think_fast",
        ),
        (json!({}), "think"),
    ] {
        let user = json!([{"role": "user", "content": "x [[mock: form=v2; task_id=false; finish_chunk=false]]"}]);
        let c = horizon_chat(m.addr(), &horizon_body(user, kwargs)).await;
        let ev = c.parsed().events();
        let done: Value = serde_json::from_str(&ev[ev.len() - 1]).unwrap();
        let content = done["content"].as_str().unwrap();
        assert!(
            content.starts_with(&format!("<{tag} duration="))
                && content.contains(&format!("</{tag}>\n")),
            "{content}"
        );
    }

    // A detail event with no content.
    let user = json!([{"role": "user", "content": "x [[mock: fault=detail; cut_after=2]]"}]);
    let c = horizon_chat(m.addr(), &horizon_body(user, json!({}))).await;
    let ev = c.parsed().events();
    assert_eq!(ev.len(), 3);
    let last: Value = serde_json::from_str(&ev[2]).unwrap();
    assert_eq!(last, json!({"detail": super::DETAIL_EVENT}));
    // Only K2 Horizon is served.
    let body = serde_json::to_vec(
        &json!({"model": MODEL, "stream": true, "messages": [{"role": "user", "content": "x"}]}),
    )
    .unwrap();
    let c = horizon_chat(m.addr(), &body).await;
    assert_eq!(c.parsed().status, 400);
    m.shutdown().await;

    // The old host today: its guest path answers 400, its user path still works.
    let m = start(MockConfig {
        legacy_guest_400: true,
        ..MockConfig::default()
    })
    .await;
    let c = horizon_chat(m.addr(), &chat_body("x", true)).await;
    let p = c.parsed();
    assert_eq!(
        (p.status, p.json()["detail"].clone()),
        (400, json!("Model not found"))
    );
    assert_eq!(chat_done(m.addr(), Some("t"), "x", true).await.status, 200);
    m.shutdown().await;
}
