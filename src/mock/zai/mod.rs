//! Mock Z.AI upstream (chat.z.ai), built from `providers-protocol.md` Part A (§A.8 is its
//! spec): its per-request directives, the request signature it checks and the answers it
//! streams.

pub mod directives;
pub mod sign;
pub mod stream;

pub use directives::{EditAt, EditMode, Envelope, Thinking, ToolStyle, ZaiDirectives, ZaiFault};
pub use stream::{closed_block, full_text, reply_for, tool_answer};
