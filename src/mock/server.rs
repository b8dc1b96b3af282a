//! The HTTP server: accept loop, routing and handlers.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::request::Parts;
use http::{header, Method, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::Request;
use rand::Rng;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::body::{ActiveGuard, MockBody};
use super::directives::{split_token, Directives, Fault, RetryAfter};
use super::script::{self, content_text, last_user_text, StreamSpec, Tail};
use super::util::{bearer_of, cookie_token_of, http_date, jwt, random_hex, unix_now, uuid};
use super::{MockConfig, RecordedRequest, TokenIn};

type Reply = Response<MockBody>;
type Tx = mpsc::Sender<io::Result<Bytes>>;

const INVALID_TOKEN: &str =
    "Your session has expired or the token is invalid. Please sign in again.";
const WRONG_CREDENTIALS: &str = "The email or password provided is incorrect.";

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Live state of one recorded request.
struct Slot {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    bearer: Option<String>,
    cookie: Option<String>,
    body: Vec<u8>,
    json: Option<Value>,
    received_at: Instant,
    status: AtomicU16,
    events: AtomicUsize,
    completed: AtomicBool,
    streaming: AtomicBool,
}

impl Slot {
    fn snapshot(&self) -> RecordedRequest {
        RecordedRequest {
            method: self.method.clone(),
            path: self.path.clone(),
            headers: self.headers.clone(),
            bearer: self.bearer.clone(),
            cookie: self.cookie.clone(),
            body: self.body.clone(),
            json: self.json.clone(),
            received_at: self.received_at,
            response_status: self.status.load(Ordering::SeqCst),
            events_written: self.events.load(Ordering::SeqCst),
            completed: self.completed.load(Ordering::SeqCst),
        }
    }

    fn to_json(&self) -> Value {
        let body = match &self.json {
            Some(v) => v.clone(),
            None if self.body.is_empty() => Value::Null,
            None => Value::String(String::from_utf8_lossy(&self.body).into_owned()),
        };
        json!({
            "method": self.method,
            "path": self.path,
            "headers": self.headers,
            "bearer": self.bearer,
            "cookie": self.cookie,
            "body": body,
            "received_ms_ago": self.received_at.elapsed().as_millis() as u64,
            "response_status": self.status.load(Ordering::SeqCst),
            "events_written": self.events.load(Ordering::SeqCst),
            "completed": self.completed.load(Ordering::SeqCst),
        })
    }
}

struct Shared {
    cfg: MockConfig,
    records: Mutex<Vec<Arc<Slot>>>,
    gates: Mutex<HashSet<String>>,
    gate_version: watch::Sender<u64>,
    active: Arc<AtomicUsize>,
    signins: Mutex<HashMap<String, usize>>,
    /// Issued JWT -> expiry.
    issued: Mutex<HashMap<String, SystemTime>>,
}

impl Shared {
    fn open_gate(&self, name: &str) {
        lock(&self.gates).insert(name.to_string());
        self.gate_version.send_modify(|v| *v += 1);
    }

    /// Waits until the gate is open; false when the response's reader went away first.
    async fn wait_gate(&self, name: &str, tx: Option<&Tx>) -> bool {
        let mut rx = self.gate_version.subscribe();
        loop {
            if lock(&self.gates).contains(name) {
                return true;
            }
            tokio::select! {
                r = rx.changed() => if r.is_err() { return false },
                _ = closed(tx) => return false,
            }
        }
    }

    fn token_ok(&self, token: &str) -> bool {
        if !self.cfg.strict_tokens {
            return true;
        }
        let (name, _) = split_token(token);
        if self.cfg.valid_tokens.iter().any(|t| t == name) {
            return true;
        }
        lock(&self.issued)
            .get(name)
            .is_some_and(|exp| *exp > SystemTime::now())
    }
}

/// Resolves when the stream's body was dropped (never for `None`).
async fn closed(tx: Option<&Tx>) {
    match tx {
        Some(tx) => tx.closed().await,
        None => std::future::pending().await,
    }
}

/// Sleeps; false when the reader went away first.
async fn sleep_or_closed(d: Duration, tx: Option<&Tx>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = closed(tx) => false,
    }
}

