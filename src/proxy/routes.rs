//! Routing, client authentication and the local routes (`/health`, `/v1/models`).

use std::time::{SystemTime, UNIX_EPOCH};

use pingora::proxy::Session;
use serde_json::json;

use super::{exchange, respond, App, Ctx, Snapshot};
use crate::core::error::ApiError;
use crate::secret::ct_eq;
use crate::surface::chat::files::percent_decode;
use crate::surface::Surface;

pub async fn dispatch(app: &App, snap: &Snapshot, session: &mut Session, ctx: &mut Ctx) {
    let method = session.req_header().method.as_str().to_string();
    let path = session.req_header().uri.path().to_string();
    let route = match path.as_str() {
        "/" => Route::Root,
        "/health" => Route::Health,
        "/v1/models" => Route::Models,
        "/v1/chat/completions" => Route::Chat,
        "/v1/messages" => Route::Messages,
        "/v1/messages/count_tokens" => Route::CountTokens,
        "/v1/responses" => Route::Responses,
        p if p.starts_with("/v1/models/") => Route::Model,
        "/ready" => Route::Ready,
        p if p == "/admin" || p.starts_with("/admin/") => {
            return super::admin::dispatch(app, snap, session, ctx).await
        }
        _ => {
            ctx.route = "unknown";
            let e = ApiError::new(
                404,
                "invalid_request_error",
                "not_found",
                format!("Unknown path {path}; this server serves /v1/chat/completions, /v1/responses, /v1/messages, /v1/messages/count_tokens, /v1/models and /health"),
            );
            return respond::error(session, ctx, &e).await;
        }
    };
    ctx.route = route.name();
    ctx.surface = match route {
        Route::Messages | Route::CountTokens => Surface::Messages,
        Route::Responses => Surface::Responses,
        _ => Surface::Chat,
    };
    let allowed = route.method();
    if method != allowed && !(allowed == "GET" && method == "HEAD") {
        let e = ApiError::new(
            405,
            "invalid_request_error",
            "method_not_allowed",
            format!("{method} is not allowed on {path}; use {allowed}"),
        );
        ctx.outcome = "rejected";
        return respond::error_with(session, ctx, &e, &[("allow", allowed.to_string())]).await;
    }
    if !matches!(route, Route::Root | Route::Health | Route::Ready) {
        if let Err(e) = authenticate(snap, session, ctx) {
            return respond::error(session, ctx, &e).await;
        }
    }
    match route {
        // Agents (Claude Code) probe the base URL before they start.
        Route::Root => {
            let body = json!({
                "name": "k2proxy",
                "version": env!("CARGO_PKG_VERSION"),
                "status": "ok",
                "apis": ["/v1/chat/completions", "/v1/messages", "/v1/responses", "/v1/models"],
            });
            let _ = respond::json(session, ctx, 200, body.to_string().into_bytes(), &[]).await;
        }
        Route::Health => {
            let body = json!({
                "status": "ok",
                "mode": if snap.mode == crate::config::UpstreamMode::User { "user" } else { "guest" },
            });
            let _ = respond::json(session, ctx, 200, body.to_string().into_bytes(), &[]).await;
        }
        Route::Ready => {
            let stats = app.pool().stats(std::time::Instant::now());
            let user = snap.mode == crate::config::UpstreamMode::User;
            let providers = app.providers_status(snap);
            // Ready when every provider that serves a model is.
            let ready = providers.values().all(|p| {
                p["ready"] == json!(true) || p["models"].as_array().is_some_and(|m| m.is_empty())
            });
            let body = json!({
                "status": if ready { "ready" } else { "not_ready" },
                "mode": if user { "user" } else { "guest" },
                "tokens": {"total": stats.total, "active": stats.active, "cooling": stats.cooling, "disabled": stats.disabled},
                "providers": providers,
            });
            let code = if ready { 200 } else { 503 };
            let _ = respond::json(session, ctx, code, body.to_string().into_bytes(), &[]).await;
        }
        Route::Models => {
            let data: Vec<_> = snap.config.models.iter().map(model_json).collect();
            let body = json!({"object": "list", "data": data});
            let _ = respond::json(session, ctx, 200, body.to_string().into_bytes(), &[]).await;
        }
        Route::Model => {
            let name =
                String::from_utf8_lossy(&percent_decode(&path["/v1/models/".len()..])).into_owned();
            match snap.model(&name) {
                Some(m) => {
                    let mut v = model_json(m);
                    v["id"] = json!(name);
                    let _ = respond::json(session, ctx, 200, v.to_string().into_bytes(), &[]).await;
                }
                None => respond::error(session, ctx, &model_not_found(snap, &name)).await,
            }
        }
        Route::Chat | Route::Messages | Route::Responses => {
            exchange::handle(app, snap, session, ctx).await
        }
        Route::CountTokens => exchange::count_tokens(snap, session, ctx).await,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Root,
    Health,
    Ready,
    Models,
    Model,
    Chat,
    Messages,
    CountTokens,
    Responses,
}

impl Route {
    fn name(self) -> &'static str {
        match self {
            Route::Root => "root",
            Route::Health => "health",
            Route::Ready => "ready",
            Route::Models => "models",
            Route::Model => "model",
            Route::Chat => "chat",
            Route::Messages => "messages",
            Route::CountTokens => "count_tokens",
            Route::Responses => "responses",
        }
    }

    fn method(self) -> &'static str {
        match self {
            Route::Chat | Route::Messages | Route::CountTokens | Route::Responses => "POST",
            _ => "GET",
        }
    }
}

/// Check `Authorization: Bearer <key>` (or Anthropic's `x-api-key: <key>`) against every
/// configured key in constant time.
fn authenticate(snap: &Snapshot, session: &Session, ctx: &mut Ctx) -> Result<(), ApiError> {
    if snap.keys.is_empty() {
        return Ok(());
    }
    let headers = &session.req_header().headers;
    let (header, bearer) = match headers.get("authorization") {
        Some(v) => (Some(v), true),
        None => (headers.get("x-api-key"), false),
    };
    let presented = header
        .and_then(|v| v.to_str().ok())
        .and_then(|v| match bearer {
            true => {
                let (scheme, rest) = v.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
            }
            false => Some(v.trim()),
        })
        .unwrap_or("");
    // Compare with every key, without stopping at the first match.
    let mut found: Option<&str> = None;
    for (name, key) in &snap.keys {
        if ct_eq(presented.as_bytes(), key.expose().as_bytes()) && found.is_none() {
            found = Some(name);
        }
    }
    match found {
        Some(name) => {
            ctx.key_name = Some(name.to_string());
            Ok(())
        }
        None => Err(ApiError::new(
            401,
            "invalid_request_error",
            "invalid_api_key",
            if header.is_none() {
                "Missing API key: send it as `Authorization: Bearer <key>` or `x-api-key: <key>`"
                    .to_string()
            } else {
                "Incorrect API key provided".to_string()
            },
        )),
    }
}

fn created() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn model_json(m: &crate::config::ModelEntry) -> serde_json::Value {
    json!({
        "id": m.id,
        "object": "model",
        "created": created(),
        "owned_by": m.owned_by,
    })
}

pub fn model_not_found(snap: &Snapshot, name: &str) -> ApiError {
    let ids: Vec<&str> = snap.config.models.iter().map(|m| m.id.as_str()).collect();
    ApiError {
        param: Some("model".to_string()),
        ..ApiError::new(
            404,
            "invalid_request_error",
            "model_not_found",
            format!(
                "The model `{name}` does not exist. Available models: {}",
                ids.join(", ")
            ),
        )
    }
}
