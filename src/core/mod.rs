//! The neutral model every surface and provider meets in: the request as turns
//! ([`request`]), decoded events ([`events`]), the decoder and encoder seams ([`decode`],
//! [`encode`]), the gateway error ([`error`]), ids ([`ids`]), JSON writers ([`json`]) and the wall clock ([`clock`]).
//! A leaf: it imports nothing else from the crate.

pub mod clock;
pub mod decode;
pub mod encode;
pub mod error;
pub mod events;
pub mod ids;
pub mod json;
pub mod request;

pub use decode::Decoder;
pub use encode::{Encoder, ReasoningMode};
pub use events::{CompletionTokensDetails, Delta, Deltas, ToolCall, Usage};
