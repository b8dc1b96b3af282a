//! Writing whole responses (JSON bodies and errors) to the client.

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::Result;

use super::Ctx;
use crate::core::error::ApiError;

/// A complete JSON response with `Content-Length` (keeps the connection reusable).
///
/// Boxed: every route can end in a response written here, and its state (Pingora's header
/// and body writes, ~1 KB) would otherwise be part of every request's state, streams
/// included, for as long as the request lives.
pub fn json<'a>(
    session: &'a mut Session,
    ctx: &'a mut Ctx,
    status: u16,
    body: Vec<u8>,
    extra: &'a [(&'static str, String)],
) -> Pin<Box<dyn Future<Output = Result<()>> + Send + 'a>> {
    Box::pin(async move {
        let mut resp = ResponseHeader::build(status, Some(4 + extra.len()))?;
        resp.insert_header("content-type", "application/json")?;
        resp.insert_header("content-length", body.len().to_string())?;
        resp.insert_header("x-request-id", ctx.request_id.as_str())?;
        for (k, v) in extra {
            resp.insert_header(*k, v.as_str())?;
        }
        ctx.status = status;
        ctx.bytes_out += body.len();
        session.write_response_header(Box::new(resp), false).await?;
        session
            .write_response_body(Some(Bytes::from(body)), true)
            .await
    })
}

/// An error response in the shape of the request's API (OpenAI or Anthropic), with
/// `Retry-After` when the error carries one.
pub async fn error(session: &mut Session, ctx: &mut Ctx, e: &ApiError) {
    error_with(session, ctx, e, &[]).await
}

/// [`error`] with extra response headers.
pub async fn error_with(
    session: &mut Session,
    ctx: &mut Ctx,
    e: &ApiError,
    headers: &[(&'static str, String)],
) {
    let mut extra = headers.to_vec();
    if let Some(s) = e.retry_after {
        extra.push(("retry-after", s.to_string()));
    }
    if ctx.outcome == "-" {
        ctx.outcome = "rejected";
    }
    ctx.error = Some(e.message.clone());
    let body = ctx.surface.error_body(e);
    if let Err(err) = json(session, ctx, e.status, body, &extra).await {
        log::debug!(
            "{}: could not write the error response: {err}",
            ctx.request_id
        );
    }
}
