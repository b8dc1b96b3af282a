//! Incremental Server-Sent Events decoder and the one-line encoder.
//!
//! [`SseDecoder`] accepts the body in pieces split at any byte (inside a UTF-8
//! character, between `\r` and `\n`, inside the BOM) and calls back once per
//! dispatched event. It follows the WHATWG rules: lines end in `\n`, `\r\n` or
//! `\r`; `data:` lines (one optional space after the colon) are joined with
//! `\n`; a blank line dispatches; `:` comments, `id:`, `retry:` and unknown
//! fields are ignored; `event:` names the next event. A leading UTF-8 BOM is
//! stripped. Unlike a browser, [`SseDecoder::finish`] also dispatches a last
//! event that had data lines but no closing blank line.
//!
//! Memory is bounded: a line or an event's data longer than the configured
//! maximum puts the decoder into a sticky error state instead of growing.

use std::fmt;

/// Default bound for one line and for one event's data (8 MiB).
pub const DEFAULT_MAX_LINE: usize = 8 * 1024 * 1024;

const BOM: [u8; 3] = [0xEF, 0xBB, 0xBF];

/// One dispatched event. `data` is raw bytes (not necessarily UTF-8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event<'a> {
    /// Value of the last `event:` field, or `""` when none was given.
    pub event: &'a str,
    /// The `data:` lines joined by `\n`.
    pub data: &'a [u8],
}

/// Why the decoder stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseError {
    /// A line (or one event's accumulated data) exceeded the maximum.
    LineTooLong { max: usize },
}

impl fmt::Display for SseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SseError::LineTooLong { max } => {
                write!(f, "upstream SSE line or event exceeds {max} bytes")
            }
        }
    }
}

impl std::error::Error for SseError {}

/// Incremental SSE decoder. See the module docs.
#[derive(Debug)]
pub struct SseDecoder {
    max_line: usize,
    /// Bytes of the current, not yet terminated line.
    line: Vec<u8>,
    /// Data of the current event (lines joined by `\n`).
    data: Vec<u8>,
    has_data: bool,
    event: String,
    /// The previous piece ended in `\r`: a leading `\n` of the next piece
    /// belongs to the same line terminator.
    pending_cr: bool,
    /// How many BOM bytes matched so far at the very start; `None` once the
    /// start of the stream has been decided.
    bom: Option<usize>,
    error: Option<SseError>,
    events: u64,
}

impl Default for SseDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl SseDecoder {
    /// A decoder with the default line bound ([`DEFAULT_MAX_LINE`]).
    pub fn new() -> Self {
        Self::with_max_line(DEFAULT_MAX_LINE)
    }

    /// A decoder whose lines and event data may not exceed `max_line` bytes.
    pub fn with_max_line(max_line: usize) -> Self {
        SseDecoder {
            max_line: max_line.max(1),
            line: Vec::new(),
            data: Vec::new(),
            has_data: false,
            event: String::new(),
            pending_cr: false,
            bom: Some(0),
            error: None,
            events: 0,
        }
    }

    /// The sticky error, if the input broke a bound.
    pub fn error(&self) -> Option<&SseError> {
        self.error.as_ref()
    }

    /// Events dispatched so far.
    pub fn events(&self) -> u64 {
        self.events
    }

    /// Feed the next piece of the body; `on_event` runs for every event that
    /// completes inside it. After an error, input is ignored.
    pub fn push<F: FnMut(Event<'_>)>(
        &mut self,
        bytes: &[u8],
        mut on_event: F,
    ) -> Result<(), SseError> {
        self.push_inner(bytes, &mut on_event);
        self.result()
    }

    /// The body ended cleanly: process an unterminated last line and dispatch
    /// a pending event that has data.
    pub fn finish<F: FnMut(Event<'_>)>(&mut self, mut on_event: F) -> Result<(), SseError> {
        if self.error.is_none() {
            if let Some(n) = self.bom.take() {
                // Only part of a BOM arrived: those bytes are ordinary input.
                let partial = BOM;
                self.feed(&partial[..n], &mut on_event);
            }
        }
        if self.error.is_none() {
            if !self.line.is_empty() {
                let line = std::mem::take(&mut self.line);
                self.process_line(&line, &mut on_event);
                self.line = line;
                self.line.clear();
            }
            self.dispatch(&mut on_event);
        }
        self.pending_cr = false;
        self.result()
    }

