//! The shared stream middle: one upstream body, read by a provider's [`Decoder`], through
//! the tool-call detector ([`ToolStage`]), written by one surface's [`Encoder`] ([`ChatStream`]).
//!
//! Tool-call emulation ([`ToolStage`]): the content channel goes through
//! [`crate::pipeline::tools::ToolDetector`]; calls are written as tool calls and the finish
//! reason becomes `tool_calls`. Without tools the output is unchanged.

use std::sync::Arc;

use crate::core::decode::NOT_AN_ANSWER;
use crate::core::events::UPSTREAM_STREAM_ERROR;
pub use crate::core::events::{CompletionTokensDetails, Usage};
pub use crate::core::events::{Delta, Deltas};
pub use crate::core::ReasoningMode;
use crate::core::{Decoder, Encoder};
use crate::pipeline::tools::{ToolCall, ToolDetector, ToolPiece, ToolSet};

/// Tool detection over the content channel of a decoded response, shared by
/// [`ChatStream`] and [`crate::pipeline::complete::Completion`].
#[derive(Debug)]
pub struct ToolStage {
    detector: ToolDetector,
    pieces: Vec<ToolPiece>,
}

impl ToolStage {
    /// `None` when `tools` is `None` or its `tool_choice` is `"none"`.
    pub fn new(tools: Option<&Arc<ToolSet>>) -> Option<Box<ToolStage>> {
        let set = tools.filter(|t| t.detects())?;
        Some(Box::new(ToolStage {
            detector: ToolDetector::new(Arc::clone(set)),
            pieces: Vec::new(),
        }))
    }