/// A running mock upstream. Dropping it stops the accept loop too.
pub struct MockServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl MockServer {
    /// Binds `listen` (port 0 picks one) and serves on the current tokio runtime.
    pub async fn start(listen: SocketAddr, cfg: MockConfig) -> io::Result<MockServer> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let (gate_version, _) = watch::channel(0u64);
        let shared = Arc::new(Shared {
            cfg,
            records: Mutex::new(Vec::new()),
            gates: Mutex::new(HashSet::new()),
            gate_version,
            active: Arc::new(AtomicUsize::new(0)),
            signins: Mutex::new(HashMap::new()),
            issued: Mutex::new(HashMap::new()),
        });
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(super::util::serve(
            listener,
            shared.clone(),
            stop_rx,
            "k2 mock",
            handle,
        ));
        log::info!("k2 mock listening on {addr}");
        Ok(MockServer {
            addr,
            shared,
            stop,
            task,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://IP:PORT`
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every recorded request, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.shared.records)
            .iter()
            .map(|s| s.snapshot())
            .collect()
    }

    pub fn clear_requests(&self) {
        lock(&self.shared.records).clear();
    }

    /// Opens a gate for good: waiting streams go on, later ones do not wait.
    pub fn open_gate(&self, name: &str) {
        self.shared.open_gate(name);
    }

    /// Closes a gate again, so later streams wait at it.
    pub fn close_gate(&self, name: &str) {
        lock(&self.shared.gates).remove(name);
    }

    /// Streamed responses still held by a connection.
    pub fn active_streams(&self) -> usize {
        self.shared.active.load(Ordering::SeqCst)
    }

    /// Sign-in attempts (right or wrong password) for a configured account's email.
    pub fn signins(&self, email: &str) -> usize {
        lock(&self.shared.signins)
            .get(&email.to_ascii_lowercase())
            .copied()
            .unwrap_or(0)
    }

    /// Forgets every issued JWT (with `strict_tokens`, they are then rejected with 401).
    pub fn revoke_tokens(&self) {
        lock(&self.shared.issued).clear();
    }

    /// Forgets one issued JWT (with `strict_tokens`, it is then rejected with 401).
    pub fn revoke_token(&self, token: &str) {
        lock(&self.shared.issued).remove(token);
    }

    /// Stops accepting and drops every open connection.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

struct Ctx {
    shared: Arc<Shared>,
    parts: Parts,
    body: Bytes,
    slot: Arc<Slot>,
}

impl Ctx {
    fn token(&self) -> Option<&str> {
        self.slot
            .bearer
            .as_deref()
            .or(self.slot.cookie.as_deref())
            .filter(|t| !t.trim().is_empty())
    }
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> io::Result<Reply> {
    let received_at = Instant::now();
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) => return Err(io::Error::other(e)),
    };
    let path = parts.uri.path().to_string();
    if let Some(rest) = path.strip_prefix("/__mock/") {
        return Ok(control(&shared, &parts.method, rest));
    }
    let slot = Arc::new(Slot {
        method: parts.method.to_string(),
        path: parts
            .uri
            .path_and_query()
            .map_or(path.clone(), |p| p.as_str().to_string()),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        bearer: bearer_of(&parts),
        cookie: cookie_token_of(&parts),
        json: serde_json::from_slice(&body).ok(),
        body: body.to_vec(),
        received_at,
        status: AtomicU16::new(0),
        events: AtomicUsize::new(0),
        completed: AtomicBool::new(false),
        streaming: AtomicBool::new(false),
    });
    if shared.cfg.record {
        lock(&shared.records).push(slot.clone());
    }
    log::debug!("k2 mock {} {}", slot.method, slot.path);
    let ctx = Ctx {
        shared,
        parts,
        body,
        slot: slot.clone(),
    };
    let result = route(&ctx, &path).await;
    if let Ok(resp) = &result {
        slot.status.store(resp.status().as_u16(), Ordering::SeqCst);
        if !slot.streaming.load(Ordering::SeqCst) {
            slot.completed.store(true, Ordering::SeqCst);
        }
    }
    result
}

