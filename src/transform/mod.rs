//! Pure transforms between the OpenAI surface and K2Think: no HTTP, no config structs.
//!
//! - `request`: OpenAI chat request → K2Think payload;
//! - `sse` framing lives in `crate::sse`; `stream`: upstream events → OpenAI chunks
//!   (cumulative → delta, reasoning split); `complete`: the same for non-stream answers.

pub mod chunk;
pub mod complete;
pub mod encode;
pub mod files;
pub mod request;
pub mod split;
pub mod stream;
pub mod tokens;
pub mod tools;
