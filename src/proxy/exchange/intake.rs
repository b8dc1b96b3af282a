//! Intake: the request body read (bounded in size and time), parsed for its surface,
//! checked against the limits, its files and images resolved, and rewritten for the
//! provider.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use log::warn;
use pingora::proxy::Session;

use super::super::timeouts::within;
use super::super::{respond, routes, App, Ctx, Snapshot};
use crate::config::ModelEntry;
use crate::config::{EffortPlacement, HostedTools, PayloadStyle};
use crate::core::error::ApiError;
use crate::pipeline::tools::ToolSet;
use crate::provider::k2think::request::{to_k2think, RewriteOptions};
use crate::provider::k2think::{BodyStyle, KwargsPlacement, Payload};
use crate::surface::chat::files;
use crate::surface::chat::request::ChatRequest;
use crate::surface::responses::{Dialect, Hosted};
use crate::surface::Parsed;

/// A request read, parsed (per its surface), checked and rewritten for K2Think.
pub(super) struct Prepared<'s> {
    pub(super) req: ChatRequest,
    /// Request fields the answer repeats (see [`Parsed::echo`]).
    pub(super) echo: serde_json::Map<String, serde_json::Value>,
    /// See [`Parsed::dialect`].
    pub(super) dialect: Dialect,
    /// See [`Parsed::hosted`].
    pub(super) hosted: Vec<Hosted>,
    pub(super) model: &'s ModelEntry,
    pub(super) tools: Option<Arc<ToolSet>>,
    pub(super) payload: Payload,
    /// See [`Parsed::thinking`].
    pub(super) thinking: Option<bool>,
}

/// Read the body (bounded in size and time), parse it as the request's surface wants
/// (`count_tokens`: an Anthropic token count, which needs no `max_tokens`), check the
/// limits, resolve files and images, find the model and rewrite the request.
pub(super) async fn prepare<'s>(
    snap: &'s Snapshot,
    session: &mut Session,
    ctx: &mut Ctx,
    count_tokens: bool,
) -> Result<Prepared<'s>, ApiError> {
    let body_timeout = snap.config.limits.client_body_timeout;
    let body = match within(body_timeout, read_body(snap, session, ctx)).await {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => return Err(e),
        Err(_) => {
            session.set_keepalive(None);
            return Err(ApiError::new(
                408,
                "invalid_request_error",
                "request_body_timeout",
                format!(
                    "The request body did not arrive within limits.client_body_timeout ({body_timeout:?})"
                ),
            ));
        }
    };
    let Parsed {
        mut req,
        echo,
        origin,
        thinking,
        mut dialect,
        hosted,
    } = ctx.surface.parse(&body, count_tokens)?;
    dialect.summary &= snap.config.responses.reasoning_summary;
    // The checks below see the converted request: `origin` names the client's own field.
    check_limits_and_files(snap, &mut req).map_err(|e| origin.error(e))?;
    ctx.model = Some(req.model.clone());
    let Some(model) = snap.model(&req.model) else {
        return Err(routes::model_not_found(snap, &req.model));
    };
    if !model.images {
        if let Some((i, j)) = files::first_image(&req) {
            return Err(origin.error(ApiError {
                param: Some(format!("messages[{i}].content[{j}]")),
                ..ApiError::new(
                    400,
                    "invalid_request_error",
                    "model_does_not_support_images",
                    format!(
                        "The model `{}` takes text only (models[].images is false for it); remove the image parts or use a model that takes images",
                        req.model
                    ),
                )
            }));
        }
    }
    let tools = ToolSet::from_request(req.tools.as_deref(), req.tool_choice.as_ref())
        .map_err(|(param, message)| origin.error(ApiError::invalid(message, Some(param))))?
        .map(Arc::new);
    let payload = upstream_payload(snap, model, &req, tools.as_deref());
    Ok(Prepared {
        req,
        echo,
        dialect,
        hosted,
        model,
        tools,
        payload,
        thinking,
    })
}

/// `responses.hosted_tools` for the tools of a Responses request that the emulation cannot
/// run: `refuse` answers 400 naming the first; `drop` leaves them out (the request was
/// parsed without them) with one warning naming their types, each counted in
/// `k2proxy_hosted_tools_dropped_total{type}`.
pub(super) fn hosted_tools(
    app: &App,
    snap: &Snapshot,
    ctx: &Ctx,
    hosted: &[Hosted],
) -> Result<(), ApiError> {
    let Some(first) = hosted.first() else {
        return Ok(());
    };
    match snap.config.responses.hosted_tools {
        HostedTools::Refuse => Err(first.refusal()),
        HostedTools::Drop => {
            let mut list = String::new();
            for h in hosted {
                app.metrics
                    .hosted_tools_dropped
                    .with_label_values(&[h.kind])
                    .inc();
                if !list.is_empty() {
                    list.push_str(", ");
                }
                list.push_str(&format!("{} ({})", h.kind, h.at));
            }
            warn!(
                "{}: dropped tools the emulation cannot run: {list} (responses.hosted_tools: drop)",
                ctx.request_id
            );
            Ok(())
        }
    }
}

