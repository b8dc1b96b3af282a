//! Admin routes (`/admin/*`): guarded by `admin.key` (Bearer, constant-time compare); with
//! no key configured they answer only to loopback clients.

use pingora::proxy::Session;
use serde_json::json;

use super::{respond, App, Ctx, Snapshot};
use crate::openai::ApiError;
use crate::secret::ct_eq;

pub async fn dispatch(app: &App, snap: &Snapshot, session: &mut Session, ctx: &mut Ctx) {
    ctx.route = "admin";
    if let Err(e) = authorize(snap, session) {
        return respond::error(session, ctx, &e).await;
    }
    let method = session.req_header().method.as_str().to_string();
    let path = session.req_header().uri.path().to_string();
    let (allowed, body) = match path.as_str() {
        "/admin/config/reload" => (
            "POST",
            (method == "POST").then(|| {
                let attempt = app.reload("admin");
                json!({"status": attempt.result, "data": attempt})
            }),
        ),
        "/admin/config/status" => (
            "GET",
            (method == "GET").then(|| json!({"status": "success", "data": app.reload_status()})),
        ),
        _ => {
            let e = ApiError::new(
                404,
                "invalid_request_error",
                "not_found",
                format!("Unknown admin path {path}"),
            );
            return respond::error(session, ctx, &e).await;
        }
    };
    match body {
        Some(v) => {
            let status = if v["status"] == "failure" { 422 } else { 200 };
            let _ = respond::json(session, ctx, status, v.to_string().into_bytes(), &[]).await;
        }
        None => {
            let e = ApiError::new(
                405,
                "invalid_request_error",
                "method_not_allowed",
                format!("{method} is not allowed on {path}; use {allowed}"),
            );
            ctx.outcome = "rejected";
            let _ = respond::json(
                session,
                ctx,
                405,
                e.body(),
                &[("allow", allowed.to_string())],
            )
            .await;
        }
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
