//! Black-box tests of the Z.AI mock over HTTP (reqwest), with a signer written here from
//! `providers-protocol.md` §A.3.1 rather than taken from the mock.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use serde_json::{json, Value};

use super::{full_text, reply_for, Role, ZaiDirectives, ZaiFault, ZaiMock, ZaiMockConfig};

// ---------------------------------------------------------------------------------------
// Client side: signer, query encoding, SSE parsing, reconstruction.

/// §A.3.1, step by step.
fn sign(request_id: &str, ts: u64, user_id: &str, prompt: &str) -> String {
    use ring::hmac;
    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }
    let secret = "key-@@@@)))()((9))-xxxx&&&%%%%%";
    let bucket = (ts / (5 * 60 * 1000)).to_string();
    let derived = hex(hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes()),
        bucket.as_bytes(),
    )
    .as_ref());
    let sorted = format!("requestId,{request_id},timestamp,{ts},user_id,{user_id}");
    let message = format!("{sorted}|{}|{ts}", STANDARD.encode(prompt.as_bytes()));
    hex(hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, derived.as_bytes()),
        message.as_bytes(),
    )
    .as_ref())
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn jwt_id(token: &str) -> String {
    let payload = token.split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    claims["id"].as_str().unwrap().to_string()
}

/// The `data` objects of an SSE body (the envelope taken off), and whether `[DONE]` came.
fn sse_data(body: &str) -> (Vec<Value>, bool) {
    let mut out = Vec::new();
    let mut done = false;
    for ev in body.split("\n\n").filter(|e| !e.trim().is_empty()) {
        let payload = ev.strip_prefix("data: ").unwrap();
        if payload == "[DONE]" {
            done = true;
            continue;
        }
        let v: Value = serde_json::from_str(payload).unwrap();
        if v.get("type").and_then(Value::as_str) == Some("chat:completion") {
            out.push(v["data"].clone());
        } else {
            out.push(v);
        }
    }
    (out, done)
}

/// The accumulated message text: GFA (`rune`: truncate at the character index, append) or
/// GO-DOC (`byte`: overwrite in place from the byte offset, growing the buffer).
fn rebuild(events: &[Value], byte_offsets: bool) -> String {
    let mut buf: Vec<u8> = Vec::new();
    for e in events {
        if let Some(c) = e.get("edit_content").and_then(Value::as_str) {
            let at = e["edit_index"].as_u64().unwrap() as usize;
            if byte_offsets {
                if buf.len() < at + c.len() {
                    buf.resize(at + c.len(), b' ');
                }
                buf[at..at + c.len()].copy_from_slice(c.as_bytes());
            } else {
                let s: String = String::from_utf8_lossy(&buf).chars().take(at).collect();
                buf = format!("{s}{c}").into_bytes();
            }
        } else if let Some(c) = e.get("delta_content").and_then(Value::as_str) {
            buf.extend_from_slice(c.as_bytes());
        }
    }
    // Lossy: the wrong reading of an index may split a character.
    String::from_utf8_lossy(&buf).into_owned()
}

/// `(reasoning, answer)` out of a rebuilt text, as ZYP/GFA clean it.
fn split_reasoning(text: &str) -> (String, String) {
    match text.split_once("</details>\n") {
        Some((block, answer)) => {
            let inner = block.split_once("</summary>\n").unwrap().1;
            let reasoning = inner
                .trim_end_matches('\n')
                .lines()
                .map(|l| l.strip_prefix("> ").unwrap_or(l))
                .collect::<Vec<_>>()
                .join("\n");
            (reasoning, answer.to_string())
        }
        None => (String::new(), text.to_string()),
    }
}

fn strip_markers(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('【') {
        out.push_str(&rest[..i]);
        match rest[i..].find('】') {
            Some(j) => rest = &rest[i + j + '】'.len_utf8()..],
            None => {
                rest = &rest[i..];
                break;
            }
        }
    }
    out.push_str(rest);
    out
}

struct Client {
    base: String,
    http: reqwest::Client,
}

/// A completion request, correct unless changed.
struct Call {
    token: Option<String>,
    fe: Option<String>,
    query: Vec<(String, String)>,
    signature: Option<String>,
    body: Value,
}

impl Call {
    fn drop_query(mut self, key: &str) -> Call {
        self.query.retain(|(k, _)| k != key);
        self
    }

    fn set_query(mut self, key: &str, value: &str) -> Call {
        for (k, v) in self.query.iter_mut() {
            if k == key {
                *v = value.to_string();
            }
        }
        self
    }
}

struct Resp {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
    /// The body ended with an error (aborted), not cleanly.
    aborted: bool,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap()
    }
    fn data(&self) -> (Vec<Value>, bool) {
        sse_data(&self.body)
    }
}

async fn read(resp: reqwest::Response) -> Resp {
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let mut resp = resp;
    let mut bytes = Vec::new();
    let mut aborted = false;
    loop {
        match resp.chunk().await {
            Ok(Some(c)) => bytes.extend_from_slice(&c),
            Ok(None) => break,
            Err(_) => {
                aborted = true;
                break;
            }
        }
    }
    Resp {
        status,
        headers,
        body: String::from_utf8(bytes).unwrap(),
        aborted,
    }
}

