//! K2Think upstream body → reasoning/content deltas ([`K2Decoder`]), and the K2Think
//! constructors of the pipeline's [`ChatStream`] and [`Completion`].
//!
//! Accepted upstream forms (see `k2think-protocol.md` §4.2–4.7):
//!
//! * SSE ([`UpstreamFormat::Sse`]) whose events are `[DONE]`/`DONE`/`done`
//!   (end), `-1` or empty (skipped), `{"content": …}` (cumulative or
//!   incremental, see below), `{"done": true, …}`, `{"usage": {…}}`, OpenAI
//!   chunks `{"choices":[{"delta":{…},"finish_reason":…}]}`, `{"error": …}` /
//!   `{"detail": …}` without content (upstream error), an `event: error`
//!   event, or data that is not JSON (raw incremental text). K2 Horizon's leading
//!   `{"task_id": …}` is skipped, and its OpenAI finish chunk after `done` gives only its
//!   `finish_reason`: a `choices` text after `done`, or in a stream of `content` values,
//!   repeats what those carried and is never added. A `data:` block
//!   that holds several JSON lines (an upstream that never sends blank lines)
//!   is split into its lines.
//! * A single JSON completion ([`UpstreamFormat::Json`]): OpenAI
//!   `choices[0].message` or `{"content": …}`. A JSON body arriving in SSE
//!   mode, or an SSE body in JSON mode, is recognised too.
//!
//! `content` values are read as [`ContentDelivery`] says (`upstream.content_delivery`);
//! the text alone cannot tell `"=="` + `"===="` (incremental) from `"=="` → `"===="`
//! (cumulative), so the decision is the operator's, not a guess:
//!
//! * [`ContentDelivery::Cumulative`] (the default; every known K2Think client reads
//!   `content` so): a value that starts with the text so far adds its suffix; a value that
//!   does not is a rewrite: the channels are derived again and only what goes beyond the
//!   already emitted output is emitted.
//! * [`ContentDelivery::Incremental`]: every value is appended, except the `content` of a
//!   `done: true` event, which is the whole text when it extends or repeats what arrived
//!   (see [`Core::on_final_content`]).
//! * [`ContentDelivery::Auto`] (an unknown upstream): the first value sets the text; a
//!   later value that extends it makes the stream cumulative (sticky); one that does not,
//!   but shares a prefix of at least [`REWRITE_PREFIX`] bytes with the text or contains
//!   the text's tail (a rewritten head), is a cumulative rewrite; otherwise the stream is
//!   incremental (sticky). Repetitive text fools this guess: 200 `=` sent incrementally
//!   in 32-byte pieces look like cumulative values, and most of the text is lost.
//!
//! OpenAI `choices[].delta` text and data that is not JSON are incremental in every mode
//! (another channel). Per event the work is a prefix compare plus the new suffix; a full
//! re-derive happens only on a rewrite.
//!
//! Tool-call emulation ([`StreamOptions::tools`]) is the pipeline's
//! ([`crate::pipeline::stream::ToolStage`]); without tools the output is unchanged.

use std::borrow::Cow;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

pub use crate::core::decode::NOT_AN_ANSWER;
pub use crate::core::events::{Delta, Deltas};
use crate::core::{Decoder, Encoder, ReasoningMode};
use crate::pipeline::complete::Completion;
use crate::pipeline::split::Splitter;
use crate::pipeline::stream::ChatStream;
use crate::pipeline::tools::ToolSet;
use crate::provider::error_message;
use crate::sse::SseDecoder;
use crate::surface::chat::stream::ChunkEncoder;

/// Shared prefix (bytes) that makes a non-extending `content` a rewrite.
pub const REWRITE_PREFIX: usize = 8;
/// Bound for a buffered JSON body (16 MiB).
pub const MAX_JSON_BODY: usize = 16 * 1024 * 1024;

/// How the upstream body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamFormat {
    /// `text/event-stream`.
    Sse,
    /// One JSON document.
    Json,
}

pub use crate::core::events::{CompletionTokensDetails, Usage};

/// How the upstream's `content` values relate to each other (`upstream.content_delivery`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContentDelivery {
    /// Each value carries the whole text so far (K2Think, K2 Horizon).
    #[default]
    Cumulative,
    /// Each value carries a new piece of the text.
    Incremental,
    /// Guessed from the text (see the module docs); fooled by repetitive text.
    Auto,
}

impl ContentDelivery {
    pub fn as_str(self) -> &'static str {
        match self {
            ContentDelivery::Cumulative => "cumulative",
            ContentDelivery::Incremental => "incremental",
            ContentDelivery::Auto => "auto",
        }
    }
}

/// The reading of `content` values in force: fixed by a configured [`ContentDelivery`],
/// or `Unknown` until [`ContentDelivery::Auto`] has guessed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Unknown,
    Cumulative,
    Incremental,
}

impl Mode {
    fn of(delivery: ContentDelivery) -> Mode {
        match delivery {
            ContentDelivery::Cumulative => Mode::Cumulative,
            ContentDelivery::Incremental => Mode::Incremental,
            ContentDelivery::Auto => Mode::Unknown,
        }
    }
}

/// Typed fast path for one event payload; anything unexpected falls back to
/// a [`Value`] parse.
#[derive(Deserialize)]
struct WireEvent<'a> {
    /// Kept as raw JSON: a cumulative value is mostly text already seen, and only its new
    /// suffix needs unescaping ([`Core::on_content_text`]).
    #[serde(borrow, default)]
    content: Option<&'a RawValue>,
    #[serde(default)]
    done: Option<Value>,
    #[serde(default)]
    usage: Option<Value>,
    #[serde(borrow, default)]
    choices: Option<Vec<WireChoice<'a>>>,
    #[serde(default)]
    error: Option<Value>,
    #[serde(default)]
    detail: Option<Value>,
}

#[derive(Deserialize)]
struct WireChoice<'a> {
    #[serde(borrow, default)]
    delta: Option<WireDelta<'a>>,
    #[serde(borrow, default)]
    message: Option<WireDelta<'a>>,
    #[serde(borrow, default)]
    finish_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct WireDelta<'a> {
    #[serde(borrow, default)]
    content: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    reasoning_content: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    reasoning: Option<Cow<'a, str>>,
}

/// A `content` string value.
enum Text<'a> {
    /// The body of a JSON string literal (between the quotes), escapes intact.
    Raw(&'a str),
    /// Decoded text.
    Plain(Cow<'a, str>),
}

/// Decode the body of a JSON string literal; `None` when an escape is invalid.
fn unescape(body: &str) -> Option<Cow<'_, str>> {
    if !body.contains('\\') {
        return Some(Cow::Borrowed(body));
    }
    let mut lit = String::with_capacity(body.len() + 2);
    lit.push('"');
    lit.push_str(body);
    lit.push('"');
    serde_json::from_str::<String>(&lit).ok().map(Cow::Owned)
}

/// Normalised view of one event.
#[derive(Default)]
struct Parsed<'a> {
    content: Option<Text<'a>>,
    done: bool,
    usage: Option<Usage>,
    has_choices: bool,
    delta_reasoning: Option<Cow<'a, str>>,
    delta_content: Option<Cow<'a, str>>,
    finish_reason: Option<Cow<'a, str>>,
    error: Option<String>,
}

fn not_null(v: &Option<Value>) -> Option<&Value> {
    v.as_ref().filter(|v| !v.is_null())
}

