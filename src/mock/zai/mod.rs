//! Mock Z.AI upstream (chat.z.ai), built from `providers-protocol.md` Part A (§A.8 is its
//! spec): its per-request directives and the request signature it checks.

pub mod directives;
pub mod sign;

pub use directives::{EditAt, EditMode, Envelope, Thinking, ToolStyle, ZaiDirectives, ZaiFault};
