//! The pure middle, shared by every surface and provider: no HTTP, no config structs.
//!
//! - `stream`: a provider's decoder → tool detection → a surface's encoder ([`stream::ChatStream`]);
//! - `complete`: the same, collected for non-stream answers;
//! - `split`: reasoning/content splitting of marked-up text; `tools`: tool-call emulation
//!   (prompt, history, detection); `tokens`: token estimates.

pub mod complete;
pub mod split;
pub mod stream;
pub mod tokens;
pub mod tools;