impl<'a> Parsed<'a> {
    fn from_wire(w: WireEvent<'a>) -> Parsed<'a> {
        let mut p = Parsed {
            content: w
                .content
                .and_then(|r| r.get().strip_prefix('"')?.strip_suffix('"'))
                .map(Text::Raw),
            done: matches!(w.done, Some(Value::Bool(true))),
            usage: w.usage.as_ref().and_then(Usage::from_value),
            ..Parsed::default()
        };
        if let Some(choice) = w.choices.and_then(|c| c.into_iter().next()) {
            p.has_choices = true;
            p.finish_reason = choice.finish_reason;
            if let Some(d) = choice.delta.or(choice.message) {
                p.delta_reasoning = d.reasoning_content.or(d.reasoning);
                p.delta_content = d.content;
            }
        }
        if p.content.is_none() && !p.has_choices {
            p.error = not_null(&w.error)
                .or(not_null(&w.detail))
                .map(error_message);
        }
        p
    }

    fn from_value(v: &'a Value) -> Parsed<'a> {
        let str_of = |v: Option<&'a Value>| v.and_then(Value::as_str).map(Cow::Borrowed);
        let mut p = Parsed {
            content: str_of(v.get("content")).map(Text::Plain),
            done: matches!(v.get("done"), Some(Value::Bool(true))),
            usage: v.get("usage").and_then(Usage::from_value),
            ..Parsed::default()
        };
        if let Some(choice) = v
            .get("choices")
            .and_then(Value::as_array)
            .and_then(|a| a.first())
        {
            p.has_choices = true;
            p.finish_reason = str_of(choice.get("finish_reason"));
            if let Some(d) = choice
                .get("delta")
                .or(choice.get("message"))
                .filter(|d| d.is_object())
            {
                p.delta_reasoning =
                    str_of(d.get("reasoning_content")).or(str_of(d.get("reasoning")));
                p.delta_content = str_of(d.get("content"));
            }
        }
        if p.content.is_none() && !p.has_choices {
            let e = v
                .get("error")
                .filter(|e| !e.is_null())
                .or(v.get("detail").filter(|e| !e.is_null()));
            p.error = e.map(error_message);
        }
        p
    }
}

/// Length of the common prefix of `a` and `b`, in bytes.
fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// `new` contains the last bytes of `old` (a head rewrite of cumulative text).
fn contains_tail(old: &str, new: &str) -> bool {
    const TAIL: usize = 16;
    if old.len() < TAIL {
        return false;
    }
    let tail = &old.as_bytes()[old.len() - TAIL..];
    new.as_bytes().windows(TAIL).any(|w| w == tail)
}

/// State shared by the SSE callback (everything but the SSE decoder).
#[derive(Debug)]
struct Core {
    splitter: Splitter,
    implicit_think: bool,
    /// The raw answer text so far (for cumulative prefix checks).
    text: String,
    /// The last `content` literal, still escaped, when it decodes to exactly `text`: the
    /// next cumulative value is checked against it and only its new suffix is decoded.
    raw: String,
    raw_ok: bool,
    /// How `content` values are read (see [`ContentDelivery`]).
    mode: Mode,
    /// A top-level `content` value was seen: the text is the K2Think `content` stream, and
    /// OpenAI-style `choices` chunks (K2 Horizon sends one after `done`) only repeat it.
    content_field: bool,
    done: bool,
    usable: bool,
    usage: Option<Usage>,
    finish_reason: Option<String>,
    error: Option<String>,
    events: u64,
}

impl Core {
    fn on_event(&mut self, event: &str, data: &[u8], out: &mut Deltas) {
        if self.error.is_some() {
            return;
        }
        self.events += 1;
        // Valid UTF-8 is the rule; the fast check avoids the lossy path's per-byte walk.
        let data = match std::str::from_utf8(data) {
            Ok(s) => Cow::Borrowed(s),
            Err(_) => String::from_utf8_lossy(data),
        };
        if event == "error" {
            self.error = Some(match serde_json::from_str::<Value>(&data) {
                Ok(v) => error_message(&v),
                Err(_) if data.trim().is_empty() => "upstream error".to_string(),
                Err(_) => data.trim().to_string(),
            });
            return;
        }
        if self.on_payload(&data, out) {
            return;
        }
        if data.contains('\n') {
            // Several JSON lines in one event: an upstream without blank lines.
            let lines: Vec<&str> = data.lines().filter(|l| !l.trim().is_empty()).collect();
            let all_json = lines.iter().all(|l| {
                let t = l.trim();
                is_done_marker(t)
                    || (t.starts_with('{')
                        && serde_json::from_str::<serde::de::IgnoredAny>(t).is_ok())
            });
            if all_json {
                for l in lines {
                    self.on_payload(l, out);
                }
                return;
            }
        }
        self.usable = true;
        self.on_append(&data, out);
    }

    /// Handle a JSON payload or a marker. Returns false when `data` is not
    /// JSON (the caller treats it as text).
    fn on_payload(&mut self, data: &str, out: &mut Deltas) -> bool {
        let t = data.trim();
        if is_done_marker(t) {
            self.done = true;
            self.usable = true;
            return true;
        }
        if t.is_empty() || t == "-1" {
            return true;
        }
        if !t.starts_with('{') {
            return match serde_json::from_str::<Value>(t) {
                Ok(Value::String(s)) => {
                    self.usable = true;
                    self.on_append(&s, out);
                    true
                }
                Ok(_) => true,
                Err(_) => false,
            };
        }
        match serde_json::from_str::<WireEvent<'_>>(t) {
            Ok(w) => {
                self.apply(Parsed::from_wire(w), out);
                true
            }
            Err(_) => match serde_json::from_str::<Value>(t) {
                Ok(v) => {
                    self.apply(Parsed::from_value(&v), out);
                    true
                }
                Err(_) => false,
            },
        }
    }

    fn apply(&mut self, p: Parsed<'_>, out: &mut Deltas) {
        if let Some(e) = p.error {
            self.error = Some(e);
            return;
        }
        if p.content.is_some() || p.has_choices || p.done || p.usage.is_some() {
            self.usable = true;
        }
        if let Some(c) = p.content {
            self.content_field = true;
            self.on_content_text(c, p.done, out);
            if self.error.is_some() {
                return;
            }
        }
        // After `done`, or in a `content` stream, a `choices` chunk's text repeats what the
        // `content` values carried (K2 Horizon's finish chunk, §0.5 #7): never added.
        if p.has_choices && !self.done && !self.content_field {
            self.on_choices_text(p.delta_reasoning, p.delta_content, out);
        }
        if let Some(f) = p.finish_reason {
            if !f.is_empty() {
                self.finish_reason = Some(f.into_owned());
            }
        }
        if let Some(u) = p.usage {
            self.usage = Some(u);
        }
        if p.done {
            self.done = true;
        }
    }

    /// The text of an OpenAI-style `choices` delta (a stream of such chunks). Kept out of
    /// line: inlined into [`Core::apply`], it slowed the `content` path by 8% at 10-byte
    /// pieces (`cargo bench --bench transform`).
    #[inline(never)]
    fn on_choices_text(
        &mut self,
        reasoning: Option<Cow<'_, str>>,
        content: Option<Cow<'_, str>>,
        out: &mut Deltas,
    ) {
        if let Some(r) = reasoning {
            self.splitter.push_reasoning(&r, out);
        }
        if let Some(c) = content {
            self.on_append(&c, out);
        }
    }

    /// A `content` value. The common case, a cumulative value whose literal starts with the
    /// previous literal, costs a byte compare and decoding the new suffix; anything else is
    /// decoded whole and goes through [`Core::on_content`] / [`Core::on_final_content`].
    fn on_content_text(&mut self, c: Text<'_>, done: bool, out: &mut Deltas) {
        if let Text::Raw(body) = c {
            if self.raw_ok
                && self.mode != Mode::Incremental
                && !self.text.is_empty()
                && body.as_bytes().starts_with(self.raw.as_bytes())
            {
                // `raw` ends on an escape boundary, so the suffix is a literal of its own.
                let raw_suffix = &body[self.raw.len()..];
                if let Some(suffix) = unescape(raw_suffix) {
                    if !suffix.is_empty() || self.text.len() >= REWRITE_PREFIX {
                        self.mode = Mode::Cumulative;
                    }
                    self.on_append(&suffix, out);
                    self.raw.push_str(raw_suffix);
                    self.raw_ok = true;
                    return;
                }
            }
        }
        let (text, raw) = match c {
            Text::Raw(body) => match unescape(body) {
                Some(t) => (t, Some(body)),
                None => {
                    self.error = Some("upstream sent an invalid string escape".to_string());
                    return;
                }
            },
            Text::Plain(t) => (t, None),
        };
        if done && self.mode == Mode::Incremental {
            self.on_final_content(&text, out);
        } else {
            self.on_content(&text, out);
        }
        self.raw.clear();
        self.raw_ok = false;
        if let Some(body) = raw {
            if self.mode != Mode::Incremental && self.text == text {
                self.raw.push_str(body);
                self.raw_ok = true;
            }
        }
    }

    /// Incremental text (OpenAI delta, raw data, incremental `content`).
    fn on_append(&mut self, s: &str, out: &mut Deltas) {
        self.raw_ok = false;
        self.text.push_str(s);
        self.splitter.push(s, out);
    }

    /// The `content` of a `done: true` event after incremental pieces: sources disagree on
    /// whether it is the whole text (LLM4FREE reads it as the final answer) or one last
    /// piece. A value that extends or repeats what arrived is the whole text; anything
    /// else is a last piece.
    fn on_final_content(&mut self, s: &str, out: &mut Deltas) {
        if let Some(suffix) = s.strip_prefix(self.text.as_str()) {
            let suffix = suffix.to_string();
            self.on_append(&suffix, out);
        } else if !self.text.ends_with(s) {
            self.on_append(s, out);
        }
    }

    /// A `content` value under the cumulative/incremental rule of [`Core::mode`]: a fixed
    /// mode never changes; `Unknown` ([`ContentDelivery::Auto`]) turns into one of them.
    fn on_content(&mut self, s: &str, out: &mut Deltas) {
        if s.is_empty() {
            return;
        }
        if self.mode == Mode::Incremental || self.text.is_empty() {
            self.on_append(s, out);
            return;
        }
        let old = self.text.as_bytes();
        if s.len() >= old.len() && s.as_bytes()[..old.len()] == *old {
            let suffix = &s[old.len()..];
            if !suffix.is_empty() || old.len() >= REWRITE_PREFIX {
                self.mode = Mode::Cumulative;
            }
            self.on_append(suffix, out);
            return;
        }
        let rewrite = self.mode == Mode::Cumulative
            || common_prefix(old, s.as_bytes()) >= REWRITE_PREFIX
            || contains_tail(&self.text, s);
        if rewrite {
            self.mode = Mode::Cumulative;
            self.splitter.rederive(s, out);
            self.text.clear();
            self.text.push_str(s);
        } else {
            self.mode = Mode::Incremental;
            self.on_append(s, out);
        }
    }

    /// A whole JSON completion body.
    fn on_json_body(&mut self, body: &[u8], out: &mut Deltas) {
        self.events += 1;
        let Ok(v) = serde_json::from_slice::<Value>(body) else {
            self.error = Some(NOT_AN_ANSWER.to_string());
            return;
        };
        let p = Parsed::from_value(&v);
        if let Some(e) = p.error {
            self.error = Some(e);
            return;
        }
        let text = match &p.content {
            Some(Text::Plain(t)) => t.as_ref(),
            _ => p.delta_content.as_deref().unwrap_or(""),
        };
        let has_answer = p.content.is_some() || p.has_choices;
        if !has_answer {
            self.error = Some(NOT_AN_ANSWER.to_string());
            return;
        }
        self.usable = true;
        // The whole text is known: no need to speculate about untagged text.
        if self.implicit_think && !text.contains("</think") && !text.contains("<answer>") {
            self.splitter.disable_implicit(out);
        }
        if let Some(r) = p.delta_reasoning.as_deref() {
            self.splitter.push_reasoning(r, out);
        }
        self.on_append(text, out);
        if let Some(f) = p.finish_reason {
            if !f.is_empty() {
                self.finish_reason = Some(f.into_owned());
            }
        }
        self.usage = p.usage;
        self.done = true;
    }
}

fn is_done_marker(t: &str) -> bool {
    matches!(t, "[DONE]" | "DONE" | "done")
}

/// Sniffing of the body's first non-whitespace byte.
#[derive(Debug)]
enum Body {
    /// Nothing but whitespace yet.
    Unknown,
    /// Buffered bytes: the JSON body in JSON mode, or an SSE-mode body that
    /// starts with `{` (kept until the first event proves it is SSE).
    Buffer(Vec<u8>),
    /// Streaming through the SSE decoder only.
    Stream,
}

/// Upstream body → ordered reasoning/content deltas.
#[derive(Debug)]
pub struct K2Decoder {
    format: UpstreamFormat,
    sse: SseDecoder,
    body: Body,
    core: Core,
    finished: bool,
}

impl K2Decoder {
    /// A decoder for one upstream body, reading `content` values as cumulative (the
    /// default [`ContentDelivery`]; see [`K2Decoder::with_delivery`]).
    pub fn new(format: UpstreamFormat, implicit_think: bool) -> Self {
        K2Decoder {
            format,
            sse: SseDecoder::new(),
            body: Body::Unknown,
            core: Core {
                splitter: Splitter::new(implicit_think),
                implicit_think,
                text: String::new(),
                raw: String::new(),
                raw_ok: false,
                mode: Mode::of(ContentDelivery::default()),
                content_field: false,
                done: false,
                usable: false,
                usage: None,
                finish_reason: None,
                error: None,
                events: 0,
            },
            finished: false,
        }
    }