    /// Route `deltas`: reasoning goes through at once, content through the
    /// detector. `end`: `Some(true)` finish, `Some(false)` abort (release
    /// held text unparsed). Calls `sink` per output item, in order.
    pub fn route(&mut self, deltas: &Deltas, end: Option<bool>, mut sink: impl FnMut(Routed<'_>)) {
        for d in deltas {
            match d {
                Delta::Reasoning(t) => {
                    self.flush(&mut sink);
                    sink(Routed::Reasoning(t));
                }
                Delta::Content(t) => self.detector.push(t, &mut self.pieces),
            }
        }
        match end {
            Some(true) => self.detector.finish(&mut self.pieces),
            Some(false) => self.detector.abort(&mut self.pieces),
            None => {}
        }
        self.flush(&mut sink);
    }

    fn flush(&mut self, sink: &mut impl FnMut(Routed<'_>)) {
        for p in self.pieces.drain(..) {
            match p {
                ToolPiece::Content(t) => sink(Routed::Content(&t)),
                ToolPiece::Call { index, call } => sink(Routed::Call(index, call)),
            }
        }
    }

    /// Calls emitted so far.
    pub fn calls(&self) -> usize {
        self.detector.calls()
    }

    /// Malformed blocks given back as content.
    pub fn malformed(&self) -> u64 {
        self.detector.malformed()
    }
}

/// One item out of [`ToolStage::route`].
#[derive(Debug)]
pub enum Routed<'a> {
    Reasoning(&'a str),
    Content(&'a str),
    Call(usize, ToolCall),
}

/// Upstream body → one API surface's SSE events (OpenAI chunks by default): the decoding,
/// the reasoning split and the tool detection are shared, the wire format is `E`'s.
#[derive(Debug)]
pub struct ChatStream<E: Encoder, D: Decoder> {
    pub(crate) decoder: D,
    enc: E,
    deltas: Deltas,
    started: bool,
    end: Option<Result<(), String>>,
    tools: Option<Box<ToolStage>>,
}

impl<E: Encoder, D: Decoder> ChatStream<E, D> {
    /// A transformer for one response read by `decoder` and written with `enc`.
    pub fn with_decoder(enc: E, decoder: D, tools: Option<&Arc<ToolSet>>) -> Self {
        ChatStream {
            decoder,
            enc,
            deltas: Deltas::new(),
            started: false,
            end: None,
            tools: ToolStage::new(tools),
        }
    }

    /// Write the first chunk (`delta: {"role":"assistant","content":""}`).
    /// Called implicitly by the other writers when needed.
    pub fn start(&mut self, out: &mut Vec<u8>) {
        if !self.started {
            self.started = true;
            self.enc.start(out);
        }
    }

    /// Feed upstream bytes; appends zero or more `data: {...}\n\n`.
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        if self.end.is_some() {
            return;
        }
        self.start(out);
        self.deltas.clear();
        self.decoder.push(chunk, &mut self.deltas);
        self.write_deltas(None, out);
    }

    fn write_deltas(&mut self, end: Option<bool>, out: &mut Vec<u8>) {
        let Some(tools) = self.tools.as_mut() else {
            for d in &self.deltas {
                match d {
                    Delta::Reasoning(t) => self.enc.reasoning(t, out),
                    Delta::Content(t) => self.enc.content(t, out),
                }
            }
            return;
        };
        let enc = &mut self.enc;
        tools.route(&self.deltas, end, |r| match r {
            Routed::Reasoning(t) => enc.reasoning(t, out),
            Routed::Content(t) => enc.content(t, out),
            Routed::Call(i, c) => enc.tool_call(i, &c, out),
        });
    }

    /// Clean end of the upstream body. Writes the finish chunk (upstream's
    /// `finish_reason` or `stop`), the usage chunk when asked and known, and
    /// `data: [DONE]`. If the upstream reported an error, or sent nothing
    /// usable, writes the error ending instead and returns the message.
    pub fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), String> {
        if let Some(end) = &self.end {
            return end.clone();
        }
        self.start(out);
        self.deltas.clear();
        self.decoder.finish(&mut self.deltas);
        let err = match self.decoder.error() {
            Some(e) => Some(e.to_string()),
            None if !self.decoder.usable() => Some(NOT_AN_ANSWER.to_string()),
            None => None,
        };
        self.write_deltas(Some(err.is_none()), out);
        if let Some(msg) = err {
            self.enc.error(UPSTREAM_STREAM_ERROR, &msg, out);
            self.end = Some(Err(msg.clone()));
            return Err(msg);
        }
        let reason = if self.tool_calls_emitted() > 0 {
            "tool_calls"
        } else {
            self.decoder.finish_reason().unwrap_or("stop")
        };
        self.enc.finish(reason, self.decoder.usage(), out);
        self.end = Some(Ok(()));
        Ok(())
    }

    /// The upstream was cut or timed out mid-stream: a chunk with
    /// `finish_reason: "error"` and an error event with `code` (see [`chunk`]); never `[DONE]`.
    pub fn fail(&mut self, code: &str, message: &str, out: &mut Vec<u8>) {
        if self.end.is_some() {
            return;
        }
        self.start(out);
        if self.tools.is_some() {
            self.deltas.clear();
            self.write_deltas(Some(false), out);
        }
        self.enc.error(code, message, out);
        self.end = Some(Err(message.to_string()));
    }

    /// Tool calls written so far.
    pub fn tool_calls_emitted(&self) -> usize {
        self.tools.as_ref().map_or(0, |t| t.calls())
    }

    /// Tool-call blocks that were malformed and given back as content.
    pub fn malformed_tool_blocks(&self) -> u64 {
        self.tools.as_ref().map_or(0, |t| t.malformed())
    }

    /// The upstream error seen so far, if any.
    pub fn upstream_error(&self) -> Option<&str> {
        self.decoder.error()
    }

    /// Whether any reasoning or content delta was written.
    pub fn output_started(&self) -> bool {
        self.enc.output_started()
    }

    /// Upstream usage, when reported.
    pub fn usage(&self) -> Option<&Usage> {
        self.decoder.usage()
    }

    /// The decoder (for `done_seen`, `finish_reason`, …).
    pub fn decoder(&self) -> &D {
        &self.decoder
    }
}
