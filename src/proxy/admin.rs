//! Admin routes (`/admin/*`) and the dashboard page (`/admin`).
//!
//! Every route, the page included, first passes [`crate::admin_guard::check`]: no foreign
//! `Host` (DNS rebinding), no cross-site request, no forwarded request without a key, JSON
//! bodies only. Then every API route needs `admin.key` (Bearer, constant-time compare); with
//! no key configured they answer only to loopback clients. Tokens always appear masked.
//! Paths and JSON shapes of `/admin/tokens/*` follow the seed proxies
//! (k2think-protocol.md §5.4), with per-token state added.

use std::time::Instant;

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use serde_json::{json, Value};

use super::{respond, App, Ctx, Snapshot};
use crate::admin_guard;
use crate::core::error::ApiError;
use crate::pool::{PoolStats, Source};
use crate::secret::{ct_eq, Secret};

const DASHBOARD: &str = include_str!("dashboard.html");

pub async fn dispatch(app: &App, snap: &Snapshot, session: &mut Session, ctx: &mut Ctx) {
    ctx.route = "admin";
    let method = session.req_header().method.as_str().to_string();
    let path = session
        .req_header()
        .uri
        .path()
        .trim_end_matches('/')
        .to_string();
    let req = session.req_header();
    let authority = req.uri.authority().map(|a| a.as_str());
    if let Err(e) = admin_guard::check(&req.method, authority, &req.headers, &snap.config.admin) {
        return respond::error(session, ctx, &e).await;
    }
    if path == "/admin" {
        return page(snap, session, ctx).await;
    }
    if let Err(e) = authorize(snap, session) {
        return respond::error(session, ctx, &e).await;
    }
    let segments: Vec<&str> = path.trim_start_matches("/admin/").split('/').collect();
    let reply = match (method.as_str(), segments.as_slice()) {
        ("POST", ["config", "reload"]) => {
            let attempt = app.reload("admin").await;
            let code = if attempt.result == "success" {
                200
            } else {
                422
            };
            Reply(code, json!({"status": attempt.result, "data": attempt}))
        }
        ("GET", ["config", "status"]) => ok_data(json!(app.reload_status())),
        ("GET", ["providers"]) => ok_data(json!(app.providers_status(snap))),
        ("GET", ["fleet"]) => ok_data(super::fleet::view(app)),
        ("POST", ["fleet", "reload"]) => fleet_reload(app, snap).await,
        ("GET", ["tokens", "stats"]) => ok_data(stats_json(&app.pool.stats(Instant::now()))),
        ("POST", ["tokens", "reset-all"]) => {
            app.pool.reset_all();
            ok_message("All tokens reset", None)
        }
        ("POST", ["tokens", "reset", i]) => by_index(app, i, |id| app.pool.reset(id), "reset"),
        ("POST", ["tokens", "disable", i]) => {
            by_index(app, i, |id| app.pool.disable(id), "disabled")
        }
        ("DELETE", ["tokens", i]) => remove(app, i),
        ("POST", ["tokens"]) => add(app, session).await,
        ("POST", ["tokens", "reload"]) => {
            let attempt = app.reload("admin").await;
            let data = stats_json(&app.pool.stats(Instant::now()));
            if attempt.result == "success" {
                ok_message(
                    "Tokens reloaded from the configuration and the tokens file",
                    Some(data),
                )
            } else {
                Reply(
                    500,
                    json!({"status": "error", "message": attempt.error, "data": data}),
                )
            }
        }
        ("GET", ["tokens", "consecutive-failures"]) => {
            let s = app.pool.stats(Instant::now());
            ok_data(json!({
                "consecutive_failures": s.consecutive_failures,
                "threshold": s.consecutive_threshold,
                "consecutive_upstream_errors": s.consecutive_auth_failures,
                "upstream_error_threshold": s.consecutive_threshold,
                "last_upstream_error_time": s.last_auth_failure,
                "token_pool_size": s.total,
                "auto_refresh_enabled": app.updater_enabled() && s.total > 2,
                "last_check": "real-time",
            }))
        }
        ("POST", ["tokens", "reset-consecutive"]) => {
            let previous = app.pool.reset_consecutive();
            ok_message(
                "Failure counters reset",
                Some(json!({"previous_count": previous, "current_count": 0})),
            )
        }
        ("GET", ["tokens", "updater", "status"]) => {
            if app.updater_enabled() {
                ok_data(json!(app.updater_status()))
            } else {
                Reply(
                    200,
                    json!({"status": "disabled", "message": "No updater.accounts_file is configured"}),
                )
            }
        }
        ("POST", ["tokens", "updater", "force-update"]) => {
            if app.updater_enabled() {
                app.force_update();
                ok_message(
                    "A refresh of every account has started",
                    Some(stats_json(&app.pool.stats(Instant::now()))),
                )
            } else {
                Reply(
                    400,
                    json!({"status": "error", "message": "No updater.accounts_file is configured"}),
                )
            }
        }
        _ => {
            let known = matches!(
                segments.as_slice(),
                ["config", "reload" | "status"] | ["tokens", ..] | ["providers"] | ["fleet", ..]
            );
            let e = if known {
                ApiError::new(
                    405,
                    "invalid_request_error",
                    "method_not_allowed",
                    format!("{method} is not allowed on {path}"),
                )
            } else {
                ApiError::new(
                    404,
                    "invalid_request_error",
                    "not_found",
                    format!("Unknown admin path {path}"),
                )
            };
            return respond::error(session, ctx, &e).await;
        }
    };
    let Reply(code, body) = reply;
    let _ = respond::json(session, ctx, code, body.to_string().into_bytes(), &[]).await;
}