    /// Read `content` values as `delivery` says (`upstream.content_delivery`). Set before
    /// the first byte is pushed.
    pub fn with_delivery(mut self, delivery: ContentDelivery) -> Self {
        self.core.mode = Mode::of(delivery);
        self
    }

    fn push_sse(&mut self, bytes: &[u8], out: &mut Deltas) {
        let core = &mut self.core;
        if let Err(e) = self
            .sse
            .push(bytes, |ev| core.on_event(ev.event, ev.data, out))
        {
            if core.error.is_none() {
                core.error = Some(e.to_string());
            }
        }
    }

    fn finish_sse(&mut self, out: &mut Deltas) {
        let core = &mut self.core;
        if let Err(e) = self.sse.finish(|ev| core.on_event(ev.event, ev.data, out)) {
            if core.error.is_none() {
                core.error = Some(e.to_string());
            }
        }
    }
}

impl Decoder for K2Decoder {
    /// Feed the next piece of the body; appends deltas to `out`.
    fn push(&mut self, bytes: &[u8], out: &mut Deltas) {
        if self.finished || self.core.error.is_some() || bytes.is_empty() {
            return;
        }
        if let Body::Unknown = self.body {
            match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
                None if self.format == UpstreamFormat::Json => {}
                None => {}
                Some(b'{') => self.body = Body::Buffer(Vec::new()),
                Some(_) if self.format == UpstreamFormat::Json => {
                    self.body = Body::Buffer(Vec::new())
                }
                Some(_) => self.body = Body::Stream,
            }
        }
        match (&mut self.body, self.format) {
            (Body::Buffer(buf), UpstreamFormat::Json) => {
                if buf.len() + bytes.len() > MAX_JSON_BODY {
                    self.core.error = Some(format!("upstream body exceeds {MAX_JSON_BODY} bytes"));
                    self.body = Body::Stream;
                } else {
                    buf.extend_from_slice(bytes);
                }
                return;
            }
            (Body::Buffer(buf), UpstreamFormat::Sse) => {
                if self.sse.events() > 0 || buf.len() + bytes.len() > MAX_JSON_BODY {
                    self.body = Body::Stream;
                } else {
                    buf.extend_from_slice(bytes);
                }
            }
            _ => {}
        }
        if self.format == UpstreamFormat::Json {
            // Whitespace before anything else in JSON mode: nothing to do.
            return;
        }
        self.push_sse(bytes, out);
    }