fn chat_body(text: &str, model: &str, thinking: bool, chat_id: &str) -> Value {
    json!({
        "stream": true, "model": model,
        "messages": [{"role": "user", "content": text}],
        "signature_prompt": text,
        "params": {},
        "features": {"image_generation": false, "web_search": false, "auto_web_search": false,
                     "preview_mode": true, "flags": [], "enable_thinking": thinking},
        "variables": {},
        "chat_id": chat_id, "id": "a-msg-1", "current_user_message_id": "u-msg-1",
        "current_user_message_parent_id": null,
        "background_tasks": {"title_generation": false, "tags_generation": false},
    })
}

impl Client {
    fn new(mock: &ZaiMock) -> Client {
        Client {
            base: mock.base_url(),
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
        }
    }

    async fn get(&self, path: &str, bearer: Option<&str>, cookie: Option<&str>) -> Resp {
        let mut rb = self.http.get(format!("{}{path}", self.base));
        if let Some(b) = bearer {
            rb = rb.bearer_auth(b);
        }
        if let Some(c) = cookie {
            rb = rb.header("cookie", format!("token={c}"));
        }
        read(rb.send().await.unwrap()).await
    }

    async fn delete(&self, path: &str, bearer: &str) -> Resp {
        let rb = self
            .http
            .delete(format!("{}{path}", self.base))
            .bearer_auth(bearer);
        read(rb.send().await.unwrap()).await
    }

    /// The highest `prod-fe-X.Y.Z` in the home page, compared numerically.
    async fn scrape_fe(&self) -> String {
        let page = self.get("/", None, None).await.body;
        let mut best: Option<(Vec<u64>, String)> = None;
        for (i, _) in page.match_indices("prod-fe-") {
            let v: String = page[i + 8..]
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.')
                .collect();
            let v = v.trim_end_matches('.').to_string();
            let nums: Vec<u64> = v.split('.').map(|n| n.parse().unwrap()).collect();
            if best.as_ref().is_none_or(|(b, _)| nums > *b) {
                best = Some((nums, format!("prod-fe-{v}")));
            }
        }
        best.unwrap().1
    }

    /// A new guest: `(token, user id)`.
    async fn guest(&self) -> (String, String) {
        let r = self.get("/api/v1/auths/", None, None).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let v = r.json();
        (
            v["token"].as_str().unwrap().to_string(),
            v["id"].as_str().unwrap().to_string(),
        )
    }

    async fn new_chat(&self, token: &str, text: &str) -> String {
        let body = json!({"chat": {
            "id": "", "title": "New Chat", "models": ["glm-4.7"], "params": {},
            "history": {"messages": {"u-msg-1": {"id": "u-msg-1", "parentId": null,
                "childrenIds": [], "role": "user", "content": text, "timestamp": 1_760_000_000u64,
                "models": ["glm-4.7"]}}, "currentId": "u-msg-1"},
            "tags": [], "flags": [], "features": [], "mcp_servers": [],
            "enable_thinking": true, "auto_web_search": false, "message_version": 1,
            "extra": {}, "timestamp": 1_760_000_000_000u64,
        }});
        let r = self
            .http
            .post(format!("{}/api/v1/chats/new", self.base))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let r = read(r).await;
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()["id"].as_str().unwrap().to_string()
    }

