//! `k2proxy probe`: the checks' exchanges with the configured upstream, made as requests
//! make theirs (the same peer, request head and body builder, through Pingora's
//! `Connector`). What they found is judged and rendered in [`crate::probe`].
//!
//! Checks run one after the other, each within its own timeout: `/api/models`, then a
//! streamed and a non-streamed chat per distinct upstream model id. In user mode they send
//! the first configured token (`pool.tokens`, else the first line of `pool.tokens_file`).

use std::time::{Duration, Instant};

use bytes::Bytes;
use pingora::connectors::http::Connector;
use pingora::connectors::ConnectorOptions;
use pingora::http::{Method, RequestHeader};
use pingora::protocols::http::client::HttpSession;

use super::{upstream, Snapshot};
use crate::config::{Config, ModelEntry, UpstreamMode};
use crate::probe::{
    chat_check_name, chat_request_body, AnswerObserver, BodyEnd, Check, Report, Target,
};
use crate::secret::Secret;
use crate::surface::chat::request::ChatRequest;
use crate::tokens_file;

/// After an end marker, how long to wait for the body to end (as requests do); a stall or
/// cut after it is a clean end.
const AFTER_DONE_WAIT: Duration = Duration::from_secs(1);
/// How much of an error body is read for its detail.
const ERROR_BODY_LIMIT: usize = 4096;
/// Largest model list read.
const MODELS_LIMIT: usize = 1 << 20;
const MODELS_PATH: &str = "/api/models";

/// How to probe.
#[derive(Debug, Clone)]
pub struct ProbeOptions {
    /// Each check's own limit, from connect to the end of the answer.
    pub timeout: Duration,
    /// Public model ids (or aliases) to check; empty for all.
    pub models: Vec<String>,
}

/// Run every check against the upstream `config` names. `Err` only for a configuration
/// or an option that cannot be probed with (a bad `upstream.base_url`, an unknown
/// `--model`); everything the upstream does is in the report.
pub async fn run(config: Config, opts: &ProbeOptions) -> Result<Report, String> {
    let snap = Snapshot::new(config)?;
    let targets = chat_targets(&snap, &opts.models)?;
    let user = snap.mode == UpstreamMode::User;
    let token = user.then(|| first_token(&snap.config));
    let mut report = Report {
        upstream: snap.config.upstream.base_url.clone(),
        mode: if user { "user" } else { "guest" },
        token: match &token {
            Some(Ok(t)) => Some(t.masked()),
            _ => None,
        },
        checks: Vec::new(),
    };
    let wanted: Vec<String> = targets.iter().map(|t| t.upstream.clone()).collect();
    let token = match token {
        Some(Err(why)) => {
            report
                .checks
                .push(Check::failed("token", Target::Token, why, Duration::ZERO));
            let skip = || "not run: no upstream token (see the token check)".to_string();
            report
                .checks
                .push(Check::skipped("models", Target::Models { wanted }, skip()));
            for t in &targets {
                for stream in [true, false] {
                    let name = chat_check_name(&t.upstream, stream);
                    report
                        .checks
                        .push(Check::skipped(&name, t.target(stream), skip()));
                }
            }
            return Ok(report);
        }
        Some(Ok(t)) => Some(t),
        None => None,
    };
    let server_conf = super::server_conf(&snap.config);
    let prober = Prober {
        snap: &snap,
        connector: Connector::new(Some(ConnectorOptions::from_server_conf(&server_conf))),
        resolver: upstream::Resolver::default(),
        token: token.as_ref(),
        timeout: opts.timeout,
    };
    report.checks.push(prober.models(wanted).await);
    for t in &targets {
        for stream in [true, false] {
            report.checks.push(prober.chat(t, stream).await);
        }
    }
    if let Some(t) = &token {
        report.scrub(t.expose(), &t.masked());
    }
    Ok(report)
}

/// One distinct upstream model id, the public ids that use it, and the entry its
/// requests are built from (the first of them).
struct ChatTarget<'s> {
    upstream: String,
    public_ids: Vec<String>,
    entry: &'s ModelEntry,
}

impl ChatTarget<'_> {
    fn target(&self, stream: bool) -> Target {
        Target::Chat {
            upstream_model: self.upstream.clone(),
            public_ids: self.public_ids.clone(),
            stream,
        }
    }
}