    /// The body ended cleanly: flush everything held back.
    fn finish(&mut self, out: &mut Deltas) {
        if self.finished {
            return;
        }
        self.finished = true;
        if self.core.error.is_none() {
            let body = std::mem::replace(&mut self.body, Body::Stream);
            match (body, self.format) {
                (Body::Buffer(buf), UpstreamFormat::Json) => {
                    // Leading whitespace is dropped, as it is when it arrives in a piece
                    // of its own: the answer must not depend on how the body was split.
                    let t = buf.trim_ascii_start();
                    if t.starts_with(b"data:") || t.starts_with(b"event:") || t.starts_with(b":") {
                        self.push_sse(t, out);
                        self.finish_sse(out);
                    } else {
                        self.core.on_json_body(&buf, out);
                    }
                }
                (Body::Unknown, UpstreamFormat::Json) => {
                    self.core.error = Some(NOT_AN_ANSWER.to_string())
                }
                (Body::Buffer(buf), UpstreamFormat::Sse) => {
                    self.finish_sse(out);
                    if self.sse.events() == 0 && self.core.error.is_none() {
                        self.core.on_json_body(&buf, out);
                    }
                }
                (_, UpstreamFormat::Sse) => self.finish_sse(out),
                (Body::Stream, UpstreamFormat::Json) => {}
            }
        }
        if self.core.error.is_none() {
            self.core.splitter.finish(out);
        }
    }

    /// A `[DONE]` / `done:true` (or a complete JSON body) was seen.
    fn done_seen(&self) -> bool {
        self.core.done
    }

    /// Upstream usage, when reported.
    fn usage(&self) -> Option<&Usage> {
        self.core.usage.as_ref()
    }

    /// Upstream's non-null `finish_reason`, when reported.
    fn finish_reason(&self) -> Option<&str> {
        self.core.finish_reason.as_deref()
    }

    /// An upstream error (error event, unparseable JSON body, SSE bound).
    fn error(&self) -> Option<&str> {
        self.core.error.as_deref()
    }

    /// Events seen (SSE events, or 1 for a JSON body).
    fn events(&self) -> u64 {
        self.core.events
    }

    /// Whether anything K2Think-like was seen (text, end marker, usage).
    fn usable(&self) -> bool {
        self.core.usable
    }

    /// See [`Splitter::reasoning_retracted`].
    fn reasoning_retracted(&self) -> bool {
        self.core.splitter.reasoning_retracted()
    }

    /// See [`Splitter::retracted_len`].
    fn retracted_len(&self) -> usize {
        self.core.splitter.retracted_len()
    }
}

/// Per-response options of [`ChatStream`].
#[derive(Debug, Clone)]
pub struct StreamOptions {
    /// The full response id (e.g. `chatcmpl-…`), used on every chunk.
    pub id: String,
    /// `created`, unix seconds.
    pub created: u64,
    /// The client's model name.
    pub model: String,
    pub reasoning: ReasoningMode,
    pub implicit_think: bool,
    /// `stream_options.include_usage`.
    pub include_usage: bool,
    /// Tool-call emulation (`None`: plain text, today's output). With
    /// `tool_choice: "none"` the text is not searched either.
    pub tools: Option<Arc<ToolSet>>,
    /// How the upstream's `content` values relate (`upstream.content_delivery`).
    pub delivery: ContentDelivery,
}

impl ChatStream<ChunkEncoder, K2Decoder> {
    /// An OpenAI chat-chunk transformer for one response.
    pub fn new(opts: StreamOptions, format: UpstreamFormat) -> Self {
        let enc = ChunkEncoder::new(&opts.id, opts.created, &opts.model, opts.reasoning)
            .with_usage(opts.include_usage);
        ChatStream::with_encoder(enc, format, opts.implicit_think, opts.tools.as_ref())
            .with_delivery(opts.delivery)
    }
}

impl<E: Encoder> ChatStream<E, K2Decoder> {
    /// A transformer for one K2Think response that writes with `enc`.
    pub fn with_encoder(
        enc: E,
        format: UpstreamFormat,
        implicit_think: bool,
        tools: Option<&Arc<ToolSet>>,
    ) -> Self {
        ChatStream::with_decoder(enc, K2Decoder::new(format, implicit_think), tools)
    }

    /// Read `content` values as `delivery` says (see [`K2Decoder::with_delivery`]).
    pub fn with_delivery(mut self, delivery: ContentDelivery) -> Self {
        self.decoder = self.decoder.with_delivery(delivery);
        self
    }
}

impl Completion<K2Decoder> {
    /// An aggregator for one K2Think upstream body.
    pub fn new(format: UpstreamFormat, implicit_think: bool) -> Self {
        Completion::with_decoder(K2Decoder::new(format, implicit_think))
    }