/// `limits.max_messages`, and the files and `data:` images of a parsed request inlined or
/// checked; errors name the converted request's fields.
pub(super) fn check_limits_and_files(
    snap: &Snapshot,
    req: &mut ChatRequest,
) -> Result<(), ApiError> {
    let limits = &snap.config.limits;
    if req.messages.len() > limits.max_messages {
        return Err(ApiError::invalid(
            format!(
                "Too many messages: {} (the limit is {}, limits.max_messages)",
                req.messages.len(),
                limits.max_messages
            ),
            Some("messages".to_string()),
        ));
    }
    let file_limits = files::Limits {
        max_file_bytes: limits.max_file_bytes.0 as usize,
        max_image_bytes: limits.max_image_bytes.0 as usize,
    };
    files::resolve(req, file_limits).map_err(|e| ApiError {
        param: Some(e.param),
        ..ApiError::new(e.status, "invalid_request_error", e.code, e.message)
    })
}

/// The upstream body for a parsed request to `model`, as the config says to build it
/// (also used by `k2proxy probe`, so it checks exactly what requests send).
pub(in crate::proxy) fn upstream_payload(
    snap: &Snapshot,
    model: &ModelEntry,
    req: &ChatRequest,
    tools: Option<&ToolSet>,
) -> Payload {
    let up_cfg = &snap.config.upstream;
    to_k2think(
        req,
        RewriteOptions {
            upstream_model: &model.upstream,
            stream: up_cfg.stream,
            style: match up_cfg.payload {
                PayloadStyle::Minimal => BodyStyle::Minimal,
                PayloadStyle::Webui => BodyStyle::Webui,
            },
            tools,
            template: snap.config.tools.prompt_template.as_deref(),
            thinking_field: crate::provider::k2think::thinking_field(&up_cfg.thinking_field),
            default_effort: snap.config.reasoning.effort,
            effort_placement: match snap.config.reasoning.effort_placement {
                EffortPlacement::ExtraBody => KwargsPlacement::ExtraBody,
                EffortPlacement::TopLevel => KwargsPlacement::TopLevel,
            },
        },
    )
}

/// `POST /v1/messages/count_tokens`: the prompt's tokens as K2Think would get them (tool
/// instructions included), estimated, since K2Think's tokenizer is not public.
pub async fn count_tokens(snap: &Snapshot, session: &mut Session, ctx: &mut Ctx) {
    match prepare(snap, session, ctx, true).await {
        Ok(p) => {
            let body = serde_json::json!({"input_tokens": crate::provider::k2think::estimate_input_tokens(&p.payload)});
            ctx.outcome = "complete";
            let _ = respond::json(session, ctx, 200, body.to_string().into_bytes(), &[]).await;
        }
        Err(e) => respond::error(session, ctx, &e).await,
    }
}

/// Read the whole request body, refusing more than `limits.max_body_bytes`.
pub(super) async fn read_body(
    snap: &Snapshot,
    session: &mut Session,
    ctx: &mut Ctx,
) -> Result<Bytes, ApiError> {
    let limit = snap.config.limits.max_body_bytes.0 as usize;
    let too_large = || {
        ApiError::new(
            413,
            "invalid_request_error",
            "request_too_large",
            format!("The request body is larger than the limit of {limit} bytes"),
        )
    };
    let headers = &session.req_header().headers;
    let declared = headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let expect_continue = headers
        .get("expect")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
    if declared.is_some_and(|n| n > limit as u64) {
        // Do not read (or drain) what we refuse: close the connection after answering.
        session.set_keepalive(None);
        return Err(too_large());
    }
    if expect_continue {
        let _ = session.write_continue_response().await;
    }
    let mut buf = BytesMut::with_capacity(declared.unwrap_or(1024).min(limit as u64) as usize);
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if buf.len() + chunk.len() > limit {
                    session.set_keepalive(None);
                    return Err(too_large());
                }
                buf.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(e) => {
                session.set_keepalive(None);
                return Err(ApiError::invalid(
                    format!("could not read the request body: {}", e.etype().as_str()),
                    None,
                ));
            }
        }
    }
    ctx.bytes_in = buf.len();
    Ok(buf.freeze())
}
