//! The one seam between the shared stream transformer and each API surface.
//!
//! [`ChatStream`](super::stream::ChatStream) decodes the upstream body, splits reasoning from
//! content and detects tool calls once, for every surface; an [`Encoder`] turns what it
//! found into one surface's wire events. OpenAI chat chunks are
//! [`ChunkEncoder`](super::chunk::ChunkEncoder); [`Wire`] picks the surface per request.

use rand::distributions::Alphanumeric;
use rand::Rng;

use crate::anthropic::MessagesEncoder;
use crate::transform::chunk::ChunkEncoder;
use crate::transform::stream::Usage;
use crate::transform::tools::ToolCall;

/// Writes one response's events for one API surface.
pub trait Encoder {
    /// The opening event(s), before anything else.
    fn start(&mut self, out: &mut Vec<u8>);
    /// A piece of reasoning.
    fn reasoning(&mut self, text: &str, out: &mut Vec<u8>);
    /// A piece of the answer.
    fn content(&mut self, text: &str, out: &mut Vec<u8>);
    /// A whole tool call (the `index`-th of this answer).
    fn tool_call(&mut self, index: usize, call: &ToolCall, out: &mut Vec<u8>);
    /// The clean end: `finish_reason` as OpenAI names it (`stop`, `tool_calls`, `length`,
    /// …) and the upstream's usage when it gave one.
    fn finish(&mut self, finish_reason: &str, usage: Option<&Usage>, out: &mut Vec<u8>);
    /// The error ending (the answer is incomplete): never a normal end after it.
    fn error(&mut self, code: &str, message: &str, out: &mut Vec<u8>);
    /// Whether any reasoning, content or tool call was written.
    fn output_started(&self) -> bool;
}

/// The API a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Surface {
    /// OpenAI `POST /v1/chat/completions`.
    #[default]
    Chat,
    /// Anthropic `POST /v1/messages`.
    Messages,
}

impl Surface {
    /// A fresh id for one answer: `chatcmpl-…` or `msg_…`.
    pub fn new_id(self) -> String {
        match self {
            Surface::Chat => random_id("chatcmpl-"),
            Surface::Messages => random_id("msg_"),
        }
    }
}

/// `prefix` + 24 random ASCII letters and digits (answer and tool-call ids).
pub fn random_id(prefix: &str) -> String {
    let mut id = String::with_capacity(prefix.len() + 24);
    id.push_str(prefix);
    id.extend(
        rand::thread_rng()
            .sample_iter(&Alphanumeric)
            .take(24)
            .map(char::from),
    );
    id
}

/// The encoder of the surface a request came in on.
#[derive(Debug)]
pub enum Wire {
    /// `POST /v1/chat/completions`.
    Chat(ChunkEncoder),
    /// `POST /v1/messages`.
    Messages(MessagesEncoder),
}

macro_rules! each {
    ($self:ident, $e:ident => $call:expr) => {
        match $self {
            Wire::Chat($e) => $call,
            Wire::Messages($e) => $call,
        }
    };
}

impl Encoder for Wire {
    fn start(&mut self, out: &mut Vec<u8>) {
        each!(self, e => e.start(out))
    }

    fn reasoning(&mut self, text: &str, out: &mut Vec<u8>) {
        each!(self, e => e.reasoning(text, out))
    }

    fn content(&mut self, text: &str, out: &mut Vec<u8>) {
        each!(self, e => Encoder::content(e, text, out))
    }

    fn tool_call(&mut self, index: usize, call: &ToolCall, out: &mut Vec<u8>) {
        each!(self, e => e.tool_call(index, call, out))
    }

    fn finish(&mut self, finish_reason: &str, usage: Option<&Usage>, out: &mut Vec<u8>) {
        each!(self, e => Encoder::finish(e, finish_reason, usage, out))
    }

    fn error(&mut self, code: &str, message: &str, out: &mut Vec<u8>) {
        each!(self, e => Encoder::error(e, code, message, out))
    }

    fn output_started(&self) -> bool {
        each!(self, e => e.output_started())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_their_prefix_and_24_random_characters() {
        for (surface, prefix) in [(Surface::Chat, "chatcmpl-"), (Surface::Messages, "msg_")] {
            let (a, b) = (surface.new_id(), surface.new_id());
            assert_ne!(a, b);
            let tail = a.strip_prefix(prefix).expect("prefix");
            assert_eq!(tail.len(), 24);
            assert!(tail.bytes().all(|c| c.is_ascii_alphanumeric()));
        }
    }
}