/// The distinct upstream ids of the configured models, in config order; with `only`,
/// of those models only (public ids or aliases, each of which must be configured).
fn chat_targets<'s>(snap: &'s Snapshot, only: &[String]) -> Result<Vec<ChatTarget<'s>>, String> {
    let mut chosen: Vec<&str> = Vec::new();
    for name in only {
        match snap.model(name) {
            Some(m) => chosen.push(m.id.as_str()),
            None => {
                let known: Vec<&str> = snap.config.models.iter().map(|m| m.id.as_str()).collect();
                return Err(format!(
                    "--model {name}: not a configured model (models: {})",
                    known.join(", ")
                ));
            }
        }
    }
    let mut targets: Vec<ChatTarget<'s>> = Vec::new();
    for m in &snap.config.models {
        if !chosen.is_empty() && !chosen.contains(&m.id.as_str()) {
            continue;
        }
        match targets.iter_mut().find(|t| t.upstream == m.upstream) {
            Some(t) => t.public_ids.push(m.id.clone()),
            None => targets.push(ChatTarget {
                upstream: m.upstream.clone(),
                public_ids: vec![m.id.clone()],
                entry: m,
            }),
        }
    }
    Ok(targets)
}

/// The token user mode probes with: the first of `pool.tokens`, else the first token line
/// of `pool.tokens_file`. `Err` says what to configure.
fn first_token(config: &Config) -> Result<Secret, String> {
    // As the pool loads them: inline tokens first, then the file's.
    if let Some(t) = config.pool.tokens.first() {
        return Ok(Secret::new(t.as_str()));
    }
    let file_note = match config.pool.tokens_file.as_deref() {
        None => String::new(),
        Some(path) => match std::fs::read_to_string(path) {
            Ok(text) => match tokens_file::parse(&text).into_iter().next() {
                Some((t, _)) => return Ok(Secret::new(t)),
                None => format!(" ({path} holds no token line)"),
            },
            Err(e) => format!(" ({path}: {e})"),
        },
    };
    let updater = if config.updater.accounts_file.is_some() {
        "; the tokens that updater.accounts_file sign-ins get are kept in pool.tokens_file once the proxy has run"
    } else {
        ""
    };
    Err(format!(
        "upstream mode is user but there is no token to probe with: add one to pool.tokens, or a token line to pool.tokens_file{file_note}{updater}"
    ))
}

struct Prober<'a> {
    snap: &'a Snapshot,
    connector: Connector,
    resolver: upstream::Resolver,
    token: Option<&'a Secret>,
    timeout: Duration,
}

/// The status and lower-case content type of a response head.
fn head_of(up: &HttpSession) -> (u16, String) {
    match up.response_header() {
        Some(h) => (
            h.status.as_u16(),
            h.headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_ascii_lowercase(),
        ),
        None => (0, String::new()),
    }
}

/// Why a body read stopped before its end.
enum Stopped {
    Timeout,
    Broken(String),
}

/// Read the body until its end, `limit` bytes, or `deadline`.
async fn read_body(
    up: &mut HttpSession,
    deadline: tokio::time::Instant,
    limit: usize,
) -> Result<Vec<u8>, (Vec<u8>, Stopped)> {
    let mut buf = Vec::new();
    while buf.len() < limit {
        match tokio::time::timeout_at(deadline, up.read_response_body()).await {
            Err(_) => return Err((buf, Stopped::Timeout)),
            Ok(Err(e)) => return Err((buf, Stopped::Broken(e.etype().as_str().to_string()))),
            Ok(Ok(None)) => break,
            Ok(Ok(Some(b))) => buf.extend_from_slice(&b),
        }
    }
    Ok(buf)
}