struct Reply(u16, Value);

fn ok_data(data: Value) -> Reply {
    Reply(200, json!({"status": "success", "data": data}))
}

fn ok_message(message: &str, data: Option<Value>) -> Reply {
    let mut v = json!({"status": "success", "message": message});
    if let Some(d) = data {
        v["data"] = d;
    }
    Reply(200, v)
}

fn bad_index(i: &str) -> Reply {
    Reply(
        400,
        json!({"status": "error", "message": format!("invalid token index: {i}")}),
    )
}

/// The seed's stats shape, plus the per-token list.
fn stats_json(s: &PoolStats) -> Value {
    let mut distribution = serde_json::Map::new();
    for t in &s.tokens {
        let n = distribution
            .entry(t.strikes.to_string())
            .or_insert(json!(0));
        *n = json!(n.as_u64().unwrap_or(0) + 1);
    }
    json!({
        "total_tokens": s.total,
        "active_tokens": s.active,
        "inactive_tokens": s.cooling + s.disabled,
        "cooling_tokens": s.cooling,
        "disabled_tokens": s.disabled,
        "current_index": s.current_index,
        "failure_distribution": distribution,
        "max_failures": s.max_failures,
        "consecutive_failures": s.consecutive_failures,
        "consecutive_failure_threshold": s.consecutive_threshold,
        "consecutive_upstream_errors": s.consecutive_auth_failures,
        "upstream_error_threshold": s.consecutive_threshold,
        "tokens": s.tokens,
    })
}

fn by_index(app: &App, i: &str, act: impl FnOnce(u64) -> bool, done: &str) -> Reply {
    match i.parse::<usize>().ok().and_then(|n| app.pool.id_at(n)) {
        Some(id) if act(id) => ok_message(&format!("Token {i} {done}"), None),
        _ => bad_index(i),
    }
}

fn remove(app: &App, i: &str) -> Reply {
    let Some(id) = i.parse::<usize>().ok().and_then(|n| app.pool.id_at(n)) else {
        return bad_index(i);
    };
    let Some((token, source)) = app.pool.remove(id) else {
        return bad_index(i);
    };
    let note = if source == Source::Inline {
        Some("this token comes from pool.tokens in the config file; remove it there too, or it returns on the next reload".to_string())
    } else {
        None
    };
    match app.persist_tokens() {
        Ok(persisted) => Reply(
            200,
            json!({
                "status": "success",
                "message": format!("Token {} removed", token.masked()),
                "data": {"persisted": persisted, "note": note},
            }),
        ),
        Err(e) => Reply(500, json!({"status": "error", "message": e})),
    }
}