    /// A correct, signed completion call for this body.
    fn call(&self, token: &str, fe: &str, body: Value) -> Call {
        let ts = now_ms();
        let rid = "6f1c8f5e-0d2a-4c1b-9a53-1d2e3f4a5b6c";
        let uid = jwt_id(token);
        let prompt = body["signature_prompt"].as_str().unwrap_or("").to_string();
        let chat = body["chat_id"].as_str().unwrap_or("").to_string();
        let query = [
            ("timestamp", ts.to_string()),
            ("requestId", rid.to_string()),
            ("user_id", uid.clone()),
            ("version", "0.0.1".to_string()),
            ("platform", "web".to_string()),
            ("token", token.to_string()),
            ("current_url", format!("https://chat.z.ai/c/{chat}")),
            ("pathname", format!("/c/{chat}")),
            ("signature_timestamp", ts.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        Call {
            token: Some(token.to_string()),
            fe: Some(fe.to_string()),
            query,
            signature: Some(sign(rid, ts, &uid, &prompt)),
            body,
        }
    }

    async fn send(&self, c: Call) -> Resp {
        let q: Vec<String> = c
            .query
            .iter()
            .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
            .collect();
        let mut rb = self
            .http
            .post(format!(
                "{}/api/v2/chat/completions?{}",
                self.base,
                q.join("&")
            ))
            .header("accept", "text/event-stream")
            .json(&c.body);
        if let Some(t) = &c.token {
            rb = rb.bearer_auth(t);
        }
        if let Some(f) = &c.fe {
            rb = rb.header("X-FE-Version", f);
        }
        if let Some(s) = &c.signature {
            rb = rb.header("X-Signature", s);
        }
        read(rb.send().await.unwrap()).await
    }

    /// Guest, chat, FE version: ready to call.
    async fn ready(&self) -> (String, String, String) {
        let fe = self.scrape_fe().await;
        let (token, _) = self.guest().await;
        let chat = self.new_chat(&token, "hi").await;
        (token, chat, fe)
    }
}

async fn start(cfg: ZaiMockConfig) -> ZaiMock {
    ZaiMock::start("127.0.0.1:0".parse().unwrap(), cfg)
        .await
        .unwrap()
}

fn detail_of(r: &Resp) -> String {
    r.json()["detail"].as_str().unwrap_or_default().to_string()
}

/// The one inline error of an SSE body.
fn inline_error(r: &Resp) -> Value {
    assert_eq!(r.status, 200, "{}", r.body);
    let (data, _) = r.data();
    assert_eq!(data.len(), 1, "{}", r.body);
    assert_eq!(data[0]["done"], true);
    data[0]["error"].clone()
}

// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn guest_flow_end_to_end() {
    let mock = start(ZaiMockConfig::default()).await;
    let c = Client::new(&mock);
    let fe = c.scrape_fe().await;
    assert_eq!(fe, "prod-fe-1.0.999");
    let page = c.get("/", None, None).await.body;
    assert!(page.contains("/frontend/prod-fe-1.0.999/assets/"), "{page}");
    assert!(
        page.contains("prod-fe-1.0.99\""),
        "an older version is in the page too"
    );

    let r = c.get("/api/v1/auths/", None, None).await;
    assert_eq!(r.status, 200);
    let me = r.json();
    assert_eq!(me["role"], "guest");
    assert!(me["name"].as_str().unwrap().starts_with("Guest-"));
    let token = me["token"].as_str().unwrap().to_string();
    assert_eq!(jwt_id(&token), me["id"].as_str().unwrap());
    let claims: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(token.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    assert!(claims.get("exp").is_none() && claims["email"].is_string());
    let set_cookie = r.headers["set-cookie"].to_str().unwrap();
    assert!(set_cookie.starts_with(&format!("token={token}")));

    let text = "Bonjour, ça va? 你好";
    let chat = c.new_chat(&token, text).await;
    assert_eq!(mock.chats_created_by(&token), 1);
    let rec = mock.chat(&chat).unwrap();
    assert_eq!(rec.owner, me["id"].as_str().unwrap());
    assert_eq!(rec.user_message_id.as_deref(), Some("u-msg-1"));

    let r = c
        .send(c.call(&token, &fe, chat_body(text, "glm-4.7", true, &chat)))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let (data, done_marker) = r.data();
    assert!(done_marker);
    assert_eq!(data[0]["phase"], "thinking");
    assert!(data[0]["delta_content"].as_str().unwrap().starts_with(
        "<details type=\"reasoning\" done=\"false\">\n<summary>Thinking…</summary>\n> "
    ));
    let last = data.last().unwrap();
    assert_eq!(last["phase"], "done");
    assert_eq!(last["done"], true);
    let u = &last["usage"];
    assert_eq!(
        u["total_tokens"].as_u64().unwrap(),
        u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap()
    );
    let transitions: Vec<&Value> = data
        .iter()
        .filter(|e| e.get("edit_index").is_some())
        .collect();
    assert_eq!(transitions.len(), 1);
    assert_eq!(transitions[0]["edit_index"], 0);
    assert!(transitions[0]["edit_content"]
        .as_str()
        .unwrap()
        .contains("</details>\n"));

    let (reasoning, answer) = split_reasoning(&rebuild(&data, false));
    let d = ZaiDirectives::default();
    let (want_r, want_a) = reply_for(text, &d);
    assert_eq!(answer, format!("Echo — {text}"));
    assert_eq!((reasoning, answer), (want_r, want_a));

    // The recorded request carries what the client sent.
    let reqs = mock.requests();
    let rec = reqs
        .iter()
        .find(|r| r.path == "/api/v2/chat/completions")
        .unwrap();
    assert_eq!(rec.method, "POST");
    assert_eq!(rec.header("x-fe-version"), Some(fe.as_str()));
    assert_eq!(rec.query_param("token").as_deref(), Some(token.as_str()));
    assert_eq!(rec.query_param("pathname"), Some(format!("/c/{chat}")));
    assert_eq!(rec.json.as_ref().unwrap()["signature_prompt"], text);
    assert_eq!(rec.response_status, 200);
    assert!(rec.completed && rec.events_written == data.len() + 1);
    assert_eq!(mock.guests_created(), 1);
    mock.clear_requests();
    assert!(mock.requests().is_empty());
    mock.shutdown().await;
}

#[tokio::test]
async fn rejections_come_in_order() {
    let mock = start(ZaiMockConfig::default()).await;
    let c = Client::new(&mock);
    let (token, chat, fe) = c.ready().await;
    let body = || chat_body("hello", "glm-4.7", false, &chat);

    // (1) No bearer, an unknown bearer: 401 before anything else is looked at.
    let mut call = c.call(&token, "stale", body());
    call.token = None;
    call.signature = None;
    let r = c.send(call).await;
    assert_eq!((r.status, detail_of(&r)), (401, "Not authenticated".into()));
    let other = super::sign::jwt("someone", "x@y.z");
    let r = c.send(c.call(&other, &fe, body())).await;
    assert_eq!((r.status, detail_of(&r)), (401, "Not authenticated".into()));

    // (2) A stale front-end version: 426 even without a signature.
    let mut call = c.call(&token, "prod-fe-1.0.98", body());
    call.signature = None;
    let r = c.send(call).await;
    assert_eq!(
        (r.status, detail_of(&r)),
        (426, "您的客户端版本过旧".into())
    );
    let mut call = c.call(&token, &fe, body());
    call.fe = None;
    assert_eq!(c.send(call).await.status, 426);

    // (3) Every required query field, each missing alone, then wrong values.
    for field in [
        "timestamp",
        "requestId",
        "user_id",
        "token",
        "signature_timestamp",
        "version",
        "platform",
    ] {
        let mut call = c.call(&token, &fe, body()).drop_query(field);
        call.signature = None;
        let r = c.send(call).await;
        assert_eq!(r.status, 400, "{field}: {}", r.body);
        assert!(detail_of(&r).contains(field), "{field}: {}", r.body);
    }
    let r = c
        .send(c.call(&token, &fe, body()).set_query("token", "other"))
        .await;
    assert_eq!(r.status, 400);
    assert!(detail_of(&r).contains("token"), "{}", r.body);
    let r = c
        .send(
            c.call(&token, &fe, body())
                .set_query("signature_timestamp", "1"),
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(detail_of(&r).contains("signature_timestamp"), "{}", r.body);

    // (4) No signature header: 422; a wrong one, another user id, a stale timestamp: 400.
    let mut call = c.call(&token, &fe, body());
    call.signature = None;
    let r = c.send(call).await;
    assert_eq!(r.status, 422);
    assert_eq!(
        r.json()["detail"][0]["loc"],
        json!(["header", "x-signature"])
    );
    let mut call = c.call(&token, &fe, body());
    call.signature = Some("0".repeat(64));
    let r = c.send(call).await;
    assert_eq!(
        (r.status, detail_of(&r)),
        (400, "403: Signature validation failed: 签名验证失败".into())
    );
    // A signature over another prompt than signature_prompt.
    let mut call = c.call(&token, &fe, body());
    call.body["signature_prompt"] = json!("hello!");
    let r = c.send(call).await;
    assert_eq!(r.status, 400);
    // Signed correctly, but for another user id.
    let mut call = c.call(&token, &fe, body());
    let ts: u64 = call.query[0].1.parse().unwrap();
    call = call.set_query("user_id", "someone-else");
    call.signature = Some(sign(
        "6f1c8f5e-0d2a-4c1b-9a53-1d2e3f4a5b6c",
        ts,
        "someone-else",
        "hello",
    ));
    let r = c.send(call).await;
    assert_eq!(
        (r.status, detail_of(&r)),
        (400, "403: Signature validation failed: 签名验证失败".into())
    );
    // Signed correctly, 11 minutes ago.
    let old = (now_ms() - 11 * 60 * 1000).to_string();
    let mut call = c
        .call(&token, &fe, body())
        .set_query("timestamp", &old)
        .set_query("signature_timestamp", &old);
    let uid = jwt_id(&token);
    call.signature = Some(sign(
        "6f1c8f5e-0d2a-4c1b-9a53-1d2e3f4a5b6c",
        old.parse().unwrap(),
        &uid,
        "hello",
    ));
    let r = c.send(call).await;
    assert_eq!(r.status, 400);
    assert!(
        detail_of(&r).starts_with("403: Signature validation failed"),
        "{}",
        r.body
    );
    // 4 minutes ago is inside the window.
    let recent = (now_ms() - 4 * 60 * 1000).to_string();
    let mut call = c
        .call(&token, &fe, body())
        .set_query("timestamp", &recent)
        .set_query("signature_timestamp", &recent);
    call.signature = Some(sign(
        "6f1c8f5e-0d2a-4c1b-9a53-1d2e3f4a5b6c",
        recent.parse().unwrap(),
        &uid,
        "hello",
    ));
    assert_eq!(c.send(call).await.status, 200);

    // Guests get glm-4.7 only (inline 403); unknown models are a 400.
    let r = c
        .send(c.call(&token, &fe, chat_body("hello", "glm-5", false, &chat)))
        .await;
    let e = inline_error(&r);
    assert_eq!(
        e,
        json!({"detail": "Model not available for current user level", "code": 403})
    );
    assert!(r.data().1, "[DONE] after the inline error");
    let user = mock.issue_user_token();
    let r = c
        .send(c.call(&user, &fe, chat_body("hello", "glm-5", false, "any")))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.data().0.last().unwrap()["phase"], "done");
    let r = c
        .send(c.call(&user, &fe, chat_body("hello", "glm-9", false, "any")))
        .await;
    assert_eq!((r.status, detail_of(&r)), (400, "Model not found".into()));
    mock.shutdown().await;
}

#[tokio::test]
async fn stale_fe_version_inline_and_rotation() {
    let mock = start(ZaiMockConfig {
        fe_inline_426: true,
        ..ZaiMockConfig::default()
    })
    .await;
    let c = Client::new(&mock);
    let (token, chat, fe) = c.ready().await;
    let body = || chat_body("hi", "glm-4.7", false, &chat);
    let r = c.send(c.call(&token, "prod-fe-1.0.1", body())).await;
    assert_eq!(
        inline_error(&r),
        json!({"detail": "您的客户端校验失败", "code": 426})
    );
    assert_eq!(c.send(c.call(&token, &fe, body())).await.status, 200);

    // Rotate: the old version is refused, the page shows the new one.
    mock.set_fe_version("1.1.93");
    assert_eq!(mock.fe_version(), "prod-fe-1.1.93");
    let r = c.send(c.call(&token, &fe, body())).await;
    assert_eq!(inline_error(&r)["code"], 426);
    let fe2 = c.scrape_fe().await;
    assert_eq!(fe2, "prod-fe-1.1.93");
    assert_eq!(c.send(c.call(&token, &fe2, body())).await.status, 200);
    // The control endpoint rotates too.
    let r = c
        .http
        .post(format!("{}/__mock/fe-version/prod-fe-1.2.0", c.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(c.scrape_fe().await, "prod-fe-1.2.0");
    mock.shutdown().await;
}

#[tokio::test]
async fn captcha_and_chat_toggles() {
    let mock = start(ZaiMockConfig {
        require_captcha: true,
        captcha_proofs: vec!["proof-ok".into()],
        require_chat: true,
        ..ZaiMockConfig::default()
    })
    .await;
    let c = Client::new(&mock);
    let (token, chat, fe) = c.ready().await;
    let with_proof = |proof: Option<&str>, chat: &str| {
        let mut b = chat_body("hi", "glm-4.7", false, chat);
        if let Some(p) = proof {
            b["captcha_verify_param"] = json!(p);
        }
        b
    };
    let r = c.send(c.call(&token, &fe, with_proof(None, &chat))).await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json(),
        json!({"detail": "captcha_verify_param is required", "code": "CAPTCHA_REQUIRED"})
    );
    let r = c
        .send(c.call(&token, &fe, with_proof(Some("forged"), &chat)))
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["detail"], "captcha verification failed");
    let r = c
        .send(c.call(&token, &fe, with_proof(Some("proof-ok"), &chat)))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);

    // Unknown chat, another guest's chat: 404.
    let r = c
        .send(c.call(&token, &fe, with_proof(Some("proof-ok"), "no-such-chat")))
        .await;
    assert_eq!((r.status, detail_of(&r)), (404, "Chat not found".into()));
    let (other, _) = c.guest().await;
    let theirs = c.new_chat(&other, "x").await;
    let r = c
        .send(c.call(&token, &fe, with_proof(Some("proof-ok"), &theirs)))
        .await;
    assert_eq!(r.status, 404);
    // The captcha is checked before the chat.
    let r = c
        .send(c.call(&token, &fe, with_proof(None, "no-such-chat")))
        .await;
    assert_eq!(r.json()["code"], "CAPTCHA_REQUIRED");
    mock.shutdown().await;
}

#[tokio::test]
async fn guests_cookies_users_and_revocation() {
    let mock = start(ZaiMockConfig::default()).await;
    let c = Client::new(&mock);
    let (t1, id1) = c.guest().await;
    // The cookie gives the same guest back.
    let r = c.get("/api/v1/auths/", None, Some(&t1)).await;
    assert_eq!(
        (
            r.json()["id"].as_str().unwrap(),
            r.json()["token"].as_str().unwrap()
        ),
        (id1.as_str(), t1.as_str())
    );
    assert_eq!(mock.guests_created(), 1);
    // No cookie: another guest.
    let (t2, id2) = c.guest().await;
    assert_ne!(id1, id2);
    assert_eq!(mock.guests_created(), 2);
    // POST /api/v1/auths/guest always makes one.
    let r = c
        .http
        .post(format!("{}/api/v1/auths/guest", c.base))
        .header("cookie", format!("token={t1}"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    let r = read(r).await;
    assert_eq!(r.json()["role"], "guest");
    assert_ne!(r.json()["id"].as_str().unwrap(), id1);
    assert_eq!(mock.guests_created(), 3);

    // Bearer: that identity; unknown: 401.
    let r = c.get("/api/v1/auths/", Some(&t2), None).await;
    assert_eq!(
        (
            r.json()["id"].as_str().unwrap(),
            r.json()["role"].as_str().unwrap()
        ),
        (id2.as_str(), "guest")
    );
    let r = c.get("/api/v1/auths/", Some("nope.nope.nope"), None).await;
    assert_eq!(r.status, 401);

    // A registered user token.
    let user = super::sign::jwt("user-42", "me@example.com");
    assert_eq!(mock.set_user(&user, Role::User), "user-42");
    let r = c.get("/api/v1/auths/", Some(&user), None).await;
    assert_eq!(
        (
            r.json()["id"].as_str().unwrap(),
            r.json()["role"].as_str().unwrap()
        ),
        ("user-42", "user")
    );
    assert_eq!(mock.user_id(&user).as_deref(), Some("user-42"));
    let r = c
        .get("/api/v1/users/user/settings", Some(&user), None)
        .await;
    assert_eq!(r.status, 200);

    // Revoked: 401 with the bearer, a new guest with the cookie.
    mock.revoke_token(&t1);
    assert_eq!(c.get("/api/v1/auths/", Some(&t1), None).await.status, 401);
    let r = c.get("/api/v1/auths/", None, Some(&t1)).await;
    assert_ne!(r.json()["id"].as_str().unwrap(), id1);
    assert_eq!(mock.guests_created(), 4);
    let r = c.get("/api/v1/users/user/settings", Some(&t1), None).await;
    assert_eq!(r.status, 401);
    mock.shutdown().await;
}

#[tokio::test]
async fn chats_files_models_and_config() {
    let mock = start(ZaiMockConfig::default()).await;
    let c = Client::new(&mock);
    let (guest, _) = c.guest().await;
    let a = c.new_chat(&guest, "a").await;
    let _b = c.new_chat(&guest, "b").await;
    let _c2 = c.new_chat(&guest, "c").await;
    let user = mock.issue_user_token();
    let u = c.new_chat(&user, "u").await;
    assert_eq!(
        (mock.chats_created(), mock.chats_created_by(&guest)),
        (4, 3)
    );
    assert_eq!(mock.chats_open(&guest), 3);

    let r = c.delete(&format!("/api/v1/chats/{a}"), &guest).await;
    assert_eq!((r.status, r.json()), (200, json!(true)));
    // Another user's chat is left alone.
    let r = c.delete(&format!("/api/v1/chats/{u}"), &guest).await;
    assert_eq!(r.status, 200);
    assert!(mock.chat(&u).is_some());
    let r = c.delete("/api/v1/chats/", &guest).await;
    assert_eq!((r.status, r.json()), (200, json!(true)));
    assert_eq!(mock.chats_deleted_by(&guest), 3);
    assert_eq!(mock.chats_deleted(), 3);
    assert_eq!(mock.chats_open(&guest), 0);
    assert_eq!(mock.chats_open(&user), 1);
    assert_eq!(c.delete("/api/v1/chats/", "unknown").await.status, 401);

    // Upload, then read back.
    let boundary = "----mockboundary";
    let mut body = Vec::new();
    body.extend_from_slice(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"cat.png\"\r\nContent-Type: image/png\r\n\r\n").as_bytes());
    body.extend_from_slice(b"\x89PNG-bytes");
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let r = c
        .http
        .post(format!("{}/api/v1/files/", c.base))
        .bearer_auth(&user)
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    let r = read(r).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let f = r.json();
    assert_eq!(f["filename"], "cat.png");
    assert_eq!(f["meta"]["size"], 10);
    let id = f["id"].as_str().unwrap();
    let r = c
        .http
        .get(format!("{}/api/v1/files/{id}/content", c.base))
        .bearer_auth(&user)
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-type"], "image/png");
    assert_eq!(&r.bytes().await.unwrap()[..], b"\x89PNG-bytes");

    // Models: users only.
    let r = c.get("/api/models", Some(&user), None).await;
    assert_eq!(r.status, 200);
    let list = r.json();
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&"glm-4.7"));
    assert_eq!(c.get("/api/models", Some(&guest), None).await.status, 401);
    assert_eq!(c.get("/api/models", None, None).await.status, 401);
    let r = c.get("/api/config", None, None).await;
    assert_eq!(
        (r.status, r.json()["name"].as_str().unwrap()),
        (200, "Z.ai")
    );
    assert_eq!(c.get("/api/nope", None, None).await.status, 404);
    assert_eq!(c.get("/api/v1/chats/new", None, None).await.status, 405);
    mock.shutdown().await;
}

