//! The neutral model every surface and provider meets in: the request as turns
//! ([`request`]), decoded events ([`events`]) and the decoder seam ([`decode`]). A leaf: it imports nothing else from the crate.

pub mod decode;
pub mod events;
pub mod request;

pub use decode::Decoder;
pub use events::{CompletionTokensDetails, Delta, Deltas, Usage};
