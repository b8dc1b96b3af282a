//! Z.AI (chat.z.ai, GLM) as an upstream: the pure pieces of its web-chat protocol
//! (providers-protocol.md Part A). Nothing here does I/O or reads the clock; the caller
//! passes ids and the time in.
//!
//! * [`sign`]: the `X-Signature` HMAC, the user id of a JWT and the signed query string
//!   of `POST /api/v2/chat/completions` (§A.3).
//! * [`fe_version`]: the `X-FE-Version` value scraped from the home page (§A.3.4).
//! * [`models`]: the GLM catalogue: public ids, upstream ids and feature flags (§A.5.1–2).
//! * [`body`]: the completion body and the `POST /api/v1/chats/new` body (§A.4–A.5).
//! * [`decode`]: the SSE answer stream → reasoning/content deltas ([`decode::ZaiDecoder`], §A.6).
//! * [`classify`]: an error response or inline stream error → a [`classify::Refusal`] (§A.7).

pub mod body;
mod calendar;
pub mod classify;
pub mod decode;
pub mod fe_version;
pub mod models;
pub mod runtime;
pub mod settings;
pub mod sign;
