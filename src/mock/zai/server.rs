//! The Z.AI mock's HTTP server: accept loop, identities and chats, routing and handlers.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::request::Parts;
use http::{header, Method, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::Request;
use serde_json::{json, Value};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::directives::{Thinking, ZaiDirectives, ZaiFault};
use super::sign::{jwt, jwt_user_id, query_pairs, signature_of};
use super::stream;
use super::{Role, ZaiChat, ZaiMockConfig, ZaiRequest};
use crate::mock::body::{ActiveGuard, MockBody};
use crate::mock::directives::split_token;
use crate::mock::script::last_user_text;
use crate::mock::util::{bearer_of, cookie_token_of, random_hex, unix_now, uuid};

type Reply = Response<MockBody>;
type Tx = mpsc::Sender<io::Result<Bytes>>;

/// 401 detail for a missing bearer, and for any refused bearer on the completion.
pub const NOT_AUTHENTICATED: &str = "Not authenticated";
/// 401 detail for an unknown bearer on the other endpoints (Open WebUI's wording).
pub const INVALID_TOKEN: &str =
    "Your session has expired or the token is invalid. Please sign in again.";
/// HTTP 426 detail for a stale `X-FE-Version`.
pub const FE_TOO_OLD: &str = "您的客户端版本过旧";
/// Inline 426 detail (with `fe_inline_426`).
pub const CLIENT_CHECK_FAILED: &str = "您的客户端校验失败";
/// HTTP 400 detail of a wrong signature.
pub const SIGNATURE_FAILED: &str = "403: Signature validation failed: 签名验证失败";
/// HTTP 400 detail of a signed timestamp too far from the mock's clock.
pub const SIGNATURE_EXPIRED: &str =
    "403: Signature validation failed: timestamp outside the allowed window";
/// Inline 403 detail for a guest asking for a model other than `glm-4.7`.
pub const MODEL_NOT_AVAILABLE: &str = "Model not available for current user level";

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A token the mock accepts.
#[derive(Debug, Clone)]
struct Identity {
    id: String,
    email: String,
    name: String,
    role: Role,
    token: String,
}

/// Live state of one recorded request.
struct Slot {
    method: String,
    path: String,
    query: String,
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
    fn snapshot(&self) -> ZaiRequest {
        ZaiRequest {
            method: self.method.clone(),
            path: self.path.clone(),
            query: self.query.clone(),
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
            "method": self.method, "path": self.path, "query": self.query,
            "headers": self.headers, "bearer": self.bearer, "cookie": self.cookie,
            "body": body,
            "received_ms_ago": self.received_at.elapsed().as_millis() as u64,
            "response_status": self.status.load(Ordering::SeqCst),
            "events_written": self.events.load(Ordering::SeqCst),
            "completed": self.completed.load(Ordering::SeqCst),
        })
    }
}

/// An uploaded file.
struct StoredFile {
    content_type: String,
    bytes: Bytes,
}

/// Everything the endpoints change.
#[derive(Default)]
struct State {
    fe_version: String,
    auths_fault: Option<ZaiFault>,
    /// By bearer (without `;directives`).
    identities: HashMap<String, Identity>,
    chats: HashMap<String, ZaiChat>,
    /// By bearer (without `;directives`).
    created: HashMap<String, usize>,
    deleted: HashMap<String, usize>,
    files: HashMap<String, StoredFile>,
}

struct Shared {
    cfg: ZaiMockConfig,
    state: Mutex<State>,
    records: Mutex<Vec<Arc<Slot>>>,
    gates: Mutex<HashSet<String>>,
    gate_version: watch::Sender<u64>,
    active: Arc<AtomicUsize>,
    guests: AtomicUsize,
}

impl Shared {
    fn identity(&self, token: &str) -> Option<Identity> {
        let (name, _) = split_token(token);
        lock(&self.state).identities.get(name).cloned()
    }

    fn register(&self, token: &str, role: Role) -> String {
        let (name, _) = split_token(token);
        let id = jwt_user_id(name).unwrap_or_else(uuid);
        let email = format!("{}@example.com", &id.chars().take(8).collect::<String>());
        let ident = Identity {
            id: id.clone(),
            email,
            name: match role {
                Role::Guest => format!("Guest-{}", now_ms()),
                Role::User => "Mock User".to_string(),
            },
            role,
            token: name.to_string(),
        };
        lock(&self.state).identities.insert(name.to_string(), ident);
        id
    }

    fn new_guest(&self) -> Identity {
        let id = uuid();
        let tag = random_hex(4);
        let email = format!("guest-{tag}@guest.com");
        let ident = Identity {
            token: jwt(&id, &email),
            name: format!("Guest-{}{}", now_ms(), &tag[..3]),
            email,
            id,
            role: Role::Guest,
        };
        lock(&self.state)
            .identities
            .insert(ident.token.clone(), ident.clone());
        self.guests.fetch_add(1, Ordering::SeqCst);
        ident
    }