async fn route(ctx: &Ctx, path: &str) -> io::Result<Reply> {
    let m = &ctx.parts.method;
    let allowed = |want: Method| m == want;
    Ok(match path {
        "/api/chat/completions" if allowed(Method::POST) => return chat(ctx, true).await,
        "/api/guest/chat/completions" if allowed(Method::POST) => return chat(ctx, false).await,
        "/api/v1/auths/signin" if allowed(Method::POST) => signin(ctx).await,
        "/api/models" if allowed(Method::GET) => models(ctx),
        "/api/v1/models" if allowed(Method::GET) => {
            json_reply(StatusCode::OK, &json!({"data": []}))
        }
        "/guest" if allowed(Method::GET) => guest_page(),
        "/api/v1/chats/guest/new" if allowed(Method::POST) => guest_new_chat(ctx),
        "/api/chat/completions"
        | "/api/guest/chat/completions"
        | "/api/v1/auths/signin"
        | "/api/models"
        | "/api/v1/models"
        | "/guest"
        | "/api/v1/chats/guest/new" => detail(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed"),
        _ => detail(StatusCode::NOT_FOUND, "Not Found"),
    })
}

fn json_reply(status: StatusCode, v: &Value) -> Reply {
    let mut r = Response::new(MockBody::full(serde_json::to_vec(v).unwrap_or_default()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

fn detail(status: StatusCode, msg: &str) -> Reply {
    json_reply(status, &json!({ "detail": msg }))
}

fn status_of(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

fn control(shared: &Shared, method: &Method, rest: &str) -> Reply {
    match (method, rest) {
        (&Method::GET, "requests") => {
            let list: Vec<Value> = lock(&shared.records).iter().map(|s| s.to_json()).collect();
            json_reply(StatusCode::OK, &Value::Array(list))
        }
        (&Method::DELETE, "requests") => {
            let n = {
                let mut r = lock(&shared.records);
                let n = r.len();
                r.clear();
                n
            };
            json_reply(StatusCode::OK, &json!({ "cleared": n }))
        }
        (&Method::POST, r) => match r
            .strip_prefix("gates/")
            .and_then(|g| g.strip_suffix("/open"))
        {
            Some(name) if !name.is_empty() => {
                shared.open_gate(name);
                json_reply(StatusCode::OK, &json!({ "opened": name }))
            }
            _ => detail(StatusCode::NOT_FOUND, "Not Found"),
        },
        _ => detail(StatusCode::NOT_FOUND, "Not Found"),
    }
}

fn fault_reply(code: u16, d: &Directives) -> Reply {
    match code {
        401 => detail(StatusCode::UNAUTHORIZED, INVALID_TOKEN),
        403 => detail(
            StatusCode::FORBIDDEN,
            "You do not have permission to access this resource. Please contact your administrator for assistance.",
        ),
        429 => {
            let mut r = detail(
                StatusCode::TOO_MANY_REQUESTS,
                "Too many requests. Please try again later.",
            );
            let value = match d.retry_after {
                RetryAfter::Seconds(n) => n.to_string(),
                RetryAfter::DateIn(n) => http_date(unix_now() + n),
            };
            if let Ok(v) = header::HeaderValue::from_str(&value) {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
            r
        }
        502 => html_reply(
            StatusCode::BAD_GATEWAY,
            "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>cloudflare</center>\r\n</body>\r\n</html>\r\n",
        ),
        500 => detail(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error"),
        503 => detail(StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable"),
        n => detail(status_of(n), &format!("mock fault {n}")),
    }
}

fn html_reply(status: StatusCode, html: &'static str) -> Reply {
    let mut r = Response::new(MockBody::full(Bytes::from_static(html.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/html; charset=UTF-8"),
    );
    r.headers_mut().insert(
        header::SERVER,
        header::HeaderValue::from_static("cloudflare"),
    );
    r
}

const CHALLENGE_HTML: &str = "<!DOCTYPE html><html lang=\"en-US\"><head><title>Just a moment...</title>\
<meta http-equiv=\"Content-Type\" content=\"text/html; charset=UTF-8\"><meta name=\"robots\" content=\"noindex,nofollow\">\
</head><body><div class=\"main-wrapper\" role=\"main\"><div class=\"main-content\"><h1 class=\"zone-name-title h1\">www.k2think.ai</h1>\
<h2 class=\"h2\" id=\"challenge-running\">Verifying you are human. This may take a few seconds.</h2>\
<noscript><div class=\"h2\">Enable JavaScript and cookies to continue</div></noscript></div></div>\
<script>(function(){window._cf_chl_opt={cvId: '3',cZone: 'www.k2think.ai',cType: 'managed'};}());</script></body></html>";

fn garbage_reply() -> Reply {
    let mut rng = rand::thread_rng();
    let bytes: Vec<u8> = (0..512)
        .map(|_| {
            if rng.gen_bool(0.9) {
                rng.gen_range(0x80..=0xff)
            } else {
                rng.gen_range(0x00..=0x08)
            }
        })
        .collect();
    let mut r = Response::new(MockBody::full(bytes));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    r
}

/// The 400 of the new upstream for an assistant message without a thinking field.
pub const THINKING_FIELD_MISSING: &str = "Add a supported thinking field to each assistant message";

/// With `thinking_rule`: the first assistant message without a string thinking field
/// (`null` is refused too), as the 400 detail the new upstream gives.
fn thinking_violation(messages: &Value) -> Option<String> {
    let list = messages.as_array()?;
    list.iter().enumerate().find_map(|(i, m)| {
        if m.get("role").and_then(Value::as_str) != Some("assistant") {
            return None;
        }
        let fields = crate::provider::k2think::THINKING_FIELDS;
        let null = fields
            .iter()
            .find(|f| m.get(**f).is_some_and(Value::is_null));
        let ok = fields
            .iter()
            .any(|f| m.get(*f).is_some_and(Value::is_string));
        match (ok, null) {
            (true, None) => None,
            (_, Some(f)) => Some(format!(
                "messages[{i}].{f}: must be a string, not null. {THINKING_FIELD_MISSING} ({})",
                fields.join(", ")
            )),
            (false, None) => Some(format!(
                "messages[{i}]: {THINKING_FIELD_MISSING} ({})",
                fields.join(", ")
            )),
        }
    })
}

/// `chat_template_kwargs.reasoning_effort`, at the top level or under `extra_body`.
fn requested_effort(body: &Value) -> Option<String> {
    [
        "/chat_template_kwargs/reasoning_effort",
        "/extra_body/chat_template_kwargs/reasoning_effort",
    ]
    .iter()
    .find_map(|p| body.pointer(p).and_then(Value::as_str))
    .map(str::to_string)
}

async fn chat(ctx: &Ctx, user_mode: bool) -> io::Result<Reply> {
    let sh = &ctx.shared;
    if !user_mode && sh.cfg.legacy_guest_400 {
        return Ok(detail(StatusCode::BAD_REQUEST, "Model not found"));
    }
    let token = ctx.token();
    if user_mode {
        let Some(tok) = token else {
            return Ok(detail(StatusCode::UNAUTHORIZED, "Not authenticated"));
        };
        if !sh.token_ok(tok) {
            return Ok(detail(StatusCode::UNAUTHORIZED, INVALID_TOKEN));
        }
    }
    let body: Value = match serde_json::from_slice(&ctx.body) {
        Ok(v) => v,
        Err(e) => {
            return Ok(detail(
                StatusCode::BAD_REQUEST,
                &format!("Invalid JSON body: {e}"),
            ))
        }
    };
    let messages = body.get("messages").unwrap_or(&Value::Null);
    if messages.as_array().is_none_or(|a| a.is_empty()) {
        return Ok(json_reply(
            StatusCode::UNPROCESSABLE_ENTITY,
            &json!({"detail": [{"type": "missing", "loc": ["body", "messages"], "msg": "Field required", "input": null}]}),
        ));
    }
    let text = last_user_text(messages);
    let mut d = sh.cfg.defaults.clone();
    d.apply_text(&text);
    if let Some(tok) = token {
        d.apply_token(tok);
    }
    d.answer_override = script::tool_call_answer(&String::from_utf8_lossy(&ctx.body), &d);
    d.effort = requested_effort(&body);
    if d.thinking_rule {
        if let Some(why) = thinking_violation(messages) {
            return Ok(detail(StatusCode::BAD_REQUEST, &why));
        }
    }
    match d.fault {
        Fault::Close => return Err(io::Error::other("mock fault: close")),
        Fault::SlowHead => tokio::time::sleep(Duration::from_millis(d.slowhead_ms)).await,
        Fault::Status(code) => return Ok(fault_reply(code, &d)),
        Fault::Html => return Ok(html_reply(StatusCode::OK, CHALLENGE_HTML)),
        Fault::Garbage => return Ok(garbage_reply()),
        _ => {}
    }
    let model = body.get("model").and_then(Value::as_str).unwrap_or("");
    if !sh.cfg.models.iter().any(|m| m == model) {
        return Ok(detail(StatusCode::BAD_REQUEST, "Model not found"));
    }
    let prompt_chars: usize = messages
        .as_array()
        .map(|a| {
            a.iter()
                .map(|m| {
                    content_text(m.get("content").unwrap_or(&Value::Null))
                        .chars()
                        .count()
                })
                .sum()
        })
        .unwrap_or(0);
    let id = format!("chatcmpl-{}", random_hex(12));
    let created = unix_now();
    let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
    if !stream {
        return json_completion(ctx, &d, &text, prompt_chars, model, &id, created).await;
    }
    let spec = StreamSpec {
        directives: &d,
        last_user_text: &text,
        prompt_chars,
        model,
        id: &id,
        created,
    };
    let (events, tail) = script::stream_events(&spec);
    Ok(start_stream(
        ctx,
        d.clone(),
        events,
        tail,
        "text/event-stream; charset=utf-8",
    ))
}

async fn json_completion(
    ctx: &Ctx,
    d: &Directives,
    text: &str,
    prompt_chars: usize,
    model: &str,
    id: &str,
    created: u64,
) -> io::Result<Reply> {
    if let Some(g) = &d.gate {
        if !ctx.shared.wait_gate(g, None).await {
            return Err(io::Error::other("mock: gate abandoned"));
        }
    }
    if d.fault == Fault::ErrorEvent {
        return Ok(detail(
            StatusCode::INTERNAL_SERVER_ERROR,
            "upstream model error",
        ));
    }
    if d.fault == Fault::DetailEvent {
        // A 200 whose body is only an error detail.
        return Ok(json_reply(
            StatusCode::OK,
            &json!({ "detail": script::DETAIL_EVENT }),
        ));
    }
    let content = script::markup_for(text, d);
    let mut v = json!({
        "id": id, "object": "chat.completion", "created": created, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
    });
    if d.usage {
        v["usage"] = script::usage_json(prompt_chars, &content);
    }
    let bytes = script::to_json(&v, d.json);
    let tail = match d.fault {
        Fault::Cut => Tail::Cut,
        Fault::Stall => Tail::Stall(d.stall_ms),
        _ => {
            let mut r = Response::new(MockBody::full(bytes));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            );
            return Ok(r);
        }
    };
    // Half the JSON, then the fault. Gates were already passed.
    let half = bytes.len() / 2;
    let mut d = d.clone();
    d.gate = None;
    d.split = 0;
    Ok(start_stream(
        ctx,
        d,
        vec![Bytes::from(bytes).slice(..half)],
        tail,
        "application/json",
    ))
}

fn start_stream(
    ctx: &Ctx,
    d: Directives,
    events: Vec<Bytes>,
    tail: Tail,
    content_type: &'static str,
) -> Reply {
    let (tx, rx) = mpsc::channel(4);
    let guard = ActiveGuard::new(ctx.shared.active.clone());
    ctx.slot.streaming.store(true, Ordering::SeqCst);
    tokio::spawn(write_stream(
        ctx.shared.clone(),
        ctx.slot.clone(),
        d,
        events,
        tail,
        tx,
    ));
    let mut r = Response::new(MockBody::channel(rx, guard));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    h.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-cache"),
    );
    h.insert("x-accel-buffering", header::HeaderValue::from_static("no"));
    r
}

/// Sends one event, in `split`-byte frames when asked; false when the reader went away.
async fn send_event(ev: &Bytes, split: usize, tx: &Tx) -> bool {
    if split == 0 || split >= ev.len() {
        return tx.send(Ok(ev.clone())).await.is_ok();
    }
    let mut at = 0;
    while at < ev.len() {
        let end = (at + split).min(ev.len());
        if tx.send(Ok(ev.slice(at..end))).await.is_err() {
            return false;
        }
        at = end;
        if at < ev.len() && !sleep_or_closed(Duration::from_millis(1), Some(tx)).await {
            return false;
        }
    }
    true
}

/// Waits until the body took every queued frame and hyper had a moment to write it.
async fn drain(tx: &Tx) -> bool {
    while tx.capacity() < tx.max_capacity() {
        if !sleep_or_closed(Duration::from_millis(1), Some(tx)).await {
            return false;
        }
    }
    sleep_or_closed(Duration::from_millis(20), Some(tx)).await
}

async fn write_stream(
    shared: Arc<Shared>,
    slot: Arc<Slot>,
    d: Directives,
    events: Vec<Bytes>,
    tail: Tail,
    tx: Tx,
) {
    let gate = d.gate.as_deref();
    for (i, ev) in events.iter().enumerate() {
        if let Some(g) = gate {
            if i == d.gate_after && !shared.wait_gate(g, Some(&tx)).await {
                return;
            }
        }
        if i > 0 && d.pace_ms > 0 && !sleep_or_closed(d.pace(), Some(&tx)).await {
            return;
        }
        if !send_event(ev, d.split, &tx).await {
            return;
        }
        slot.events.fetch_add(1, Ordering::SeqCst);
    }
    if let Some(g) = gate {
        if d.gate_after >= events.len() && !shared.wait_gate(g, Some(&tx)).await {
            return;
        }
    }
    match tail {
        Tail::Finish => {
            slot.completed.store(true, Ordering::SeqCst);
            if d.linger_ms > 0 {
                let _ = sleep_or_closed(Duration::from_millis(d.linger_ms), Some(&tx)).await;
            }
        }
        Tail::Cut => {
            if drain(&tx).await {
                let _ = tx.send(Err(io::Error::other("mock fault: cut"))).await;
            }
        }
        Tail::Stall(ms) => {
            if sleep_or_closed(Duration::from_millis(ms), Some(&tx)).await {
                let _ = tx.send(Err(io::Error::other("mock fault: stall"))).await;
            }
        }
    }
}

async fn signin(ctx: &Ctx) -> Reply {
    let sh = &ctx.shared;
    let body: Value = match serde_json::from_slice(&ctx.body) {
        Ok(v) => v,
        Err(e) => return detail(StatusCode::BAD_REQUEST, &format!("Invalid JSON body: {e}")),
    };
    let (Some(email), Some(password)) = (
        body.get("email").and_then(Value::as_str),
        body.get("password").and_then(Value::as_str),
    ) else {
        return json_reply(
            StatusCode::UNPROCESSABLE_ENTITY,
            &json!({"detail": [{"type": "missing", "loc": ["body", "email/password"], "msg": "Field required", "input": null}]}),
        );
    };
    let Some(acc) = sh
        .cfg
        .accounts
        .iter()
        .find(|a| a.email.eq_ignore_ascii_case(email))
    else {
        return detail(StatusCode::BAD_REQUEST, WRONG_CREDENTIALS);
    };
    *lock(&sh.signins)
        .entry(acc.email.to_ascii_lowercase())
        .or_insert(0) += 1;
    if !acc.delay.is_zero() {
        tokio::time::sleep(acc.delay).await;
    }
    if acc.password != password {
        return detail(StatusCode::BAD_REQUEST, WRONG_CREDENTIALS);
    }
    if let Some(code) = acc.fail_status {
        return detail(status_of(code), &format!("mock sign-in failure {code}"));
    }
    let user_id = uuid();
    let exp = unix_now() + sh.cfg.token_ttl.as_secs();
    let token = jwt(&user_id, exp);
    lock(&sh.issued).insert(token.clone(), SystemTime::now() + sh.cfg.token_ttl);
    let name = acc.email.split('@').next().unwrap_or("user");
    let mut v = json!({
        "id": user_id, "email": acc.email, "name": name, "role": "user",
        "profile_image_url": "/user.png", "expires_at": exp,
    });
    if matches!(acc.token_in, TokenIn::Body | TokenIn::Both) {
        v["token"] = json!(token);
        v["token_type"] = json!("Bearer");
    }
    let mut r = json_reply(StatusCode::OK, &v);
    if matches!(acc.token_in, TokenIn::Cookie | TokenIn::Both) {
        let cookie = format!("token={token}; Path=/; HttpOnly; SameSite=Lax");
        if let Ok(hv) = header::HeaderValue::from_str(&cookie) {
            r.headers_mut().append(header::SET_COOKIE, hv);
        }
    }
    r
}

fn models(ctx: &Ctx) -> Reply {
    let sh = &ctx.shared;
    let Some(tok) = ctx.token() else {
        return detail(StatusCode::UNAUTHORIZED, "Not authenticated");
    };
    if !sh.token_ok(tok) {
        return detail(StatusCode::UNAUTHORIZED, INVALID_TOKEN);
    }
    let mut d = sh.cfg.defaults.clone();
    d.apply_token(tok);
    if let Fault::Status(code) = d.fault {
        return fault_reply(code, &d);
    }
    let created = unix_now();
    let data: Vec<Value> = sh
        .cfg
        .models
        .iter()
        .map(|m| json!({"id": m, "name": m, "object": "model", "created": created, "owned_by": "MBZUAI", "status": "active"}))
        .collect();
    json_reply(StatusCode::OK, &json!({ "data": data }))
}

fn guest_page() -> Reply {
    let mut r = html_reply(
        StatusCode::OK,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>K2 Think</title></head><body><div id=\"app\"></div></body></html>",
    );
    let h = r.headers_mut();
    h.remove(header::SERVER);
    for c in [
        format!("guest_id={}; Path=/; SameSite=Lax", uuid()),
        format!(
            "__cf_bm={}; Path=/; HttpOnly; Secure; SameSite=None",
            random_hex(16)
        ),
    ] {
        if let Ok(v) = header::HeaderValue::from_str(&c) {
            h.append(header::SET_COOKIE, v);
        }
    }
    r
}

fn guest_new_chat(ctx: &Ctx) -> Reply {
    let body: Value = serde_json::from_slice(&ctx.body).unwrap_or(Value::Null);
    let title = body
        .pointer("/chat/title")
        .and_then(Value::as_str)
        .unwrap_or("Guest Chat");
    let now = unix_now();
    json_reply(
        StatusCode::OK,
        &json!({"id": uuid(), "user_id": "guest", "title": title, "chat": body.get("chat").cloned().unwrap_or(json!({})),
                "created_at": now, "updated_at": now, "archived": false, "pinned": false}),
    )
}