#[tokio::test]
async fn stream_shapes_rebuild_to_the_intended_text() {
    let mock = start(ZaiMockConfig::default()).await;
    let c = Client::new(&mock);
    let (token, chat, fe) = c.ready().await;
    let base = "ünïcödé → 世界 and some longer ASCII text";
    for thinking in [true, false] {
        for edit in ["rune", "byte"] {
            for at in ["start", "middle"] {
                let text = format!("{base} [[mock: edit={edit}; edit_at={at}; piece=4]]");
                let r = c
                    .send(c.call(&token, &fe, chat_body(&text, "glm-4.7", thinking, &chat)))
                    .await;
                assert_eq!(r.status, 200);
                let (data, _) = r.data();
                let d = ZaiDirectives::parse(&format!("edit={edit} edit_at={at} piece=4"));
                let (want_r, want_a) = reply_for(&text, &d);
                let want = full_text(&want_r, &want_a, thinking, d.duration);
                let byte = edit == "byte";
                let got = rebuild(&data, byte);
                assert_eq!(got, want, "thinking={thinking} edit={edit} at={at}");
                let edits: Vec<&Value> = data
                    .iter()
                    .filter(|e| e.get("edit_index").is_some())
                    .collect();
                assert_eq!(
                    edits.len(),
                    usize::from(thinking) + usize::from(at == "middle")
                );
                if at == "middle" && thinking {
                    // The other reading of edit_index gets it wrong, and so does appending.
                    assert_ne!(rebuild(&data, !byte), want, "{edit}");
                    let appended: String = data
                        .iter()
                        .filter_map(|e| e.get("delta_content").or(e.get("edit_content")))
                        .filter_map(Value::as_str)
                        .collect();
                    assert_ne!(appended, want);
                }
                assert_eq!(split_reasoning(&got).1, format!("Echo — {base}"));
            }
        }
    }
    mock.shutdown().await;
}

