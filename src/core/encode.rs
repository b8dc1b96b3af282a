//! The seam between the pipeline and a surface: an [`Encoder`] writes one answer's neutral
//! events in one client API's wire format; [`ReasoningMode`] says where reasoning goes.

use crate::core::events::{ToolCall, Usage};

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

/// A boxed encoder is one too.
impl<E: Encoder + ?Sized> Encoder for Box<E> {
    fn start(&mut self, out: &mut Vec<u8>) {
        (**self).start(out)
    }
    fn reasoning(&mut self, text: &str, out: &mut Vec<u8>) {
        (**self).reasoning(text, out)
    }
    fn content(&mut self, text: &str, out: &mut Vec<u8>) {
        (**self).content(text, out)
    }
    fn tool_call(&mut self, index: usize, call: &ToolCall, out: &mut Vec<u8>) {
        (**self).tool_call(index, call, out)
    }
    fn finish(&mut self, finish_reason: &str, usage: Option<&Usage>, out: &mut Vec<u8>) {
        (**self).finish(finish_reason, usage, out)
    }
    fn error(&mut self, code: &str, message: &str, out: &mut Vec<u8>) {
        (**self).error(code, message, out)
    }
    fn output_started(&self) -> bool {
        (**self).output_started()
    }
}

/// Where reasoning goes in the client's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReasoningMode {
    /// `delta.reasoning_content` / `message.reasoning_content`.
    Field,
    /// Inline in content as `<think>…</think>\n\n`.
    Inline,
    /// Dropped (the `-nothink` models).
    Drop,
}