async fn add(app: &App, session: &mut Session) -> Reply {
    let mut body = Vec::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(c)) if body.len() + c.len() <= 64 * 1024 => body.extend_from_slice(&c),
            Ok(Some(_)) => {
                return Reply(413, json!({"status": "error", "message": "body too large"}))
            }
            Ok(None) => break,
            Err(_) => {
                return Reply(
                    400,
                    json!({"status": "error", "message": "could not read the body"}),
                )
            }
        }
    }
    let token = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| {
            v.get("token")
                .and_then(Value::as_str)
                .map(str::trim)
                .map(str::to_string)
        })
        .filter(|t| !t.is_empty() && !t.chars().any(char::is_whitespace));
    let Some(token) = token else {
        return Reply(
            400,
            json!({"status": "error", "message": "send {\"token\": \"<token>\"} (no whitespace)"}),
        );
    };
    let secret = Secret::new(token);
    let masked = secret.masked();
    let Some(id) = app.pool.add(secret, Source::File) else {
        return Reply(
            409,
            json!({"status": "error", "message": "this token is already in the pool"}),
        );
    };
    match app.persist_tokens() {
        Ok(persisted) => Reply(
            200,
            json!({
                "status": "success",
                "message": format!("Token {masked} added"),
                "data": {"id": id, "persisted": persisted},
            }),
        ),
        Err(e) => Reply(500, json!({"status": "error", "message": e})),
    }
}

/// The dashboard: a static page that asks for the admin key in the browser.
async fn page(snap: &Snapshot, session: &mut Session, ctx: &mut Ctx) {
    if snap.config.admin.key.is_none() {
        if let Err(e) = authorize(snap, session) {
            return respond::error(session, ctx, &e).await;
        }
    }
    let body = Bytes::from_static(DASHBOARD.as_bytes());
    let head = (|| {
        let mut h = ResponseHeader::build(200, Some(5))?;
        h.insert_header("content-type", "text/html; charset=utf-8")?;
        h.insert_header("content-length", body.len().to_string())?;
        h.insert_header("cache-control", "no-store")?;
        h.insert_header(
            "content-security-policy",
            "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; frame-ancestors 'none'",
        )?;
        h.insert_header("x-request-id", ctx.request_id.as_str())?;
        Ok::<_, Box<pingora::Error>>(h)
    })();
    let Ok(head) = head else { return };
    ctx.status = 200;
    ctx.bytes_out += body.len();
    if session
        .write_response_header(Box::new(head), false)
        .await
        .is_ok()
    {
        let _ = session.write_response_body(Some(body), true).await;
    }
}

fn authorize(snap: &Snapshot, session: &Session) -> Result<(), ApiError> {
    match snap.config.admin.key.as_deref() {
        Some(key) => {
            let presented = session
                .req_header()
                .headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().split_once(' '))
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                .map(|(_, k)| k.trim())
                .unwrap_or("");
            if ct_eq(presented.as_bytes(), key.as_bytes()) {
                Ok(())
            } else {
                Err(ApiError::new(
                    401,
                    "invalid_request_error",
                    "invalid_admin_key",
                    "The admin API needs `Authorization: Bearer <admin.key>`".to_string(),
                ))
            }
        }
        None => {
            let loopback = session
                .client_addr()
                .and_then(|a| a.as_inet())
                .is_some_and(|a| a.ip().is_loopback());
            if loopback {
                Ok(())
            } else {
                Err(ApiError::new(
                    403,
                    "invalid_request_error",
                    "admin_loopback_only",
                    "No admin.key is configured, so the admin API answers only on loopback"
                        .to_string(),
                ))
            }
        }
    }
}

/// `POST /admin/fleet/reload`: ask every instance of the fleet to re-read its own config
/// file (this one included, through the same event).
async fn fleet_reload(app: &App, snap: &super::Snapshot) -> Reply {
    let (Some(state), Some(settings)) = (&app.fleet, &snap.config.fleet) else {
        return Reply(
            400,
            json!({"status": "error", "message": "No fleet section is configured: reload this instance with POST /admin/config/reload"}),
        );
    };
    match crate::fleet::link::publish_reload(state, settings.background_timeout).await {
        Ok(heard) => ok_message(
            &format!("Asked the fleet to reload ({heard} instance(s) listening)"),
            None,
        ),
        Err(e) => Reply(
            503,
            json!({"status": "error", "message": format!("Redis is not reachable: {e}")}),
        ),
    }
}