    fn result(&self) -> Result<(), SseError> {
        match &self.error {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    fn push_inner(&mut self, mut bytes: &[u8], on_event: &mut dyn FnMut(Event<'_>)) {
        if self.error.is_some() {
            return;
        }
        // Decide about the BOM first, byte by byte (it may arrive split).
        while let Some(n) = self.bom {
            let Some((&b, rest)) = bytes.split_first() else {
                return;
            };
            if b == BOM[n] {
                bytes = rest;
                self.bom = if n + 1 == BOM.len() {
                    None
                } else {
                    Some(n + 1)
                };
            } else {
                self.bom = None;
                let partial = BOM;
                self.feed(&partial[..n], on_event);
            }
        }
        self.feed(bytes, on_event);
    }

    fn feed(&mut self, mut bytes: &[u8], on_event: &mut dyn FnMut(Event<'_>)) {
        if self.pending_cr && !bytes.is_empty() {
            self.pending_cr = false;
            if bytes[0] == b'\n' {
                bytes = &bytes[1..];
            }
        }
        while self.error.is_none() {
            let Some(i) = memchr::memchr2(b'\n', b'\r', bytes) else {
                if self.line.len() + bytes.len() > self.max_line {
                    self.fail();
                } else {
                    self.line.extend_from_slice(bytes);
                }
                return;
            };
            if self.line.len() + i > self.max_line {
                self.fail();
                return;
            }
            let (next, cr) = line_end(bytes, i);
            if self.line.is_empty() {
                let line = &bytes[..i];
                // Fast path, the common shape: a whole `data:` line and the blank line that
                // dispatches it are both here, so the event is handed over without a copy.
                if !cr
                    && !self.has_data
                    && line.starts_with(b"data:")
                    && matches!(bytes.get(next), Some(b'\n' | b'\r'))
                {
                    let value = &line[5..];
                    let value = value.strip_prefix(b" ").unwrap_or(value);
                    self.events += 1;
                    on_event(Event {
                        event: &self.event,
                        data: value,
                    });
                    self.event.clear();
                    let (after, cr) = line_end(bytes, next);
                    self.pending_cr = cr;
                    bytes = &bytes[after..];
                    continue;
                }
                self.process_line(line, on_event);
            } else {
                let mut line = std::mem::take(&mut self.line);
                line.extend_from_slice(&bytes[..i]);
                self.process_line(&line, on_event);
                line.clear();
                self.line = line;
            }
            self.pending_cr = cr;
            bytes = &bytes[next..];
        }
    }

    fn fail(&mut self) {
        self.error = Some(SseError::LineTooLong { max: self.max_line });
        self.line = Vec::new();
        self.data = Vec::new();
        self.has_data = false;
    }

    fn process_line(&mut self, line: &[u8], on_event: &mut dyn FnMut(Event<'_>)) {
        if line.is_empty() {
            self.dispatch(on_event);
            return;
        }
        if line[0] == b':' {
            return;
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(c) => {
                let v = &line[c + 1..];
                (&line[..c], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"data" => {
                let extra = value.len() + usize::from(self.has_data);
                if self.data.len() + extra > self.max_line {
                    self.fail();
                    return;
                }
                if self.has_data {
                    self.data.push(b'\n');
                }
                self.data.extend_from_slice(value);
                self.has_data = true;
            }
            b"event" => {
                self.event.clear();
                self.event.push_str(&String::from_utf8_lossy(value));
            }
            _ => {}
        }
    }

    fn dispatch(&mut self, on_event: &mut dyn FnMut(Event<'_>)) {
        if self.has_data {
            self.events += 1;
            on_event(Event {
                event: &self.event,
                data: &self.data,
            });
        }
        self.data.clear();
        self.has_data = false;
        self.event.clear();
    }
}

/// Where the line terminator at `i` (`\n`, `\r\n` or `\r`) ends, and whether it is a `\r`
/// at the very end of `bytes` (its `\n` may be the next piece's first byte).
fn line_end(bytes: &[u8], i: usize) -> (usize, bool) {
    if bytes[i] != b'\r' {
        return (i + 1, false);
    }
    match bytes.get(i + 1) {
        Some(b'\n') => (i + 2, false),
        Some(_) => (i + 1, false),
        None => (i + 1, true),
    }
}

/// Append `data: <payload>\n\n`. The payload must not contain line breaks
/// (JSON written by this crate never does).
pub fn write_data(out: &mut Vec<u8>, payload: &[u8]) {
    out.reserve(payload.len() + 8);
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\n\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    type Events = Vec<(String, Vec<u8>)>;

    fn collect(pieces: &[&[u8]], max: usize) -> (Events, Result<(), SseError>) {
        let mut d = SseDecoder::with_max_line(max);
        let mut evs = Vec::new();
        for p in pieces {
            let res = d.push(p, |e| evs.push((e.event.to_string(), e.data.to_vec())));
            if res.is_err() {
                return (evs, res);
            }
        }
        let res = d.finish(|e| evs.push((e.event.to_string(), e.data.to_vec())));
        (evs, res)
    }

    fn every_split(input: &[u8]) -> Events {
        let (whole, r) = collect(&[input], DEFAULT_MAX_LINE);
        assert!(r.is_ok());
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(collect(&bytes, DEFAULT_MAX_LINE).0, whole, "byte by byte");
        for i in 0..=input.len() {
            let (a, b) = input.split_at(i);
            assert_eq!(collect(&[a, b], DEFAULT_MAX_LINE).0, whole, "split at {i}");
            for j in i..=input.len() {
                let (b1, c) = b.split_at(j - i);
                assert_eq!(
                    collect(&[a, b1, c], DEFAULT_MAX_LINE).0,
                    whole,
                    "split at {i},{j}"
                );
            }
        }
        whole
    }

    fn ev(name: &str, data: &str) -> (String, Vec<u8>) {
        (name.to_string(), data.as_bytes().to_vec())
    }

    #[test]
    fn basic_events_all_line_endings() {
        let input = "\u{feff}: comment\r\nevent: delta\r\nid: 7\r\ndata: {\"a\":1}\r\n\r\ndata:x\rdata:  y\r\rretry: 5\ndata: z\n\ndata: last";
        let got = every_split(input.as_bytes());
        assert_eq!(
            got,
            vec![
                ev("delta", "{\"a\":1}"),
                ev("", "x\n y"),
                ev("", "z"),
                ev("", "last")
            ]
        );
    }

    #[test]
    fn bom_only_stripped_at_start_and_partial_bom_kept() {
        let got = every_split("data: \u{feff}a\n\n".as_bytes());
        assert_eq!(got, vec![ev("", "\u{feff}a")]);
        // Two BOM bytes followed by something else are data, not a BOM.
        let mut input = vec![0xEF, 0xBB];
        input.extend_from_slice(b"\ndata: q\n\n");
        let (got, r) = collect(&[&input], DEFAULT_MAX_LINE);
        assert!(r.is_ok());
        assert_eq!(got, vec![ev("", "q")]);
    }

    #[test]
    fn event_without_data_not_dispatched_and_field_without_colon() {
        let got = every_split(b"event: ping\n\ndata\n\nevent: e\ndata: 1\n\n");
        assert_eq!(got, vec![ev("", ""), ev("e", "1")]);
    }

    #[test]
    fn invalid_utf8_passes_through_as_bytes() {
        let (got, r) = collect(&[b"data: \xff\xfe\n\n"], DEFAULT_MAX_LINE);
        assert!(r.is_ok());
        assert_eq!(got, vec![(String::new(), vec![0xff, 0xfe])]);
    }

    #[test]
    fn long_line_is_an_error_not_growth() {
        let (got, r) = collect(&[b"data: 0123", b"456789abcdef"], 8);
        assert!(got.is_empty());
        assert_eq!(r, Err(SseError::LineTooLong { max: 8 }));
        // Accumulated data lines are bounded too.
        let (_, r) = collect(&[b"data: 1234\ndata: 5678\n"], 8);
        assert!(r.is_err());
        // Exactly at the bound is fine.
        let (got, r) = collect(&[b"data:12\n\n"], 7);
        assert!(r.is_ok());
        assert_eq!(got, vec![ev("", "12")]);
    }

    #[test]
    fn write_data_frames_payload() {
        let mut out = Vec::new();
        write_data(&mut out, b"[DONE]");
        assert_eq!(out, b"data: [DONE]\n\n");
    }
}
