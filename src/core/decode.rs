//! The seam between a provider and the pipeline: a [`Decoder`] turns one upstream body,
//! pushed in pieces split anywhere, into ordered [`Deltas`] plus what the body said about
//! its own end (end marker, finish reason, usage, error).

use std::fmt::Debug;

use crate::core::events::{Deltas, Usage};

/// Message used when a body holds no answer its decoder understands.
pub const NOT_AN_ANSWER: &str = "upstream returned a body that is not a usable answer";

/// One upstream answer body → neutral events. Implementations are pure (no I/O, no clock)
/// and give the same output whatever the byte split of the input.
pub trait Decoder: Debug + Send {
    /// Feed the next piece of the body; appends deltas to `out`.
    fn push(&mut self, bytes: &[u8], out: &mut Deltas);

    /// The body ended cleanly: flush everything held back.
    fn finish(&mut self, out: &mut Deltas);

    /// The upstream's own end marker was seen (a complete answer, not a cut body).
    fn done_seen(&self) -> bool;

    /// Upstream usage, when reported.
    fn usage(&self) -> Option<&Usage>;

    /// The upstream's non-empty finish reason, when reported.
    fn finish_reason(&self) -> Option<&str>;

    /// An upstream error carried in the body (error event, inline error, malformed body).
    fn error(&self) -> Option<&str>;

    /// The numeric code the upstream gave with [`Decoder::error`], when it gave one (an
    /// inline 426, 429 or 403 in an otherwise successful stream).
    fn error_code(&self) -> Option<i64> {
        None
    }

    /// Events seen (SSE events, or 1 for a JSON body).
    fn events(&self) -> u64;

    /// Whether anything answer-like was seen (text, end marker, usage).
    fn usable(&self) -> bool;

    /// Reasoning that was streamed speculatively turned out to be content (and was sent
    /// again as content); as a K2Think splitter does.
    fn reasoning_retracted(&self) -> bool {
        false
    }

    /// Bytes of the reasoning channel that were such speculation.
    fn retracted_len(&self) -> usize {
        0
    }
}

/// A boxed decoder decodes: the proxy picks a provider's decoder at run time.
impl<D: Decoder + ?Sized> Decoder for Box<D> {
    fn push(&mut self, bytes: &[u8], out: &mut Deltas) {
        (**self).push(bytes, out)
    }
    fn finish(&mut self, out: &mut Deltas) {
        (**self).finish(out)
    }
    fn done_seen(&self) -> bool {
        (**self).done_seen()
    }
    fn usage(&self) -> Option<&Usage> {
        (**self).usage()
    }
    fn finish_reason(&self) -> Option<&str> {
        (**self).finish_reason()
    }
    fn error(&self) -> Option<&str> {
        (**self).error()
    }
    fn error_code(&self) -> Option<i64> {
        (**self).error_code()
    }
    fn events(&self) -> u64 {
        (**self).events()
    }
    fn usable(&self) -> bool {
        (**self).usable()
    }
    fn reasoning_retracted(&self) -> bool {
        (**self).reasoning_retracted()
    }
    fn retracted_len(&self) -> usize {
        (**self).retracted_len()
    }
}