impl Prober<'_> {
    fn no_head(&self) -> String {
        format!(
            "no response head within {} (--timeout)",
            humantime::format_duration(self.timeout)
        )
    }

    /// Connect, send, and read the response head.
    async fn open(&self, req: RequestHeader, body: Option<Bytes>) -> Result<HttpSession, String> {
        let target = &self.snap.target;
        let addr = self.resolver.resolve(&target.host, target.port).await?;
        let peer = upstream::peer(target, &self.snap.k2think.timing, addr);
        let (mut up, _) = self
            .connector
            .get_http_session(&peer)
            .await
            .map_err(|e| format!("cannot connect to {addr}: {}", e.etype().as_str()))?;
        let failed =
            |e: Box<pingora::Error>| format!("the exchange failed: {}", e.etype().as_str());
        up.write_request_header(Box::new(req))
            .await
            .map_err(failed)?;
        if let Some(b) = body {
            up.write_request_body(b, true).await.map_err(failed)?;
        }
        up.finish_request_body().await.map_err(failed)?;
        up.read_response_header().await.map_err(failed)?;
        Ok(up)
    }

    /// `GET /api/models`, with the chat requests' headers and bearer.
    async fn models(&self, wanted: Vec<String>) -> Check {
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + self.timeout;
        let target = Target::Models {
            wanted: wanted.clone(),
        };
        let head = self.snap.k2think.head(self.token, "", 0, false);
        let req = match head.map(upstream::pingora_head) {
            Ok(mut req) => {
                req.set_method(Method::GET);
                req.set_uri(http::Uri::from_static(MODELS_PATH));
                req.remove_header("content-type");
                req.remove_header("content-length");
                req
            }
            Err(why) => {
                return Check::failed("models", target, why, started.elapsed());
            }
        };
        let mut up = match tokio::time::timeout_at(deadline, self.open(req, None)).await {
            Err(_) => return Check::failed("models", target, self.no_head(), started.elapsed()),
            Ok(Err(why)) => return Check::failed("models", target, why, started.elapsed()),
            Ok(Ok(up)) => up,
        };
        let (status, content_type) = head_of(&up);
        let limit = if (200..300).contains(&status) {
            MODELS_LIMIT
        } else {
            ERROR_BODY_LIMIT
        };
        let body = match read_body(&mut up, deadline, limit).await {
            Ok(b) => b,
            Err((b, _)) if !(200..300).contains(&status) => b,
            Err((_, stopped)) => {
                let why = match stopped {
                    Stopped::Timeout => format!(
                        "HTTP {status}, but the model list did not arrive within {} (--timeout)",
                        humantime::format_duration(self.timeout)
                    ),
                    Stopped::Broken(e) => {
                        format!("HTTP {status}, but the connection broke in the model list: {e}")
                    }
                };
                return Check::failed("models", target, why, started.elapsed());
            }
        };
        Check::models(wanted, status, &content_type, &body, started.elapsed())
    }

    /// One chat with the two-turn history, its body built as requests build theirs.
    async fn chat(&self, t: &ChatTarget<'_>, stream: bool) -> Check {
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + self.timeout;
        let name = chat_check_name(&t.upstream, stream);
        let req = match ChatRequest::parse(&chat_request_body(&t.entry.id, stream)) {
            Ok(r) => r,
            Err(e) => {
                let why = format!("cannot build the chat request: {}", e.message);
                return Check::failed(&name, t.target(stream), why, started.elapsed());
            }
        };
        let mut payload = super::exchange::upstream_payload(self.snap, t.entry, &req, None);
        payload.stream = stream;
        let body = Bytes::from(payload.to_bytes());
        let head = self
            .snap
            .k2think
            .head(self.token, &payload.chat_id, body.len(), stream)
            .map(upstream::pingora_head);
        let head = match head {
            Ok(h) => h,
            Err(why) => {
                return Check::failed(&name, t.target(stream), why, started.elapsed());
            }
        };
        let mut up = match tokio::time::timeout_at(deadline, self.open(head, Some(body))).await {
            Err(_) => {
                return Check::failed(&name, t.target(stream), self.no_head(), started.elapsed())
            }
            Ok(Err(why)) => return Check::failed(&name, t.target(stream), why, started.elapsed()),
            Ok(Ok(up)) => up,
        };
        let (status, content_type) = head_of(&up);
        if !(200..300).contains(&status) {
            let body = match read_body(&mut up, deadline, ERROR_BODY_LIMIT).await {
                Ok(b) | Err((b, _)) => b,
            };
            return Check::chat_refused(
                t.target(stream),
                status,
                &content_type,
                &body,
                started.elapsed(),
            );
        }
        let cfg = &self.snap.config;
        let mut seen = AnswerObserver::new(
            &content_type,
            cfg.reasoning.implicit_think,
            cfg.upstream.content_delivery,
        );
        let end = loop {
            let wait = if seen.done_seen() {
                deadline.min(tokio::time::Instant::now() + AFTER_DONE_WAIT)
            } else {
                deadline
            };
            match tokio::time::timeout_at(wait, up.read_response_body()).await {
                Err(_) if seen.done_seen() => break BodyEnd::Silent,
                Err(_) => break BodyEnd::Timeout,
                Ok(Err(e)) => break BodyEnd::Broken(e.etype().as_str().to_string()),
                Ok(Ok(None)) => break BodyEnd::Eof,
                Ok(Ok(Some(b))) => seen.push(&b),
            }
        };
        Check::chat_answered(
            t.target(stream),
            status,
            &content_type,
            seen.finish(end),
            started.elapsed(),
            self.timeout,
        )
    }
}