    fn open_gate(&self, name: &str) {
        lock(&self.gates).insert(name.to_string());
        self.gate_version.send_modify(|v| *v += 1);
    }

    /// Waits until the gate is open; false when the response's reader went away first.
    async fn wait_gate(&self, name: &str, tx: &Tx) -> bool {
        let mut rx = self.gate_version.subscribe();
        loop {
            if lock(&self.gates).contains(name) {
                return true;
            }
            tokio::select! {
                r = rx.changed() => if r.is_err() { return false },
                _ = tx.closed() => return false,
            }
        }
    }
}

/// A running Z.AI mock. Dropping it stops the accept loop too.
pub struct ZaiMock {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl ZaiMock {
    /// Binds `listen` (port 0 picks one) and serves on the current tokio runtime.
    pub async fn start(listen: SocketAddr, cfg: ZaiMockConfig) -> io::Result<ZaiMock> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let (gate_version, _) = watch::channel(0u64);
        let state = State {
            fe_version: cfg.fe_version.clone(),
            auths_fault: cfg.auths_fault,
            ..State::default()
        };
        let shared = Arc::new(Shared {
            cfg,
            state: Mutex::new(state),
            records: Mutex::new(Vec::new()),
            gates: Mutex::new(HashSet::new()),
            gate_version,
            active: Arc::new(AtomicUsize::new(0)),
            guests: AtomicUsize::new(0),
        });
        for t in shared.cfg.users.clone() {
            shared.register(&t, Role::User);
        }
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(crate::mock::util::serve(
            listener,
            shared.clone(),
            stop_rx,
            "z.ai mock",
            handle,
        ));
        log::info!("z.ai mock listening on {addr}");
        Ok(ZaiMock {
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
    pub fn requests(&self) -> Vec<ZaiRequest> {
        lock(&self.shared.records)
            .iter()
            .map(|s| s.snapshot())
            .collect()
    }

    pub fn clear_requests(&self) {
        lock(&self.shared.records).clear();
    }

    /// The current front-end version, `prod-fe-X.Y.Z`.
    pub fn fe_version(&self) -> String {
        lock(&self.shared.state).fe_version.clone()
    }

    /// Rotates the front-end version now (`X.Y.Z` gets the `prod-fe-` prefix): `/` shows
    /// it and completions with another `X-FE-Version` get 426.
    pub fn set_fe_version(&self, version: &str) {
        lock(&self.shared.state).fe_version = normalize_fe(version);
    }

    /// Sets (or clears) the fault of `GET /api/v1/auths/` and `POST /api/v1/auths/guest`.
    pub fn set_auths_fault(&self, fault: Option<ZaiFault>) {
        lock(&self.shared.state).auths_fault = fault;
    }

    /// Registers a bearer token with this role and returns its user id: the JWT's `id`
    /// claim (or `user_id`, `uid`, `sub`), else a fresh uuid. `;directives` are ignored.
    pub fn set_user(&self, token: &str, role: Role) -> String {
        self.shared.register(token, role)
    }

    /// A fresh user JWT (role `user`), registered.
    pub fn issue_user_token(&self) -> String {
        let id = uuid();
        let token = jwt(&id, &format!("user-{}@example.com", &id[..8]));
        self.shared.register(&token, Role::User);
        token
    }

    /// The user id of a known token.
    pub fn user_id(&self, token: &str) -> Option<String> {
        self.shared.identity(token).map(|i| i.id)
    }

    /// Forgets a token: it gets 401 from then on (a guest cookie makes a new guest).
    pub fn revoke_token(&self, token: &str) {
        let (name, _) = split_token(token);
        lock(&self.shared.state).identities.remove(name);
    }

    /// Guests made by the auth endpoints (a cookie reuse is not a new guest).
    pub fn guests_created(&self) -> usize {
        self.shared.guests.load(Ordering::SeqCst)
    }

    /// Chats made by `chats/new`, all tokens.
    pub fn chats_created(&self) -> usize {
        lock(&self.shared.state).created.values().sum()
    }

    /// Chats made by `chats/new` with this token.
    pub fn chats_created_by(&self, token: &str) -> usize {
        let (name, _) = split_token(token);
        lock(&self.shared.state)
            .created
            .get(name)
            .copied()
            .unwrap_or(0)
    }

    /// Chats removed by the delete endpoints, all tokens.
    pub fn chats_deleted(&self) -> usize {
        lock(&self.shared.state).deleted.values().sum()
    }

    /// Chats removed by the delete endpoints called with this token.
    pub fn chats_deleted_by(&self, token: &str) -> usize {
        let (name, _) = split_token(token);
        lock(&self.shared.state)
            .deleted
            .get(name)
            .copied()
            .unwrap_or(0)
    }

    /// Chats of this token's user that are not deleted.
    pub fn chats_open(&self, token: &str) -> usize {
        let Some(ident) = self.shared.identity(token) else {
            return 0;
        };
        lock(&self.shared.state)
            .chats
            .values()
            .filter(|c| c.owner == ident.id)
            .count()
    }

    /// A chat made by `chats/new` and not deleted.
    pub fn chat(&self, id: &str) -> Option<ZaiChat> {
        lock(&self.shared.state).chats.get(id).cloned()
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

    /// Stops accepting and drops every open connection.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// `X.Y.Z` → `prod-fe-X.Y.Z`; other strings as they are.
fn normalize_fe(v: &str) -> String {
    let v = v.trim();
    if v.starts_with("prod-fe-") || !v.starts_with(|c: char| c.is_ascii_digit()) {
        v.to_string()
    } else {
        format!("prod-fe-{v}")
    }
}

/// A version lower than `current` that sorts higher as text where possible (1.0.241 →
/// 1.0.99), so a scraper has to compare numerically.
fn older_fe(current: &str) -> String {
    let nums: Option<Vec<u64>> = current
        .strip_prefix("prod-fe-")
        .map(|v| v.split('.').map(|n| n.parse().ok()).collect())
        .and_then(|v: Option<Vec<u64>>| v);
    let Some([x, y, z]) = nums.as_deref() else {
        return "prod-fe-0.0.1".to_string();
    };
    let (x, y, z) = (*x, *y, *z);
    let older = if z >= 10 {
        // 9, 99, 999…: one digit fewer than z.
        (x, y, 10u64.pow(z.to_string().len() as u32 - 1) - 1)
    } else if z > 0 {
        (x, y, z - 1)
    } else if y > 0 {
        (x, y - 1, 99)
    } else if x > 0 {
        (x - 1, 99, 99)
    } else {
        return "prod-fe-0.0.0".to_string();
    };
    format!("prod-fe-{}.{}.{}", older.0, older.1, older.2)
}

struct Ctx {
    shared: Arc<Shared>,
    parts: Parts,
    body: Bytes,
    slot: Arc<Slot>,
}

impl Ctx {
    fn bearer(&self) -> Option<&str> {
        self.slot.bearer.as_deref().filter(|t| !t.trim().is_empty())
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.parts.headers.get(name)?.to_str().ok()
    }

    /// The bearer's identity: `Err` is the 401 to answer (missing or unknown token).
    fn identity(&self) -> Result<Identity, Box<Reply>> {
        let Some(t) = self.bearer() else {
            return Err(Box::new(detail(
                StatusCode::UNAUTHORIZED,
                NOT_AUTHENTICATED,
            )));
        };
        self.shared
            .identity(t)
            .ok_or_else(|| Box::new(detail(StatusCode::UNAUTHORIZED, INVALID_TOKEN)))
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
        path: path.clone(),
        query: parts.uri.query().unwrap_or("").to_string(),
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
    log::debug!("z.ai mock {} {}", slot.method, slot.path);
    let ctx = Ctx {
        shared,
        parts,
        body,
        slot: slot.clone(),
    };
    let resp = route(&ctx, &path).await;
    slot.status.store(resp.status().as_u16(), Ordering::SeqCst);
    if !slot.streaming.load(Ordering::SeqCst) {
        slot.completed.store(true, Ordering::SeqCst);
    }
    Ok(resp)
}

async fn route(ctx: &Ctx, path: &str) -> Reply {
    let m = &ctx.parts.method;
    let is = |want: Method| *m == want;
    match path {
        "/" if is(Method::GET) => home(ctx),
        "/api/v1/auths/" | "/api/v1/auths" if is(Method::GET) => auths(ctx, false),
        "/api/v1/auths/guest" if is(Method::POST) => auths(ctx, true),
        "/api/v1/chats/new" if is(Method::POST) => new_chat(ctx),
        "/api/v2/chat/completions" if is(Method::POST) => completion(ctx).await,
        "/api/v1/chats/" | "/api/v1/chats" if is(Method::DELETE) => delete_chats(ctx, None),
        "/api/v1/files/" | "/api/v1/files" if is(Method::POST) => upload(ctx),
        "/api/models" if is(Method::GET) => models(ctx),
        "/api/config" if is(Method::GET) => config(),
        "/api/v1/users/user/settings" if is(Method::GET) => match ctx.identity() {
            Ok(_) => json_reply(StatusCode::OK, &json!({"ui": {}})),
            Err(r) => *r,
        },
        "/"
        | "/api/v1/auths/"
        | "/api/v1/auths"
        | "/api/v1/auths/guest"
        | "/api/v1/chats/new"
        | "/api/v2/chat/completions"
        | "/api/v1/chats/"
        | "/api/v1/chats"
        | "/api/v1/files/"
        | "/api/v1/files"
        | "/api/models"
        | "/api/config"
        | "/api/v1/users/user/settings" => {
            detail(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed")
        }
        p => {
            if let Some(id) = p.strip_prefix("/api/v1/chats/") {
                if is(Method::DELETE) && !id.contains('/') {
                    return delete_chats(ctx, Some(id));
                }
            }
            if let Some(id) = p
                .strip_prefix("/api/v1/files/")
                .and_then(|r| r.strip_suffix("/content"))
            {
                if is(Method::GET) {
                    return file_content(ctx, id);
                }
            }
            detail(StatusCode::NOT_FOUND, "Not Found")
        }
    }
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

/// FastAPI's 422 for a missing field.
fn missing(loc: &[&str]) -> Reply {
    json_reply(
        StatusCode::UNPROCESSABLE_ENTITY,
        &json!({"detail": [{"type": "missing", "loc": loc, "msg": "Field required", "input": null}]}),
    )
}

fn html_reply(status: StatusCode, html: String) -> Reply {
    let mut r = Response::new(MockBody::full(html));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r
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
        (&Method::POST, r) => {
            if let Some(name) = r
                .strip_prefix("gates/")
                .and_then(|g| g.strip_suffix("/open"))
                .filter(|n| !n.is_empty())
            {
                shared.open_gate(name);
                return json_reply(StatusCode::OK, &json!({ "opened": name }));
            }
            if let Some(v) = r.strip_prefix("fe-version/").filter(|v| !v.is_empty()) {
                let v = normalize_fe(v);
                lock(&shared.state).fe_version = v.clone();
                return json_reply(StatusCode::OK, &json!({ "fe_version": v }));
            }
            detail(StatusCode::NOT_FOUND, "Not Found")
        }
        _ => detail(StatusCode::NOT_FOUND, "Not Found"),
    }
}

/// The Aliyun WAF block page (HTTP 405).
fn waf_reply() -> Reply {
    let trace = random_hex(16);
    html_reply(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>405</title></head>\n<body>\
<div class=\"waf-block\"><h1>405</h1>\
<p>Sorry, your request has been blocked as it may cause potential threats to the server's security.</p>\
<p>很抱歉，由于您访问的URL有可能对网站造成安全威胁，您的访问被阻断。</p>\
<p>Powered by Alibaba Cloud Web Application Firewall (Aliyun WAF).</p>\
<p class=\"trace\">traceid: {trace}</p></div></body></html>\n"
        ),
    )
}

/// The reply of an HTTP fault; `None` for the stream faults.
fn http_fault(f: ZaiFault, d: &ZaiDirectives) -> Option<Reply> {
    Some(match f {
        ZaiFault::Waf => waf_reply(),
        ZaiFault::Status(429) => {
            let mut r = detail(
                StatusCode::TOO_MANY_REQUESTS,
                "Too many requests, please try again later.",
            );
            if let Ok(v) = header::HeaderValue::from_str(&d.retry_after.to_string()) {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
            r
        }
        ZaiFault::Status(401) => detail(StatusCode::UNAUTHORIZED, NOT_AUTHENTICATED),
        ZaiFault::Status(500) => detail(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error"),
        ZaiFault::Status(n) => detail(
            StatusCode::from_u16(n).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            &format!("mock fault {n}"),
        ),
        _ => return None,
    })
}

/// `GET /`: the page a front-end version scraper reads.
fn home(ctx: &Ctx) -> Reply {
    let cur = lock(&ctx.shared.state).fe_version.clone();
    let old = older_fe(&cur);
    html_reply(
        StatusCode::OK,
        format!(
            "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<title>Z.ai Chat - Free AI Chatbot powered by GLM</title>\n\
<link rel=\"icon\" href=\"/static/favicon.png\">\n\
<script type=\"module\" crossorigin src=\"/frontend/{cur}/assets/index-Bq3xZ1.js\"></script>\n\
<link rel=\"modulepreload\" crossorigin href=\"/frontend/{cur}/assets/vendor-Df9k2L.js\">\n\
<link rel=\"stylesheet\" crossorigin href=\"/frontend/{cur}/assets/index-C7mPq0.css\">\n\
</head><body><div id=\"app\"></div>\n\
<!-- legacy service worker: /frontend/{old}/assets/sw-legacy.js -->\n\
<script>window.__PREV_FE__=\"{old}\";</script>\n</body></html>\n"
        ),
    )
}

fn identity_json(i: &Identity) -> Value {
    json!({
        "id": i.id, "email": i.email, "name": i.name, "role": i.role.as_str(),
        "profile_image_url": "/user.png", "token": i.token, "token_type": "Bearer",
        "expires_at": null, "permissions": {"chat": {"file_upload": i.role == Role::User}},
    })
}

fn with_cookie(mut r: Reply, token: &str) -> Reply {
    let cookie = format!("token={token}; Path=/; SameSite=Lax");
    if let Ok(hv) = header::HeaderValue::from_str(&cookie) {
        r.headers_mut().append(header::SET_COOKIE, hv);
    }
    r
}

/// `GET /api/v1/auths/` (`fresh`: `POST /api/v1/auths/guest`, always a new guest).
fn auths(ctx: &Ctx, fresh: bool) -> Reply {
    let sh = &ctx.shared;
    let fault = lock(&sh.state).auths_fault;
    if let Some(r) = fault.and_then(|f| http_fault(f, &sh.cfg.defaults)) {
        return r;
    }
    if !fresh {
        if let Some(t) = ctx.bearer() {
            return match sh.identity(t) {
                Some(i) => json_reply(StatusCode::OK, &identity_json(&i)),
                None => detail(StatusCode::UNAUTHORIZED, INVALID_TOKEN),
            };
        }
        if let Some(i) = ctx.slot.cookie.as_deref().and_then(|c| sh.identity(c)) {
            return with_cookie(json_reply(StatusCode::OK, &identity_json(&i)), &i.token);
        }
    }
    let g = sh.new_guest();
    with_cookie(json_reply(StatusCode::OK, &identity_json(&g)), &g.token)
}

fn body_json(ctx: &Ctx) -> Value {
    ctx.slot.json.clone().unwrap_or(Value::Null)
}

/// `POST /api/v1/chats/new`.
fn new_chat(ctx: &Ctx) -> Reply {
    let ident = match ctx.identity() {
        Ok(i) => i,
        Err(r) => return *r,
    };
    let body = body_json(ctx);
    let Some(mut chat) = body.get("chat").filter(|c| c.is_object()).cloned() else {
        return missing(&["body", "chat"]);
    };
    let id = uuid();
    let umid = chat
        .pointer("/history/currentId")
        .and_then(Value::as_str)
        .map(str::to_string);
    chat["id"] = json!(id);
    let title = chat
        .get("title")
        .and_then(Value::as_str)
        .unwrap_or("New Chat")
        .to_string();
    {
        let mut st = lock(&ctx.shared.state);
        st.chats.insert(
            id.clone(),
            ZaiChat {
                id: id.clone(),
                owner: ident.id.clone(),
                token: ident.token.clone(),
                user_message_id: umid,
            },
        );
        *st.created.entry(ident.token.clone()).or_insert(0) += 1;
    }
    let now = unix_now();
    json_reply(
        StatusCode::OK,
        &json!({
            "id": id, "user_id": ident.id, "title": title, "chat": chat,
            "updated_at": now, "created_at": now, "share_id": null,
            "archived": false, "pinned": false, "meta": {}, "folder_id": null,
        }),
    )
}

/// `DELETE /api/v1/chats/` (all of the user's chats) or `/api/v1/chats/{id}`: `true`.
fn delete_chats(ctx: &Ctx, one: Option<&str>) -> Reply {
    let ident = match ctx.identity() {
        Ok(i) => i,
        Err(r) => return *r,
    };
    let mut st = lock(&ctx.shared.state);
    let before = st.chats.len();
    match one {
        Some(id) => {
            if st.chats.get(id).is_some_and(|c| c.owner == ident.id) {
                st.chats.remove(id);
            }
        }
        None => st.chats.retain(|_, c| c.owner != ident.id),
    }
    let n = before - st.chats.len();
    *st.deleted.entry(ident.token.clone()).or_insert(0) += n;
    json_reply(StatusCode::OK, &json!(true))
}

/// The `file` part of a multipart body: `(filename, content type, bytes)`.
fn multipart_file(content_type: &str, body: &[u8]) -> Option<(String, String, Bytes)> {
    let boundary = content_type
        .split(';')
        .filter_map(|p| p.trim().strip_prefix("boundary="))
        .next()?
        .trim_matches('"');
    let delim = format!("--{boundary}");
    let find = |h: &[u8], n: &[u8], from: usize| {
        h.get(from..)?
            .windows(n.len())
            .position(|w| w == n)
            .map(|p| p + from)
    };
    let mut at = find(body, delim.as_bytes(), 0)?;
    loop {
        let start = at + delim.len();
        let head_end = find(body, b"\r\n\r\n", start)?;
        let head = String::from_utf8_lossy(&body[start..head_end]).into_owned();
        let data_start = head_end + 4;
        let next = find(body, format!("\r\n{delim}").as_bytes(), data_start)?;
        let is_file = head.contains("name=\"file\"");
        if is_file {
            let filename = head
                .split("filename=\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap_or("file")
                .to_string();
            let ctype = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.trim()
                        .eq_ignore_ascii_case("content-type")
                        .then(|| v.trim().to_string())
                })
                .unwrap_or_else(|| "application/octet-stream".to_string());
            return Some((
                filename,
                ctype,
                Bytes::copy_from_slice(&body[data_start..next]),
            ));
        }
        at = next + 2;
    }
}

/// `POST /api/v1/files/` (multipart, field `file`).
fn upload(ctx: &Ctx) -> Reply {
    let ident = match ctx.identity() {
        Ok(i) => i,
        Err(r) => return *r,
    };
    let ctype = ctx.header("content-type").unwrap_or("");
    let Some((filename, content_type, bytes)) = multipart_file(ctype, &ctx.body) else {
        return missing(&["body", "file"]);
    };
    let id = uuid();
    let size = bytes.len();
    lock(&ctx.shared.state).files.insert(
        id.clone(),
        StoredFile {
            content_type: content_type.clone(),
            bytes,
        },
    );
    let now = unix_now();
    json_reply(
        StatusCode::OK,
        &json!({
            "id": id, "user_id": ident.id, "hash": null, "filename": filename, "data": {},
            "meta": {"name": filename, "content_type": content_type, "size": size},
            "created_at": now, "updated_at": now,
        }),
    )
}

/// `GET /api/v1/files/{id}/content`.
fn file_content(ctx: &Ctx, id: &str) -> Reply {
    if let Err(r) = ctx.identity() {
        return *r;
    }
    let st = lock(&ctx.shared.state);
    let Some(f) = st.files.get(id) else {
        return detail(StatusCode::NOT_FOUND, "File not found");
    };
    let mut r = Response::new(MockBody::full(f.bytes.clone()));
    if let Ok(v) = header::HeaderValue::from_str(&f.content_type) {
        r.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    r
}

/// `GET /api/models`: 401 for guests (SEC, 2026-02-20).
fn models(ctx: &Ctx) -> Reply {
    let ident = match ctx.identity() {
        Ok(i) => i,
        Err(r) => return *r,
    };
    if ident.role == Role::Guest {
        return detail(StatusCode::UNAUTHORIZED, "Unauthorized");
    }
    let created = unix_now();
    let data: Vec<Value> = ctx
        .shared
        .cfg
        .models
        .iter()
        .map(|m| {
            let vision = m.to_ascii_lowercase().contains('v');
            json!({
                "id": m, "name": m.to_ascii_uppercase(), "object": "model", "created": created,
                "owned_by": "openai",
                "info": {"id": m, "name": m.to_ascii_uppercase(), "is_active": true,
                    "meta": {"capabilities": {"think": true, "web_search": true, "vision": vision}}},
            })
        })
        .collect();
    json_reply(StatusCode::OK, &json!({ "data": data }))
}

fn config() -> Reply {
    json_reply(
        StatusCode::OK,
        &json!({
            "status": true, "name": "Z.ai", "version": "0.6.2", "default_locale": "en-US",
            "oauth": {"providers": {}},
            "features": {"auth": true, "auth_trusted_header": false, "enable_signup": true,
                "enable_login_form": true, "enable_websocket": true},
        }),
    )
}

/// A 200 SSE whose only event is an inline error.
fn inline_error(d: &ZaiDirectives, detail_text: &str, code: u16) -> Reply {
    let mut body = stream::sse(stream::error_data(detail_text, code, false), d.envelope).to_vec();
    if d.done_marker {
        body.extend_from_slice(&stream::done_marker());
    }
    sse_head(Response::new(MockBody::full(body)))
}

fn sse_head(mut r: Reply) -> Reply {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    h.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-cache"),
    );
    h.insert("x-accel-buffering", header::HeaderValue::from_static("no"));
    r
}

fn bad_request(msg: &str) -> Reply {
    detail(StatusCode::BAD_REQUEST, msg)
}

/// The signed values of a completion's query.
struct Signed {
    request_id: String,
    /// As written in the query (it goes into the signed message as text).
    ts_text: String,
    ts: u64,
    user_id: String,
}

/// Check (3): the query fields; `Err` is the 400 detail.
fn check_query(pairs: &[(String, String)], bearer: &str) -> Result<Signed, String> {
    let get = |k: &str| {
        pairs
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    };
    for field in [
        "timestamp",
        "requestId",
        "user_id",
        "token",
        "signature_timestamp",
        "version",
        "platform",
    ] {
        if get(field).is_none() {
            return Err(format!("Missing required query parameter: {field}"));
        }
    }
    let ts_text = get("timestamp").unwrap_or_default();
    let Ok(ts) = ts_text.parse::<u64>() else {
        return Err("Invalid query parameter: timestamp (milliseconds expected)".into());
    };
    if get("token") != Some(bearer) {
        return Err("Invalid query parameter: token (must equal the bearer token)".into());
    }
    if get("signature_timestamp") != Some(ts_text) {
        return Err("Invalid query parameter: signature_timestamp (must equal timestamp)".into());
    }
    Ok(Signed {
        request_id: get("requestId").unwrap_or_default().to_string(),
        ts_text: ts_text.to_string(),
        ts,
        user_id: get("user_id").unwrap_or_default().to_string(),
    })
}

/// `POST /api/v2/chat/completions`, the checks in the order of §A.8, then the stream.
async fn completion(ctx: &Ctx) -> Reply {
    let sh = &ctx.shared;
    let body = body_json(ctx);
    let messages = body.get("messages").unwrap_or(&Value::Null);
    let text = last_user_text(messages);
    let mut d = sh.cfg.defaults.clone();
    d.apply_text(&text);
    if let Some(t) = ctx.bearer() {
        d.apply_token(t);
    }
    if let Some(r) = http_fault(d.fault, &d) {
        return r;
    }
    // (1) A known bearer.
    let Some(bearer) = ctx.bearer() else {
        return detail(StatusCode::UNAUTHORIZED, NOT_AUTHENTICATED);
    };
    let Some(ident) = sh.identity(bearer) else {
        return detail(StatusCode::UNAUTHORIZED, NOT_AUTHENTICATED);
    };
    // (2) The current front-end version.
    let fe = lock(&sh.state).fe_version.clone();
    if ctx.header("x-fe-version") != Some(fe.as_str()) {
        return if sh.cfg.fe_inline_426 {
            inline_error(&d, CLIENT_CHECK_FAILED, 426)
        } else {
            detail(StatusCode::UPGRADE_REQUIRED, FE_TOO_OLD)
        };
    }
    // (3) The query fields.
    let pairs = query_pairs(&ctx.slot.query);
    let q = match check_query(&pairs, bearer) {
        Ok(q) => q,
        Err(why) => return bad_request(&why),
    };
    // (4) The signature.
    let Some(sig) = ctx.header("x-signature") else {
        return missing(&["header", "x-signature"]);
    };
    if ctx.slot.json.is_none() {
        return json_reply(
            StatusCode::UNPROCESSABLE_ENTITY,
            &json!({"detail": [{"type": "json_invalid", "loc": ["body"], "msg": "JSON decode error", "input": null}]}),
        );
    }
    if now_ms().abs_diff(q.ts) > sh.cfg.signature_window.as_millis() as u64 {
        return bad_request(SIGNATURE_EXPIRED);
    }
    let prompt = body
        .get("signature_prompt")
        .and_then(Value::as_str)
        .unwrap_or("");
    let want = signature_of(&q.request_id, &q.ts_text, q.ts, &ident.id, prompt);
    let sig_ok: bool = want.as_bytes().ct_eq(sig.trim().as_bytes()).into();
    if q.user_id != ident.id || !sig_ok {
        return bad_request(SIGNATURE_FAILED);
    }
    // (5) The toggles.
    if sh.cfg.require_captcha {
        let proof = body
            .get("captcha_verify_param")
            .and_then(Value::as_str)
            .filter(|p| !p.is_empty());
        let Some(proof) = proof else {
            return json_reply(
                StatusCode::BAD_REQUEST,
                &json!({"detail": "captcha_verify_param is required", "code": "CAPTCHA_REQUIRED"}),
            );
        };
        let accepted = &sh.cfg.captcha_proofs;
        if !accepted.is_empty() && !accepted.iter().any(|p| p == proof) {
            return json_reply(
                StatusCode::BAD_REQUEST,
                &json!({"detail": "captcha verification failed", "code": "CAPTCHA_FAILED"}),
            );
        }
    }
    if sh.cfg.require_chat {
        let chat_id = body.get("chat_id").and_then(Value::as_str).unwrap_or("");
        let owned = lock(&sh.state)
            .chats
            .get(chat_id)
            .is_some_and(|c| c.owner == ident.id);
        if !owned {
            return detail(StatusCode::NOT_FOUND, "Chat not found");
        }
    }
    let model = body.get("model").and_then(Value::as_str).unwrap_or("");
    if ident.role == Role::Guest && !sh.cfg.guest_models.iter().any(|m| m == model) {
        return inline_error(&d, MODEL_NOT_AVAILABLE, 403);
    }
    if !sh.cfg.models.iter().any(|m| m == model) {
        return bad_request("Model not found");
    }
    // (6) The stream.
    let thinking = match d.thinking {
        Thinking::On => true,
        Thinking::Off => false,
        Thinking::Auto => body
            .pointer("/features/enable_thinking")
            .and_then(Value::as_bool)
            .unwrap_or(false),
    };
    let (reasoning, mut answer) = stream::reply_for(&text, &d);
    if let Some(a) = stream::tool_answer(&body, &d) {
        answer = a;
    }
    let usage = stream::usage(
        stream::prompt_chars(messages),
        &reasoning,
        &answer,
        thinking,
    );
    let (events, cut) = stream::script(&reasoning, &answer, thinking, &d, usage);
    start_stream(ctx, d, events, cut)
}

fn start_stream(ctx: &Ctx, d: ZaiDirectives, events: Vec<Bytes>, cut: bool) -> Reply {
    let (tx, rx) = mpsc::channel(4);
    let guard = ActiveGuard::new(ctx.shared.active.clone());
    ctx.slot.streaming.store(true, Ordering::SeqCst);
    tokio::spawn(write_stream(
        ctx.shared.clone(),
        ctx.slot.clone(),
        d,
        events,
        cut,
        tx,
    ));
    sse_head(Response::new(MockBody::channel(rx, guard)))
}

/// Sleeps; false when the reader went away first.
async fn sleep_or_closed(d: Duration, tx: &Tx) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = tx.closed() => false,
    }
}

/// Sends one event, in `chunk`-byte writes when asked; false when the reader went away.
async fn send_event(ev: &Bytes, chunk: usize, tx: &Tx) -> bool {
    if chunk == 0 || chunk >= ev.len() {
        return tx.send(Ok(ev.clone())).await.is_ok();
    }
    let mut at = 0;
    while at < ev.len() {
        let end = (at + chunk).min(ev.len());
        if tx.send(Ok(ev.slice(at..end))).await.is_err() {
            return false;
        }
        at = end;
        if at < ev.len() && !sleep_or_closed(Duration::from_millis(1), tx).await {
            return false;
        }
    }
    true
}

async fn write_stream(
    shared: Arc<Shared>,
    slot: Arc<Slot>,
    d: ZaiDirectives,
    events: Vec<Bytes>,
    cut: bool,
    tx: Tx,
) {
    let gate = d.gate.as_deref();
    for (i, ev) in events.iter().enumerate() {
        if let Some(g) = gate {
            if i == d.gate_after && !shared.wait_gate(g, &tx).await {
                return;
            }
        }
        if i > 0 && d.delay_ms > 0 && !sleep_or_closed(Duration::from_millis(d.delay_ms), &tx).await
        {
            return;
        }
        if !send_event(ev, d.chunk, &tx).await {
            return;
        }
        slot.events.fetch_add(1, Ordering::SeqCst);
    }
    if let Some(g) = gate {
        if d.gate_after >= events.len() && !shared.wait_gate(g, &tx).await {
            return;
        }
    }
    if cut {
        // Let hyper write what is queued, then abort the body.
        while tx.capacity() < tx.max_capacity() {
            if !sleep_or_closed(Duration::from_millis(1), &tx).await {
                return;
            }
        }
        if sleep_or_closed(Duration::from_millis(20), &tx).await {
            let _ = tx.send(Err(io::Error::other("mock fault: cut"))).await;
        }
    } else {
        slot.completed.store(true, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn fe_versions() {
        assert_eq!(normalize_fe("1.2.3"), "prod-fe-1.2.3");
        assert_eq!(normalize_fe("prod-fe-1.2.3"), "prod-fe-1.2.3");
        assert_eq!(older_fe("prod-fe-1.0.999"), "prod-fe-1.0.99");
        assert_eq!(older_fe("prod-fe-1.0.241"), "prod-fe-1.0.99");
        assert_eq!(older_fe("prod-fe-1.1.5"), "prod-fe-1.1.4");
        assert_eq!(older_fe("prod-fe-1.1.0"), "prod-fe-1.0.99");
        assert_eq!(older_fe("prod-fe-2.0.0"), "prod-fe-1.99.99");
        assert_eq!(older_fe("custom"), "prod-fe-0.0.1");
    }

    #[test]
    fn multipart() {
        let body = b"--XX\r\nContent-Disposition: form-data; name=\"other\"\r\n\r\nv\r\n--XX\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\nContent-Type: image/png\r\n\r\n\x89PNG\r\n--XX--\r\n";
        let (n, t, b) = multipart_file("multipart/form-data; boundary=XX", body).unwrap();
        assert_eq!(
            (n.as_str(), t.as_str(), &b[..]),
            ("a.png", "image/png", &b"\x89PNG"[..])
        );
        assert!(multipart_file("multipart/form-data", body).is_none());
    }
}