    /// Read `content` values as `delivery` says (see [`K2Decoder::with_delivery`]).
    pub fn with_delivery(mut self, delivery: ContentDelivery) -> Self {
        self.decoder = self.decoder.with_delivery(delivery);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::events::UPSTREAM_TIMEOUT;
    use crate::sse;
    use serde_json::json;

    /// What a client assembles from our output.
    #[derive(Debug, Default, Clone, PartialEq)]
    struct Assembled {
        reasoning: String,
        content: String,
        finish_reason: Option<String>,
        usage: Option<Value>,
        error: Option<String>,
        error_code: Option<String>,
        done: bool,
    }

    /// Decode our own SSE output, checking the OpenAI stream contract.
    fn assemble(out: &[u8]) -> Assembled {
        let mut events = Vec::new();
        let mut dec = SseDecoder::new();
        let mut collect =
            |e: sse::Event<'_>| events.push(String::from_utf8(e.data.to_vec()).unwrap());
        dec.push(out, &mut collect).unwrap();
        dec.finish(&mut collect).unwrap();
        assert!(out.ends_with(b"\n\n"), "output ends with a blank line");
        let mut a = Assembled::default();
        let mut id: Option<Value> = None;
        let mut finish_seen = false;
        for (n, data) in events.iter().enumerate() {
            assert!(!a.done, "[DONE] must be last");
            assert!(a.error.is_none(), "nothing after the error event");
            if data == "[DONE]" {
                assert!(finish_seen, "[DONE] after the finish chunk");
                a.done = true;
                continue;
            }
            let v: Value =
                serde_json::from_str(data).unwrap_or_else(|e| panic!("bad JSON {data}: {e}"));
            if let Some(err) = v.get("error") {
                assert_eq!(a.finish_reason.as_deref(), Some("error"));
                assert_eq!(err["type"], "upstream_error");
                assert_eq!(err["param"], Value::Null);
                a.error = Some(err["message"].as_str().unwrap().to_string());
                a.error_code = Some(err["code"].as_str().unwrap().to_string());
                continue;
            }
            assert_eq!(v["object"], "chat.completion.chunk");
            assert_eq!(v["model"], "MBZUAI-IFM/K2-Think-v2");
            assert_eq!(v["created"], 1_700_000_000u64);
            match &id {
                None => id = Some(v["id"].clone()),
                Some(i) => assert_eq!(&v["id"], i, "one id for every chunk"),
            }
            let choices = v["choices"].as_array().unwrap();
            if choices.is_empty() {
                assert!(finish_seen, "usage chunk after the finish chunk");
                assert!(a.usage.is_none());
                a.usage = Some(v["usage"].clone());
                continue;
            }
            assert!(!finish_seen, "finish_reason only on the last choice chunk");
            assert_eq!(choices.len(), 1);
            let c = &choices[0];
            assert_eq!(c["index"], 0);
            let delta = c["delta"].as_object().unwrap();
            if n == 0 {
                assert_eq!(c["delta"], json!({"role": "assistant", "content": ""}));
                continue;
            }
            assert!(delta.get("role").is_none(), "role only on the first chunk");
            if let Some(f) = c["finish_reason"].as_str() {
                assert!(delta.is_empty());
                finish_seen = true;
                a.finish_reason = Some(f.to_string());
                continue;
            }
            assert_eq!(delta.len(), 1, "one field per delta: {data}");
            if let Some(r) = delta.get("reasoning_content") {
                let r = r.as_str().unwrap();
                assert!(!r.is_empty(), "no empty deltas");
                a.reasoning.push_str(r);
            } else {
                let t = delta["content"].as_str().unwrap();
                assert!(!t.is_empty(), "no empty deltas");
                a.content.push_str(t);
            }
        }
        assert_eq!(a.done, a.error.is_none(), "[DONE] exactly when no error");
        a
    }

    fn opts(reasoning: ReasoningMode, implicit_think: bool) -> StreamOptions {
        StreamOptions {
            id: "chatcmpl-test".into(),
            created: 1_700_000_000,
            model: "MBZUAI-IFM/K2-Think-v2".into(),
            reasoning,
            implicit_think,
            include_usage: true,
            tools: None,
            delivery: ContentDelivery::default(),
        }
    }

    fn stream(
        pieces: &[&[u8]],
        format: UpstreamFormat,
        o: StreamOptions,
    ) -> (Vec<u8>, Result<(), String>) {
        let mut s = ChatStream::new(o, format);
        let mut out = Vec::new();
        s.start(&mut out);
        for p in pieces {
            s.push(p, &mut out);
        }
        let r = s.finish(&mut out);
        (out, r)
    }

    struct Fixture {
        name: String,
        input: Vec<u8>,
        format: UpstreamFormat,
        implicit: bool,
        /// `content_delivery` of the expected file (default: cumulative), the reading the
        /// expected answer holds for.
        delivery: ContentDelivery,
        expected: Value,
    }

    fn fixtures() -> Vec<Fixture> {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/upstream");
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".expected.json"))
            .collect();
        names.sort();
        assert!(names.len() >= 14, "fixtures present");
        names
            .into_iter()
            .map(|n| {
                let base = n.trim_end_matches(".expected.json").to_string();
                let expected: Value =
                    serde_json::from_slice(&std::fs::read(format!("{dir}/{n}")).unwrap()).unwrap();
                let (ext, format) = match expected["format"].as_str().unwrap() {
                    "json" => ("json", UpstreamFormat::Json),
                    _ => ("sse", UpstreamFormat::Sse),
                };
                let delivery = match expected.get("content_delivery") {
                    Some(d) => serde_json::from_value(d.clone()).unwrap(),
                    None => ContentDelivery::default(),
                };
                Fixture {
                    input: std::fs::read(format!("{dir}/{base}.{ext}")).unwrap(),
                    name: base,
                    format,
                    implicit: expected["implicit_think"].as_bool().unwrap(),
                    delivery,
                    expected,
                }
            })
            .collect()
    }

    impl Fixture {
        fn check_stream(&self, pieces: &[&[u8]], what: &str) -> Assembled {
            self.check_stream_as(self.delivery, pieces, what)
        }

        fn check_stream_as(
            &self,
            delivery: ContentDelivery,
            pieces: &[&[u8]],
            what: &str,
        ) -> Assembled {
            let o = StreamOptions {
                delivery,
                ..opts(ReasoningMode::Field, self.implicit)
            };
            let (out, r) = stream(pieces, self.format, o);
            let a = assemble(&out);
            let e = &self.expected;
            let ctx = format!("{} ({what})", self.name);
            let want_reasoning = e.get("stream_reasoning").unwrap_or(&e["reasoning"]);
            assert_eq!(
                a.reasoning,
                want_reasoning.as_str().unwrap(),
                "reasoning: {ctx}"
            );
            assert_eq!(a.content, e["content"].as_str().unwrap(), "content: {ctx}");
            assert_eq!(
                a.finish_reason.as_deref(),
                e["finish_reason"].as_str(),
                "finish: {ctx}"
            );
            // The upstream's counts as they were; `reasoning_tokens`, when the upstream
            // gives none, estimated from the reasoning streamed.
            let mut usage = a.usage.clone().unwrap_or(Value::Null);
            let counted = e["usage"].get("completion_tokens_details").is_some();
            if let Some(u) = usage.as_object_mut().filter(|_| !counted) {
                let details = u.remove("completion_tokens_details");
                let mut est = crate::pipeline::tokens::Estimate::default();
                est.add(&a.reasoning);
                let completion = u["completion_tokens"].as_u64().unwrap_or(0);
                assert_eq!(
                    details,
                    Some(serde_json::json!({"reasoning_tokens": est.tokens().min(completion)})),
                    "reasoning tokens: {ctx}"
                );
            }
            assert_eq!(usage, e["usage"], "usage: {ctx}");
            assert_eq!(a.error.as_deref(), e["error"].as_str(), "error: {ctx}");
            if a.error.is_some() {
                // an upstream error event or a body that ended without an answer
                assert_eq!(
                    a.error_code.as_deref(),
                    Some("upstream_stream_error"),
                    "{ctx}"
                );
            }
            assert_eq!(r.err().as_deref(), e["error"].as_str(), "result: {ctx}");
            a
        }

        /// (reasoning, content, finish, usage, error) straight from the decoder.
        fn decode(
            &self,
            pieces: &[&[u8]],
        ) -> (
            String,
            String,
            Option<String>,
            Option<Usage>,
            Option<String>,
        ) {
            let mut d = K2Decoder::new(self.format, self.implicit).with_delivery(self.delivery);
            let mut out = Deltas::new();
            for p in pieces {
                d.push(p, &mut out);
            }
            d.finish(&mut out);
            let fr = d.finish_reason().map(str::to_string);
            (
                out.reasoning_text(),
                out.content_text(),
                fr,
                d.usage().cloned(),
                d.error().map(str::to_string),
            )
        }

        fn check_complete(&self, pieces: &[&[u8]], what: &str) {
            let mut c = Completion::new(self.format, self.implicit).with_delivery(self.delivery);
            for p in pieces {
                c.push(p);
            }
            let e = &self.expected;
            let ctx = format!("{} ({what})", self.name);
            match c.finish() {
                Ok(r) => {
                    assert!(e["error"].is_null(), "{ctx}");
                    assert_eq!(
                        r.reasoning,
                        e["reasoning"].as_str().unwrap(),
                        "reasoning: {ctx}"
                    );
                    assert_eq!(r.content, e["content"].as_str().unwrap(), "content: {ctx}");
                    assert_eq!(
                        Some(r.finish_reason.as_str()),
                        e["finish_reason"].as_str(),
                        "{ctx}"
                    );
                    let u = r
                        .usage
                        .map(|u| serde_json::to_value(u).unwrap())
                        .unwrap_or(Value::Null);
                    assert_eq!(u, e["usage"], "usage: {ctx}");
                }
                Err(m) => assert_eq!(Some(m.as_str()), e["error"].as_str(), "{ctx}"),
            }
        }
    }

    #[test]
    fn fixtures_whole_bytewise_and_every_split() {
        for f in fixtures() {
            let input = &f.input[..];
            let whole = f.check_stream(&[input], "whole");
            f.check_complete(&[input], "whole");
            let bytes: Vec<&[u8]> = input.chunks(1).collect();
            assert_eq!(f.check_stream(&bytes, "byte by byte"), whole);
            f.check_complete(&bytes, "byte by byte");
            for i in 0..=input.len() {
                let (a, b) = input.split_at(i);
                assert_eq!(f.check_stream(&[a, b], &format!("split {i}")), whole);
                f.check_complete(&[a, b], &format!("split {i}"));
            }
            if input.len() <= 520 {
                // Every pair of boundaries, at the decoder level (cheaper than
                // decoding our own SSE output 100k times).
                let base = f.decode(&[input]);
                for i in 0..=input.len() {
                    for j in i..=input.len() {
                        let (a, rest) = input.split_at(i);
                        let (b, c) = rest.split_at(j - i);
                        assert_eq!(f.decode(&[a, b, c]), base, "{} split {i},{j}", f.name);
                    }
                }
            }
        }
    }

    #[test]
    fn fixtures_decode_the_same_with_the_auto_guess() {
        // None of the fixtures holds repetitive text: `auto` guesses each reading right.
        for f in fixtures() {
            let whole = f.check_stream(&[&f.input], "whole");
            let bytes: Vec<&[u8]> = f.input.chunks(1).collect();
            assert_eq!(
                f.check_stream_as(ContentDelivery::Auto, &[&f.input], "auto, whole"),
                whole
            );
            assert_eq!(
                f.check_stream_as(ContentDelivery::Auto, &bytes, "auto, byte by byte"),
                whole
            );
        }
    }

    #[test]
    fn fixtures_drop_and_inline_modes() {
        for f in fixtures() {
            let e = &f.expected;
            let reasoning = e
                .get("stream_reasoning")
                .unwrap_or(&e["reasoning"])
                .as_str()
                .unwrap();
            let content = e["content"].as_str().unwrap();
            let opts = |reasoning, implicit| StreamOptions {
                delivery: f.delivery,
                ..opts(reasoning, implicit)
            };
            for pieces in [vec![&f.input[..]], f.input.chunks(7).collect()] {
                let (out, _) = stream(&pieces, f.format, opts(ReasoningMode::Drop, f.implicit));
                let a = assemble(&out);
                assert!(
                    !String::from_utf8_lossy(&out).contains("reasoning_content"),
                    "{}",
                    f.name
                );
                assert_eq!(
                    (a.reasoning.as_str(), a.content.as_str()),
                    ("", content),
                    "{}",
                    f.name
                );
                let (out, _) = stream(&pieces, f.format, opts(ReasoningMode::Inline, f.implicit));
                let a = assemble(&out);
                let want = if reasoning.is_empty() {
                    content.to_string()
                } else if content.is_empty() {
                    format!("<think>{reasoning}</think>{content}")
                } else {
                    format!("<think>{reasoning}</think>\n\n{content}")
                };
                assert_eq!(
                    (a.reasoning.as_str(), a.content.as_str()),
                    ("", want.as_str()),
                    "{}",
                    f.name
                );
            }
        }
    }

    #[test]
    fn streams_answer_before_it_is_closed() {
        let mut s = ChatStream::new(opts(ReasoningMode::Field, true), UpstreamFormat::Sse);
        let mut out = Vec::new();
        s.start(&mut out);
        assert!(!s.output_started());
        s.push(
            b"data: {\"content\":\"<think>a</think><answer>Hel\"}\n\n",
            &mut out,
        );
        assert!(s.output_started());
        let mut partial = out.clone();
        partial.extend_from_slice(b"data: [DONE]\n\n");
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(text.contains("{\"reasoning_content\":\"a\"}"), "{text}");
        assert!(
            text.ends_with("{\"content\":\"Hel\"},\"logprobs\":null,\"finish_reason\":null}]}\n\n"),
            "{text}"
        );
        let n = out.len();
        s.push(
            b"data: {\"content\":\"<think>a</think><answer>Hello<\"}\n\n",
            &mut out,
        );
        assert!(String::from_utf8_lossy(&out[n..]).contains("{\"content\":\"lo\"}"));
        let n = out.len();
        s.push(
            b"data: {\"content\":\"<think>a</think><answer>Hello</answer>\"}\n\n",
            &mut out,
        );
        assert_eq!(out.len(), n, "the closing tag writes nothing");
        assert_eq!(s.finish(&mut out), Ok(()));
        let a = assemble(&out);
        assert_eq!((a.reasoning.as_str(), a.content.as_str()), ("a", "Hello"));
    }

    #[test]
    fn events_in_a_json_labelled_body_after_whitespace_do_not_depend_on_the_split() {
        // Found by the `chat_stream` fuzz target: whole, the leading space used to hide
        // the events; split after it, they were decoded.
        let body: &[u8] = b" data: {\"content\":\"x\"}\n\n";
        for cut in 0..=body.len() {
            let (out, r) = stream(
                &[&body[..cut], &body[cut..]],
                UpstreamFormat::Json,
                opts(ReasoningMode::Field, false),
            );
            assert_eq!(r, Ok(()), "split at {cut}");
            assert_eq!(assemble(&out).content, "x", "split at {cut}");
        }
    }

    #[test]
    fn fail_writes_error_ending_without_done() {
        let mut s = ChatStream::new(opts(ReasoningMode::Field, true), UpstreamFormat::Sse);
        let mut out = Vec::new();
        s.push(b"data: {\"content\":\"<think>x</think>ok\"}\n\n", &mut out);
        s.fail(UPSTREAM_TIMEOUT, "upstream idle timeout", &mut out);
        // Later calls write nothing.
        s.push(b"data: {\"content\":\"more\"}\n\n", &mut out);
        let n = out.len();
        assert_eq!(s.finish(&mut out), Err("upstream idle timeout".to_string()));
        assert_eq!(out.len(), n);
        let a = assemble(&out);
        assert_eq!(a.error.as_deref(), Some("upstream idle timeout"));
        assert_eq!(a.error_code.as_deref(), Some("upstream_timeout"));
        assert_eq!(a.content, "ok");
        assert!(!String::from_utf8_lossy(&out).contains("[DONE]"));
    }

    #[test]
    fn nothing_usable_is_an_error() {
        for (body, format) in [
            (
                &b"<html><body>Just a moment...</body></html>"[..],
                UpstreamFormat::Sse,
            ),
            (b"", UpstreamFormat::Sse),
            (b": only comments\n\n", UpstreamFormat::Sse),
            (b"<html>challenge</html>", UpstreamFormat::Json),
            (b"{\"unexpected\": 1}", UpstreamFormat::Json),
            (b"", UpstreamFormat::Json),
        ] {
            let (out, r) = stream(&[body], format, opts(ReasoningMode::Field, true));
            assert_eq!(r, Err(NOT_AN_ANSWER.to_string()), "{body:?}");
            assert_eq!(assemble(&out).error.as_deref(), Some(NOT_AN_ANSWER));
        }
        let (_, r) = stream(
            &[b"{\"detail\":\"Not authenticated\"}"],
            UpstreamFormat::Json,
            opts(ReasoningMode::Field, true),
        );
        assert_eq!(r, Err("Not authenticated".to_string()));
        let (_, r) = stream(
            &[b"{\"detail\":{\"error\":{\"message\":\"boom\",\"type\":\"api_error\"}}}"],
            UpstreamFormat::Json,
            opts(ReasoningMode::Field, true),
        );
        assert_eq!(r, Err("boom".to_string()));
        let (_, r) = stream(
            &[b"event: error\ndata: {\"message\":\"quota\"}\n\n"],
            UpstreamFormat::Sse,
            opts(ReasoningMode::Field, true),
        );
        assert_eq!(r, Err("quota".to_string()));
    }

    #[test]
    fn mismatched_framing_is_recognised() {
        // A JSON body in SSE mode and an SSE body in JSON mode.
        let json = br#"{"choices":[{"message":{"content":"<think>r</think><answer>a</answer>"}}]}"#;
        let sse_body = b"data: {\"content\":\"<think>r</think>a\"}\n\ndata: [DONE]\n\n";
        for (body, format) in [
            (&json[..], UpstreamFormat::Sse),
            (&sse_body[..], UpstreamFormat::Json),
        ] {
            let (out, r) = stream(&[body], format, opts(ReasoningMode::Field, true));
            assert_eq!(r, Ok(()));
            let a = assemble(&out);
            assert_eq!((a.reasoning.as_str(), a.content.as_str()), ("r", "a"));
        }
    }

    #[test]
    fn data_lines_without_blank_separators() {
        let body = b"data: {\"content\":\"<think>r</think>\"}\ndata: {\"content\":\"<think>r</think>Hi\"}\ndata: [DONE]\n";
        let (out, r) = stream(
            &[body],
            UpstreamFormat::Sse,
            opts(ReasoningMode::Field, true),
        );
        assert_eq!(r, Ok(()));
        let a = assemble(&out);
        assert_eq!((a.reasoning.as_str(), a.content.as_str()), ("r", "Hi"));
    }

    #[test]
    fn long_line_becomes_upstream_error() {
        let mut d = K2Decoder::new(UpstreamFormat::Sse, true);
        let mut out = Deltas::new();
        d.push(b"data: {\"content\":\"ok\"}\n\n", &mut out);
        let big = vec![b'a'; crate::sse::DEFAULT_MAX_LINE + 1];
        d.push(b"data: ", &mut out);
        d.push(&big, &mut out);
        d.finish(&mut out);
        assert!(d.error().unwrap().contains("exceeds"), "{:?}", d.error());
    }

    #[test]
    fn auto_guesses_cumulative_incremental_and_rewrites() {
        let run = |events: &[&str]| {
            let mut d =
                K2Decoder::new(UpstreamFormat::Sse, false).with_delivery(ContentDelivery::Auto);
            let mut out = Deltas::new();
            for e in events {
                let body = format!("data: {}\n\n", json!({ "content": e }));
                d.push(body.as_bytes(), &mut out);
            }
            d.finish(&mut out);
            (out.reasoning_text(), out.content_text())
        };
        let s = |r: &str, c: &str| (r.to_string(), c.to_string());
        // Cumulative.
        assert_eq!(
            run(&["Hel", "Hello", "Hello wor", "Hello world"]),
            s("", "Hello world")
        );
        // Incremental (sticky, even when a later piece repeats the start).
        assert_eq!(
            run(&["Hello", " world", "Hello"]),
            s("", "Hello worldHello")
        );
        // Repeated identical cumulative value: no duplication.
        assert_eq!(
            run(&["Hello world", "Hello world", "Hello world!"]),
            s("", "Hello world!")
        );
        // Empty first value does not decide the mode.
        assert_eq!(run(&["", "Hel", "lo"]), s("", "Hello"));
        // Head rewrite with a short common prefix but the same tail.
        assert_eq!(
            run(&[
                "<think>The user wants a greeting",
                "<think duration=\"2\">The user wants a greeting. Done</think>Hi"
            ]),
            s("The user wants a greeting. Done", "Hi")
        );
        // Rewrite that changes already-sent text: never re-emitted, nothing after it lost.
        assert_eq!(
            run(&[
                "<answer>Hello there",
                "<answer>Hello where",
                "<answer>Hello where, friend"
            ]),
            s("", "Hello there, friend")
        );
    }

    /// An SSE body of `content` values (`{"done": true}` and `[DONE]` after them).
    fn content_body(values: &[String]) -> Vec<u8> {
        let mut body = Vec::new();
        for v in values {
            sse::write_data(&mut body, json!({ "content": v }).to_string().as_bytes());
        }
        sse::write_data(&mut body, br#"{"done":true}"#);
        sse::write_data(&mut body, b"[DONE]");
        body
    }

    /// `text` cut into pieces of `n` characters.
    fn pieces_of(text: &str, n: usize) -> Vec<String> {
        let chars: Vec<char> = text.chars().collect();
        chars.chunks(n).map(|c| c.iter().collect()).collect()
    }

    /// Each prefix of `text` that ends a piece of `n` characters: what a cumulative
    /// upstream sends.
    fn snapshots_of(text: &str, n: usize) -> Vec<String> {
        let mut so_far = String::new();
        pieces_of(text, n)
            .into_iter()
            .map(|p| {
                so_far.push_str(&p);
                so_far.clone()
            })
            .collect()
    }

    /// `body` read as `delivery`, streamed and collected, whole and split at every byte
    /// boundary: each time exactly `(reasoning, content)` and `finish_reason: stop`.
    fn assert_decodes_at_every_split(delivery: ContentDelivery, body: &[u8], want: (&str, &str)) {
        for i in 0..=body.len() {
            let (a, b) = body.split_at(i);
            let o = StreamOptions {
                delivery,
                ..opts(ReasoningMode::Field, false)
            };
            let (out, r) = stream(&[a, b], UpstreamFormat::Sse, o);
            assert_eq!(r, Ok(()), "split at {i}");
            let got = assemble(&out);
            assert_eq!(
                (got.reasoning.as_str(), got.content.as_str()),
                want,
                "{delivery:?}, stream split at {i}"
            );
            assert_eq!(got.finish_reason.as_deref(), Some("stop"), "split at {i}");
            let mut c = Completion::new(UpstreamFormat::Sse, false).with_delivery(delivery);
            c.push(a);
            c.push(b);
            let r = c.finish().expect("an answer");
            assert_eq!(
                (r.reasoning.as_str(), r.content.as_str()),
                want,
                "{delivery:?}, non-stream split at {i}"
            );
            assert_eq!(r.finish_reason, "stop", "split at {i}");
        }
    }

    #[test]
    fn repetitive_incremental_text_arrives_whole_when_read_as_incremental() {
        // Issue 16: 200 `=` in 32-byte pieces arrived as a few characters, since the
        // second piece "extends" the first one as a cumulative value would.
        let equals = "=".repeat(200);
        let body = content_body(&pieces_of(&equals, 32));
        assert_decodes_at_every_split(ContentDelivery::Incremental, &body, ("", &equals));
        // A repeated phrase in pieces that do not line up with it.
        let phrase = "abc".repeat(400);
        let body = content_body(&pieces_of(&phrase, 7));
        assert_decodes_at_every_split(ContentDelivery::Incremental, &body, ("", &phrase));
        // With reasoning, and a `done` event that repeats the whole text (the mock's
        // incremental stream): nothing doubled.
        let text = format!("<think>{}</think>{}", "ab".repeat(60), "=".repeat(300));
        let mut values = pieces_of(&text, 32);
        let mut body = Vec::new();
        for v in values.drain(..) {
            sse::write_data(&mut body, json!({ "content": v }).to_string().as_bytes());
        }
        sse::write_data(
            &mut body,
            json!({"done": true, "content": text})
                .to_string()
                .as_bytes(),
        );
        let (reasoning, answer) = ("ab".repeat(60), "=".repeat(300));
        assert_decodes_at_every_split(ContentDelivery::Incremental, &body, (&reasoning, &answer));
    }

    #[test]
    fn repetitive_cumulative_text_arrives_once_when_read_as_cumulative() {
        let equals = "=".repeat(200);
        let body = content_body(&snapshots_of(&equals, 32));
        assert_decodes_at_every_split(ContentDelivery::Cumulative, &body, ("", &equals));
        let phrase = "abc".repeat(100);
        let body = content_body(&snapshots_of(&phrase, 7));
        assert_decodes_at_every_split(ContentDelivery::Cumulative, &body, ("", &phrase));
        // A repeated value (no growth) adds nothing; a shorter one is a rewrite.
        let values = ["====", "====", "========", "======"].map(String::from);
        assert_decodes_at_every_split(
            ContentDelivery::Cumulative,
            &content_body(&values),
            ("", "========"),
        );
    }

    #[test]
    fn the_auto_guess_is_fooled_by_repetitive_text() {
        // Documented: content alone cannot tell "==" + "====" from "==" → "====".
        let run = |delivery, body: &[u8]| {
            let mut c = Completion::new(UpstreamFormat::Sse, false).with_delivery(delivery);
            c.push(body);
            c.finish().map(|r| r.content)
        };
        let equals = "=".repeat(200);
        let incremental = content_body(&pieces_of(&equals, 32));
        assert_ne!(run(ContentDelivery::Auto, &incremental), Ok(equals.clone()));
        assert_eq!(
            run(ContentDelivery::Incremental, &incremental),
            Ok(equals.clone())
        );
        // Non-repetitive text is guessed right either way.
        let text = "The quick brown fox jumps over the lazy dog, twice.";
        for (body, delivery) in [
            (
                content_body(&pieces_of(text, 8)),
                ContentDelivery::Incremental,
            ),
            (
                content_body(&snapshots_of(text, 8)),
                ContentDelivery::Cumulative,
            ),
        ] {
            assert_eq!(run(ContentDelivery::Auto, &body), Ok(text.to_string()));
            assert_eq!(run(delivery, &body), Ok(text.to_string()));
        }
    }

    #[test]
    fn openai_deltas_and_raw_data_are_appended_in_every_mode() {
        let equals = "=".repeat(64);
        let mut deltas = Vec::new();
        let mut raw = Vec::new();
        for p in pieces_of(&equals, 16) {
            let ev = json!({"choices": [{"delta": {"content": p}}]});
            sse::write_data(&mut deltas, ev.to_string().as_bytes());
            sse::write_data(&mut raw, p.as_bytes());
        }
        sse::write_data(&mut deltas, b"[DONE]");
        sse::write_data(&mut raw, b"[DONE]");
        for delivery in [
            ContentDelivery::Cumulative,
            ContentDelivery::Incremental,
            ContentDelivery::Auto,
        ] {
            assert_decodes_at_every_split(delivery, &deltas, ("", &equals));
            assert_decodes_at_every_split(delivery, &raw, ("", &equals));
        }
    }

    #[test]
    fn openai_reasoning_disables_speculation() {
        let body = concat!(
            "data: {\"choices\":[{\"delta\":{\"reasoning_content\":\"think\"}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"content\":\"answer\"}}]}\n\n",
            "data: [DONE]\n\n"
        );
        let (out, r) = stream(
            &[body.as_bytes()],
            UpstreamFormat::Sse,
            opts(ReasoningMode::Field, true),
        );
        assert_eq!(r, Ok(()));
        let a = assemble(&out);
        assert_eq!(
            (a.reasoning.as_str(), a.content.as_str()),
            ("think", "answer")
        );
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let atoms: &[&[u8]] = &[
            b"data: ",
            b"data:",
            b"\n",
            b"\r",
            b"\r\n",
            b"\n\n",
            b"{\"content\":\"",
            b"\"}",
            b"<think>",
            b"</think>",
            b"<answer>",
            b"</answer>",
            b"<details type=\"reasoning\">",
            b"</details>",
            b"<summary>",
            b"\\n> ",
            b"[DONE]",
            b"{\"done\":true}",
            b"{\"error\":\"x\"}",
            b"{\"choices\":[{\"delta\":{\"content\":\"a\"}}]}",
            b"\xff",
            b"\xe4\xbd",
            b"\xa0",
            b"\xef\xbb\xbf",
            b"a",
            b" ",
            b"{",
            b"}",
            b"\"",
            b"\\",
            b"event: error\n",
            b"{\"usage\":{\"prompt_tokens\":1}}",
            b"-1",
            b":",
        ];
        for round in 0..3000 {
            let n = (next() % 40) as usize;
            let mut body = Vec::new();
            for _ in 0..n {
                if next() % 4 == 0 {
                    body.push((next() & 0xff) as u8);
                } else {
                    body.extend_from_slice(atoms[(next() % atoms.len() as u64) as usize]);
                }
            }
            let format = if round % 3 == 0 {
                UpstreamFormat::Json
            } else {
                UpstreamFormat::Sse
            };
            let mode = [
                ReasoningMode::Field,
                ReasoningMode::Inline,
                ReasoningMode::Drop,
            ][round % 3];
            let pieces: Vec<&[u8]> = body.chunks(1 + (next() % 9) as usize).collect();
            let delivery = [
                ContentDelivery::Cumulative,
                ContentDelivery::Incremental,
                ContentDelivery::Auto,
            ][(round / 3) % 3];
            let o = StreamOptions {
                delivery,
                ..opts(mode, round % 2 == 0)
            };
            let (out, _) = stream(&pieces, format, o);
            assemble(&out);
            let mut c = Completion::new(format, round % 2 == 1).with_delivery(delivery);
            for p in &pieces {
                c.push(p);
            }
            if let Ok(r) = c.finish() {
                let v: Value = serde_json::from_slice(&r.to_json("id", 1, "m", mode)).unwrap();
                assert_eq!(v["object"], "chat.completion");
            }
            let mut sp = Splitter::new(round % 2 == 0);
            let mut d = Deltas::new();
            sp.push(&String::from_utf8_lossy(&body), &mut d);
            sp.finish(&mut d);
        }
    }

    #[test]
    fn done_event_with_the_whole_text_after_incremental_pieces_is_not_repeated() {
        let input = "data: {\"content\":\"<think>r</think>\"}\n\n\
                     data: {\"content\":\"<answer>Hi\"}\n\n\
                     data: {\"content\":\" there</answer>\"}\n\n\
                     data: {\"done\":true,\"content\":\"<think>r</think><answer>Hi there</answer>\"}\n\n";
        for last in ["", " there</answer>"] {
            let body = if last.is_empty() {
                input.to_string()
            } else {
                input.replace("<think>r</think><answer>Hi there</answer>", last)
            };
            let mut d = K2Decoder::new(UpstreamFormat::Sse, true)
                .with_delivery(ContentDelivery::Incremental);
            let mut out = Deltas::new();
            d.push(body.as_bytes(), &mut out);
            d.finish(&mut out);
            assert_eq!(out.reasoning_text(), "r");
            assert_eq!(out.content_text(), "Hi there", "final value {last:?}");
        }
        // a genuinely new last piece is appended
        let body = "data: {\"content\":\"Hello\"}\n\ndata: {\"content\":\" wor\"}\n\ndata: {\"done\":true,\"content\":\"ld\"}\n\n";
        let mut d =
            K2Decoder::new(UpstreamFormat::Sse, false).with_delivery(ContentDelivery::Incremental);
        let mut out = Deltas::new();
        d.push(body.as_bytes(), &mut out);
        d.finish(&mut out);
        assert_eq!(out.content_text(), "Hello world");
    }

    /// (reasoning, content) the decoder produces for `events` (each a JSON payload), fed
    /// whole and split at every byte, which must agree; `content` read as cumulative.
    fn decode_events(events: &[&str]) -> (String, String) {
        decode_events_as(ContentDelivery::Cumulative, events)
    }

    /// [`decode_events`] with `content` read as `delivery` says.
    fn decode_events_as(delivery: ContentDelivery, events: &[&str]) -> (String, String) {
        let mut body = Vec::new();
        for e in events {
            sse::write_data(&mut body, e.as_bytes());
        }
        let run = |pieces: &[&[u8]]| {
            let mut d = K2Decoder::new(UpstreamFormat::Sse, true).with_delivery(delivery);
            let mut out = Deltas::new();
            for p in pieces {
                d.push(p, &mut out);
            }
            d.finish(&mut out);
            assert!(d.error().is_none(), "{:?}", d.error());
            (out.reasoning_text(), out.content_text())
        };
        let whole = run(&[&body]);
        for i in 0..=body.len() {
            assert_eq!(run(&[&body[..i], &body[i..]]), whole, "split at {i}");
        }
        whole
    }

    #[test]
    fn cumulative_literal_fast_path_decodes_escapes_in_the_new_suffix() {
        let got = decode_events(&[
            r#"{"content":"<think>a\"b"}"#,
            r#"{"content":"<think>a\"b\n\u00e9\ud83d\ude00 c</think>"}"#,
            r#"{"content":"<think>a\"b\n\u00e9\ud83d\ude00 c</think><answer>x\\y\tz"}"#,
            r#"{"content":"<think>a\"b\n\u00e9\ud83d\ude00 c</think><answer>x\\y\tz</answer>"}"#,
        ]);
        assert_eq!(got, ("a\"b\né😀 c".to_string(), "x\\y\tz".to_string()));
    }

    #[test]
    fn cumulative_literal_with_another_escaping_of_the_same_text_falls_back() {
        // The same text escaped differently (`\u00e9` then `é`, `\/` then `/`): the raw
        // prefix check fails, the whole value is decoded and compared as text.
        let got = decode_events(&[
            r#"{"content":"<think>caf\u00e9 a\/b"}"#,
            r#"{"content":"<think>café a/b more</think>"}"#,
            r#"{"content":"<think>caf\u00e9 a\/b more</think>done"}"#,
        ]);
        assert_eq!(got, ("café a/b more".to_string(), "done".to_string()));
    }

    #[test]
    fn cumulative_literal_after_other_channels_is_not_taken_as_an_extension() {
        // An OpenAI delta between two `content` values changes the text without changing
        // the remembered literal: the next value must be checked against the text.
        let got = decode_events(&[
            r#"{"content":"<think>r</think>ab"}"#,
            r#"{"choices":[{"delta":{"content":"X"}}]}"#,
            r#"{"content":"<think>r</think>abXc"}"#,
        ]);
        assert_eq!(got, ("r".to_string(), "abXc".to_string()));
    }

    #[test]
    fn incremental_values_never_use_the_cumulative_fast_path() {
        let events = [
            r#"{"content":"<think>one "}"#,
            r#"{"content":"two</think>"}"#,
            r#"{"content":"<think>one \"x"}"#,
        ];
        let want = ("one two".to_string(), "<think>one \"x".to_string());
        for delivery in [ContentDelivery::Incremental, ContentDelivery::Auto] {
            assert_eq!(decode_events_as(delivery, &events), want, "{delivery:?}");
        }
    }
}