#[tokio::test]
async fn envelope_marker_chunk_delay_search_and_tools() {
    let mock = start(ZaiMockConfig::default()).await;
    let c = Client::new(&mock);
    let (token, chat, fe) = c.ready().await;
    let go = |text: &str, thinking: bool| {
        c.call(&token, &fe, chat_body(text, "glm-4.7", thinking, &chat))
    };

    // Bare data objects, no [DONE].
    let r = c
        .send(go("plain [[mock: envelope=bare; done_marker=off]]", false))
        .await;
    assert!(!r.body.contains("chat:completion"), "{}", r.body);
    let (data, done) = r.data();
    assert!(!done);
    assert_eq!(data.last().unwrap()["phase"], "done");
    assert_eq!(rebuild(&data, false), "Echo — plain");

    // 5-byte writes reach the client as the same events; delay spaces them.
    let t0 = Instant::now();
    let r = c
        .send(go("split me [[mock: chunk=5; delay_ms=30]]", true))
        .await;
    assert!(
        t0.elapsed() >= Duration::from_millis(30 * 5),
        "{:?}",
        t0.elapsed()
    );
    let (data, done) = r.data();
    assert!(done);
    assert_eq!(split_reasoning(&rebuild(&data, false)).1, "Echo — split me");

    // Search markers, stripped the way C2A does.
    let r = c.send(go("find it [[mock: search=on]]", false)).await;
    let text = rebuild(&r.data().0, false);
    assert!(
        text.contains("【turn0search0】") && text.contains("【turn0search1】"),
        "{text}"
    );
    assert_eq!(strip_markers(&text), "Echo — find it\nSources: web.");

    // Tool calls in three formats.
    let args = URL_SAFE_NO_PAD.encode(r#"{"city":"Paris","days":2}"#);
    let r = c
        .send(go(
            &format!("weather? [[mock: tool=gfa; tool_name=get_weather; tool_args={args}]]"),
            true,
        ))
        .await;
    let (_, answer) = split_reasoning(&rebuild(&r.data().0, false));
    let inner = answer
        .split_once("<<<TOOL_CALL>>>")
        .unwrap()
        .1
        .strip_suffix("<<<END_TOOL_CALL>>>")
        .unwrap();
    let call: Value = serde_json::from_str(inner).unwrap();
    assert_eq!(
        call,
        json!({"name": "get_weather", "arguments": {"city": "Paris", "days": 2}})
    );

    let r = c
        .send(go(
            &format!("weather? [[mock: tool=json; tool_name=get_weather; tool_args={args}]]"),
            false,
        ))
        .await;
    let answer = rebuild(&r.data().0, false);
    let obj: Value = serde_json::from_str(&answer[answer.find('{').unwrap()..]).unwrap();
    let f = &obj["tool_calls"][0]["function"];
    assert_eq!(f["name"], "get_weather");
    let a: Value = serde_json::from_str(f["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(a, json!({"city": "Paris", "days": 2}));

    // k2proxy's own format, with the trigger the request carries.
    let prompt = format!(
        "# Tools\n\n## Available tools\n\n1. get_weather\n   Arguments: none\n\n<Function_Zq9x_Start/>\n<function_calls>…\n\nweather? [[mock: tool=k2; tool_args={args}]]"
    );
    let r = c.send(go(&prompt, false)).await;
    let answer = rebuild(&r.data().0, false);
    assert!(
        answer.ends_with("<Function_Zq9x_Start/>\n<function_calls>\n<function_call>\n<tool>get_weather</tool>\n<args>\n<city>\"Paris\"</city>\n<days>2</days>\n</args>\n</function_call>\n</function_calls>"),
        "{answer}"
    );
    // Without a trigger, tool=k2 answers with the echo.
    let r = c.send(go("no tools [[mock: tool=k2]]", false)).await;
    assert_eq!(rebuild(&r.data().0, false), "Echo — no tools");
    mock.shutdown().await;
}

#[tokio::test]
async fn faults() {
    let mock = start(ZaiMockConfig::default()).await;
    let c = Client::new(&mock);
    let (token, chat, fe) = c.ready().await;
    let go = |text: &str| c.call(&token, &fe, chat_body(text, "glm-4.7", true, &chat));

    let r = c.send(go("x [[mock: fault=waf]]")).await;
    assert_eq!(r.status, 405);
    assert!(r.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(
        r.body.contains("blocked") && r.body.contains("potential threats"),
        "{}",
        r.body
    );

    let r = c.send(go("x [[mock: fault=429; retry_after=7]]")).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.headers["retry-after"], "7");

    let r = c.send(go("x [[mock: fault=500]]")).await;
    assert_eq!(r.status, 500);
    let r = c.send(go("x [[mock: fault=401]]")).await;
    assert_eq!((r.status, detail_of(&r)), (401, "Not authenticated".into()));

    let e = inline_error(&c.send(go("x [[mock: fault=concurrency]]")).await);
    assert_eq!(e["code"], 429);
    let msg = e["detail"].as_str().unwrap();
    assert!(msg.contains("并发") && msg.contains("concurrency"), "{msg}");

    let r = c
        .send(go("x [[mock: fault=inline_error; cut_after=2]]"))
        .await;
    let (data, done) = r.data();
    assert!(done);
    assert_eq!(data.len(), 3);
    assert_eq!(data[2]["error"]["code"], 500);
    assert_eq!(data[2]["done"], true);

    let r = c.send(go("x [[mock: fault=nested_error]]")).await;
    let (data, _) = r.data();
    assert_eq!(data.len(), 1);
    assert_eq!(data[0]["data"]["error"]["code"], 500);
    assert!(data[0].get("error").is_none());

    let r = c.send(go("cut here [[mock: fault=cut]]")).await;
    assert_eq!(r.status, 200);
    assert!(r.aborted, "the body must end with an error");
    let (data, done) = r.data();
    assert!(!done);
    assert!(!data.is_empty());
    assert!(data.iter().all(|e| e["phase"] != "done"));
    let rec = mock.requests().into_iter().last().unwrap();
    assert!(!rec.completed);

    // Faults from the token's directive segment; the query token is the whole bearer.
    let tok = format!("{token};fault=429;retry_after=3");
    let r = c
        .send(c.call(&tok, &fe, chat_body("x", "glm-4.7", false, &chat)))
        .await;
    assert_eq!(
        (r.status, r.headers["retry-after"].to_str().unwrap()),
        (429, "3")
    );
    let tok = format!("{token};piece=2");
    let r = c
        .send(c.call(&tok, &fe, chat_body("yo", "glm-4.7", false, &chat)))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.data().0[0]["delta_content"], "Ec");

    // WAF on the auth endpoint, from the config and live.
    mock.set_auths_fault(Some(ZaiFault::Waf));
    let r = c.get("/api/v1/auths/", None, None).await;
    assert_eq!(r.status, 405);
    assert!(r.body.contains("Aliyun"));
    mock.set_auths_fault(None);
    assert_eq!(c.get("/api/v1/auths/", None, None).await.status, 200);
    mock.shutdown().await;

    let mock = start(ZaiMockConfig {
        auths_fault: Some(ZaiFault::Status(429)),
        ..ZaiMockConfig::default()
    })
    .await;
    let c = Client::new(&mock);
    let r = c.get("/api/v1/auths/", None, None).await;
    assert_eq!(r.status, 429);
    assert!(r.headers.contains_key("retry-after"));
    assert_eq!(mock.guests_created(), 0);
    mock.shutdown().await;
}

#[tokio::test]
async fn gates_hold_streams_and_count_as_active() {
    let mock = start(ZaiMockConfig::default()).await;
    let c = Client::new(&mock);
    let (token, chat, fe) = c.ready().await;
    let call = c.call(
        &token,
        &fe,
        chat_body(
            "wait [[mock: gate=G; gate_after=1]]",
            "glm-4.7",
            true,
            &chat,
        ),
    );
    let send = c.send(call);
    let waiter = async {
        let t0 = Instant::now();
        while mock.active_streams() == 0 {
            assert!(t0.elapsed() < Duration::from_secs(5));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let rec = mock.requests().into_iter().last().unwrap();
        assert_eq!(rec.events_written, 1);
        assert!(!rec.completed);
        mock.open_gate("G");
    };
    let (r, ()) = tokio::join!(send, waiter);
    assert_eq!(r.status, 200);
    assert!(r.data().1);
    let t0 = Instant::now();
    while mock.active_streams() != 0 {
        assert!(t0.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    mock.close_gate("G");
    mock.shutdown().await;
}

#[tokio::test]
async fn preregistered_users_and_defaults() {
    let user = super::sign::jwt("u-pre", "pre@example.com");
    let mock = start(ZaiMockConfig {
        users: vec![user.clone()],
        defaults: ZaiDirectives::parse("done_marker=off thinking=on"),
        ..ZaiMockConfig::default()
    })
    .await;
    let c = Client::new(&mock);
    let fe = c.scrape_fe().await;
    let r = c.get("/api/v1/auths/", Some(&user), None).await;
    assert_eq!(r.json()["role"], "user");
    let r = c
        .send(c.call(
            &user,
            &fe,
            chat_body("hey", "GLM-5.1", false, "random-chat"),
        ))
        .await;
    let (data, done) = r.data();
    assert!(!done, "default done_marker=off");
    assert_eq!(
        data[0]["phase"], "thinking",
        "default thinking=on beats the request"
    );
    // A message directive beats the config default.
    let r = c
        .send(c.call(
            &user,
            &fe,
            chat_body(
                "hey [[mock: done_marker=on; thinking=off]]",
                "GLM-5.1",
                true,
                "c",
            ),
        ))
        .await;
    let (data, done) = r.data();
    assert!(done);
    assert_eq!(data[0]["phase"], "answer");
    mock.shutdown().await;
}
