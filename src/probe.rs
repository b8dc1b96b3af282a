//! `k2proxy probe`: what the checks of the configured upstream found, and how it is shown.
//!
//! Pure: the exchanges themselves are `proxy::probe`, which hands each upstream answer in
//! here as it arrives ([`AnswerObserver`]) and gets a judged [`Check`] back. A [`Report`]
//! is rendered as a table for people ([`Report::table`]) or as JSON for monitoring
//! ([`Report::to_json`]).
//!
//! A chat check is ok when the status is 2xx, the answer decodes (the same [`Completion`]
//! a non-stream request uses) to a non-empty text, and the body ended cleanly: an end
//! marker then EOF, a plain EOF, or an end marker then a torn-down or silent connection
//! (k2think-protocol.md §0.5 #8). A cut or a timeout before any end marker fails it.

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::{json, Value};

use crate::pipeline::complete::Completion;
use crate::provider::error_message;
use crate::provider::k2think::decode::{ContentDelivery, K2Decoder, UpstreamFormat};
use crate::provider::k2think::error_detail;
use crate::sse::SseDecoder;

/// The history every chat check sends: two turns, so a rule about earlier assistant
/// messages (the thinking field, §0.5 #3) is exercised.
pub const HISTORY: [(&str, &str); 3] = [
    ("user", "Reply with the single word OK."),
    ("assistant", "OK"),
    ("user", "Once more: reply with the single word OK."),
];

/// Characters of the decoded answer kept in the report.
pub const ANSWER_HEAD: usize = 60;
/// Bytes of a body kept for a second look (a JSON answer, or an SSE body not yet proven
/// to be SSE); past it the answer is junk for a probe.
const KEEP_LIMIT: usize = 1 << 20;
/// The warning for an answer that is not what the upstream's text holds.
const MISMATCH: &str = "the decoded answer differs from the answer in the upstream's final text";
/// Shared prefix (bytes) that makes a `content` value that does not extend the text a
/// cumulative rewrite (as the decoder's `auto` reading rules it).
const REWRITE_PREFIX: usize = 8;

/// An OpenAI chat request body with [`HISTORY`], for `model` (a public id).
pub fn chat_request_body(model: &str, stream: bool) -> Vec<u8> {
    let messages: Vec<Value> = HISTORY
        .iter()
        .map(|(role, content)| json!({"role": role, "content": content}))
        .collect();
    json!({"model": model, "stream": stream, "messages": messages})
        .to_string()
        .into_bytes()
}

/// The name of the chat check of `upstream_model`.
pub fn chat_check_name(upstream_model: &str, stream: bool) -> String {
    let how = if stream { "stream" } else { "non-stream" };
    format!("chat {upstream_model} ({how})")
}

/// Result of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    Failed,
    /// Not applicable to this caller (a model list the upstream does not serve to it);
    /// does not fail the run.
    Skipped,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::Failed => "failed",
            Verdict::Skipped => "skipped",
        }
    }
}

/// What a check looked at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The upstream token of user mode.
    Token,
    /// `GET /api/models`, expected to list these upstream ids.
    Models { wanted: Vec<String> },
    /// One chat to `upstream_model`, which these public ids use.
    Chat {
        upstream_model: String,
        public_ids: Vec<String>,
        stream: bool,
    },
}

/// What a model list held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelList {
    pub listed: Vec<String>,
    /// Configured upstream ids it lacks.
    pub missing: Vec<String>,
}

/// What was seen besides status and detail.
#[derive(Debug, Clone, PartialEq)]
pub enum Observed {
    Nothing,
    Models(ModelList),
    Answer(Box<AnswerSeen>),
}

/// One check's outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    pub name: String,
    pub target: Target,
    pub verdict: Verdict,
    pub status: Option<u16>,
    pub content_type: Option<String>,
    /// The upstream's own words, exactly: `detail` / `error.message` of an error body or
    /// of an error event.
    pub detail: Option<String>,
    /// Why the check failed or was skipped, in ours.
    pub reason: Option<String>,
    pub observed: Observed,
    pub elapsed: Duration,
}

impl Check {
    /// A check that failed before any answer (no token, no connection, no head in time).
    pub fn failed(name: &str, target: Target, reason: String, elapsed: Duration) -> Check {
        Check {
            name: name.to_string(),
            target,
            verdict: Verdict::Failed,
            status: None,
            content_type: None,
            detail: None,
            reason: Some(reason),
            observed: Observed::Nothing,
            elapsed,
        }
    }

    /// A check that was not run.
    pub fn skipped(name: &str, target: Target, reason: String) -> Check {
        Check {
            verdict: Verdict::Skipped,
            ..Check::failed(name, target, reason, Duration::ZERO)
        }
    }

    /// The `/api/models` check from the upstream's answer. 401, 403 and 404 skip it (the
    /// list is not served to this caller); any other non-2xx, a body that is not a model
    /// list, or a configured id missing from the list fails it.
    pub fn models(
        wanted: Vec<String>,
        status: u16,
        content_type: &str,
        body: &[u8],
        elapsed: Duration,
    ) -> Check {
        let mut detail = None;
        let mut observed = Observed::Nothing;
        let (verdict, reason) = if !(200..300).contains(&status) {
            detail = error_detail(content_type, body);
            let http = http_text(status, detail.as_deref());
            if matches!(status, 401 | 403 | 404) {
                let why = format!("not served to this caller: {http}");
                (Verdict::Skipped, Some(why))
            } else {
                (Verdict::Failed, Some(http))
            }
        } else if let Some(listed) = model_ids(body) {
            let missing: Vec<String> = wanted
                .iter()
                .filter(|w| !listed.contains(w))
                .cloned()
                .collect();
            let judged = if missing.is_empty() {
                (Verdict::Ok, None)
            } else {
                let why = format!(
                    "configured upstream model(s) not listed: {}",
                    missing.join(", ")
                );
                (Verdict::Failed, Some(why))
            };
            observed = Observed::Models(ModelList { listed, missing });
            judged
        } else {
            let why =
                "not a model list (expected {\"data\": [{\"id\": …}]} or a list of {\"id\": …})";
            (Verdict::Failed, Some(why.to_string()))
        };
        Check {
            name: "models".to_string(),
            target: Target::Models { wanted },
            verdict,
            status: Some(status),
            content_type: Some(content_type.to_string()).filter(|c| !c.is_empty()),
            detail,
            reason,
            observed,
            elapsed,
        }
    }

    /// A chat check the upstream refused with a non-2xx status; `body` is (the start of)
    /// its error body.
    pub fn chat_refused(
        target: Target,
        status: u16,
        content_type: &str,
        body: &[u8],
        elapsed: Duration,
    ) -> Check {
        let detail = error_detail(content_type, body);
        let reason = http_text(status, detail.as_deref());
        Check {
            status: Some(status),
            content_type: Some(content_type.to_string()).filter(|c| !c.is_empty()),
            detail,
            ..Check::failed(&target_name(&target), target, reason, elapsed)
        }
    }

    /// A chat check with a 2xx answer, judged from what was seen of it. `limit` is the
    /// check's timeout (for the reason of a timed-out answer).
    pub fn chat_answered(
        target: Target,
        status: u16,
        content_type: &str,
        seen: AnswerSeen,
        elapsed: Duration,
        limit: Duration,
    ) -> Check {
        let reason = if seen.html {
            Some("an HTML page instead of an answer (bot check or outage page)".to_string())
        } else if let End::Cut(why) = &seen.end {
            Some(format!(
                "the connection broke before any end marker ({why}); the answer is incomplete"
            ))
        } else if seen.end == End::Timeout {
            Some(format!(
                "no end of the answer within {} (--timeout)",
                humantime::format_duration(limit)
            ))
        } else if let Some(e) = &seen.error_event {
            Some(format!("the upstream sent an error event: {e}"))
        } else if let Some(e) = &seen.decoder_error {
            Some(format!("the answer cannot be decoded: {e}"))
        } else if seen.answer_chars == 0 {
            Some("the answer text is empty".to_string())
        } else {
            None
        };
        Check {
            name: target_name(&target),
            target,
            verdict: if reason.is_some() {
                Verdict::Failed
            } else {
                Verdict::Ok
            },
            status: Some(status),
            content_type: Some(content_type.to_string()).filter(|c| !c.is_empty()),
            detail: seen.error_event.clone(),
            reason,
            observed: Observed::Answer(Box::new(seen)),
            elapsed,
        }
    }

    /// One line for the table: what was seen, briefly.
    pub fn summary(&self) -> String {
        if self.verdict != Verdict::Ok {
            return self.reason.clone().unwrap_or_default();
        }
        match &self.observed {
            Observed::Models(m) => {
                let Target::Models { wanted } = &self.target else {
                    return String::new();
                };
                format!(
                    "{} listed; configured present: {}",
                    m.listed.len(),
                    wanted.join(", ")
                )
            }
            Observed::Answer(a) => format!(
                "HTTP {} · {} · {} · {} · answer {:?}{}",
                self.status.unwrap_or(0),
                a.delivery.as_str(),
                a.markup.map_or("no text", Markup::as_str),
                a.end.label(a.delivery),
                one_line(&a.answer_head),
                a.warnings()
                    .iter()
                    .map(|w| format!(" · warning: {w}"))
                    .collect::<String>()
            ),
            Observed::Nothing => String::new(),
        }
    }

    fn to_json(&self) -> Value {
        let mut v = json!({
            "name": self.name,
            "result": self.verdict.as_str(),
            "status": self.status,
            "content_type": self.content_type,
            "detail": self.detail,
            "reason": self.reason,
            "elapsed_ms": self.elapsed.as_millis() as u64,
        });
        match &self.target {
            Target::Token => v["kind"] = json!("token"),
            Target::Models { wanted } => {
                v["kind"] = json!("models");
                v["wanted"] = json!(wanted);
            }
            Target::Chat {
                upstream_model,
                public_ids,
                stream,
            } => {
                v["kind"] = json!("chat");
                v["upstream_model"] = json!(upstream_model);
                v["models"] = json!(public_ids);
                v["stream"] = json!(stream);
            }
        }
        v["observed"] = match &self.observed {
            Observed::Nothing => Value::Null,
            Observed::Models(m) => json!({"listed": m.listed, "missing": m.missing}),
            Observed::Answer(a) => a.to_json(),
        };
        v
    }

    /// The lines printed under a failed row (its summary is the reason already).
    fn details(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if let Some(s) = self.status {
            let ct = self.content_type.as_deref().unwrap_or("no content-type");
            out.push(("status", format!("{s} ({ct})")));
        }
        if let Some(d) = &self.detail {
            out.push(("detail", d.clone()));
        }
        if let Target::Chat { public_ids, .. } = &self.target {
            out.push(("models", public_ids.join(", ")));
        }
        match &self.observed {
            Observed::Answer(a) => {
                let markup = a.markup.map_or("no text", Markup::as_str);
                out.push((
                    "form",
                    format!("{} · {} · {}", a.framing(), a.delivery.as_str(), markup),
                ));
                out.push(("events", a.sequence()));
                out.push(("end", a.end.label(a.delivery)));
                out.push((
                    "answer",
                    format!(
                        "{} reasoning chars, {} answer chars {:?}",
                        a.reasoning_chars,
                        a.answer_chars,
                        one_line(&a.answer_head)
                    ),
                ));
                if let Some(e) = &a.decoder_error {
                    out.push(("decoder", e.clone()));
                }
                for w in a.warnings() {
                    out.push(("warning", w));
                }
            }
            Observed::Models(m) => {
                out.push(("listed", m.listed.join(", ")));
            }
            Observed::Nothing => {}
        }
        out.push(("elapsed", format!("{} ms", self.elapsed.as_millis())));
        out
    }

    /// Replace every occurrence of `raw` in the texts taken from the upstream by `masked`.
    fn scrub(&mut self, raw: &str, masked: &str) {
        let fix = |s: &mut String| {
            if s.contains(raw) {
                *s = s.replace(raw, masked);
            }
        };
        for s in [&mut self.detail, &mut self.reason, &mut self.content_type]
            .into_iter()
            .flatten()
        {
            fix(s);
        }
        match &mut self.observed {
            Observed::Answer(a) => {
                fix(&mut a.answer_head);
                for s in [&mut a.error_event, &mut a.decoder_error]
                    .into_iter()
                    .flatten()
                {
                    fix(s);
                }
                if let End::Cut(why) = &mut a.end {
                    fix(why);
                }
            }
            Observed::Models(m) => m.listed.iter_mut().for_each(fix),
            Observed::Nothing => {}
        }
    }
}

fn target_name(target: &Target) -> String {
    match target {
        Target::Token => "token".to_string(),
        Target::Models { .. } => "models".to_string(),
        Target::Chat {
            upstream_model,
            stream,
            ..
        } => chat_check_name(upstream_model, *stream),
    }
}

fn http_text(status: u16, detail: Option<&str>) -> String {
    match detail {
        Some(d) => format!("HTTP {status}: {d}"),
        None => format!("HTTP {status}"),
    }
}

/// Whitespace runs (newlines included) as one space, for a table cell.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The ids of a model list: `{"data": [...]}` or a bare array, of `{"id": …}` objects
/// (or of strings). `None` when the body is neither.
pub fn model_ids(body: &[u8]) -> Option<Vec<String>> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let list = match &v {
        Value::Array(a) => a,
        Value::Object(o) => o.get("data")?.as_array()?,
        _ => return None,
    };
    Some(
        list.iter()
            .filter_map(|m| match m {
                Value::String(s) => Some(s.clone()),
                other => other.get("id")?.as_str().map(str::to_string),
            })
            .collect(),
    )
}

/// The whole run.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// `upstream.base_url`.
    pub upstream: String,
    /// `guest` or `user`.
    pub mode: &'static str,
    /// The token the checks sent, masked.
    pub token: Option<String>,
    pub checks: Vec<Check>,
}

impl Report {
    /// No check failed (skipped ones do not count).
    pub fn ok(&self) -> bool {
        self.checks.iter().all(|c| c.verdict != Verdict::Failed)
    }

    /// Mask every occurrence of the raw token in what the upstream sent back (an error
    /// detail that echoes the bearer, say): the report never carries it.
    pub fn scrub(&mut self, raw: &str, masked: &str) {
        if raw.is_empty() {
            return;
        }
        for c in &mut self.checks {
            c.scrub(raw, masked);
        }
    }

    /// The report for monitoring.
    pub fn to_json(&self) -> Value {
        json!({
            "upstream": self.upstream,
            "mode": self.mode,
            "token": self.token,
            "ok": self.ok(),
            "checks": self.checks.iter().map(Check::to_json).collect::<Vec<_>>(),
        })
    }

    /// The report for people: a header, one row per check, the details of failed rows
    /// underneath them, and the totals.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let token = self
            .token
            .as_deref()
            .map(|t| format!(", token {t}"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "k2proxy probe: {} ({} mode{token})\n",
            self.upstream, self.mode
        );
        let width = self
            .checks
            .iter()
            .map(|c| c.name.chars().count())
            .chain([5])
            .max()
            .unwrap_or(5);
        let _ = writeln!(out, "{:<width$}  {:<7}  SUMMARY", "CHECK", "RESULT");
        for c in &self.checks {
            let result = match c.verdict {
                Verdict::Failed => "FAILED",
                v => v.as_str(),
            };
            let _ = writeln!(out, "{:<width$}  {:<7}  {}", c.name, result, c.summary());
            if c.verdict == Verdict::Failed {
                for (key, value) in c.details() {
                    let _ = writeln!(out, "    {key:<8} {value}");
                }
            } else if let Observed::Answer(a) = &c.observed {
                // Which events the upstream sent (task_id, detail, finish chunk…): what
                // changes first when the upstream does.
                let _ = writeln!(out, "    {:<8} {}", "events", a.sequence());
            }
        }
        let count = |v: Verdict| self.checks.iter().filter(|c| c.verdict == v).count();
        let _ = writeln!(
            out,
            "\n{} ok, {} failed, {} skipped: {}",
            count(Verdict::Ok),
            count(Verdict::Failed),
            count(Verdict::Skipped),
            if self.ok() { "OK" } else { "FAILED" }
        );
        out
    }
}

/// How the answer's text travelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// SSE `content` values, each the whole text so far.
    Cumulative,
    /// SSE `content` values (or raw data), each a new piece.
    Incremental,
    /// SSE OpenAI chunks, `choices[0].delta.content`.
    OpenaiDelta,
    /// One JSON document.
    Json,
    /// A single SSE `content` value: cumulative and incremental look alike.
    Single,
    /// No text arrived.
    None,
}

impl Delivery {
    pub fn as_str(self) -> &'static str {
        match self {
            Delivery::Cumulative => "cumulative",
            Delivery::Incremental => "incremental",
            Delivery::OpenaiDelta => "openai-delta",
            Delivery::Json => "json",
            Delivery::Single => "single",
            Delivery::None => "none",
        }
    }
}

/// The reasoning/answer markup of the answer's raw text (k2think-protocol.md §4.3, §0.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Markup {
    /// Reasoning closed by `</think>`, `</think_fast>` or `</think_faster>` (the tag);
    /// `open`: the opening tag is there too.
    Think { tag: &'static str, open: bool },
    /// `<details type="reasoning">…</details>` then `<answer>…</answer>`.
    DetailsAnswer,
    /// `<details type="reasoning">…</details>` then the bare answer (K2 Horizon).
    DetailsBare,
    /// `<answer>…</answer>` without reasoning markup.
    AnswerOnly,
    /// No markup.
    Plain,
}

impl Markup {
    /// Which form `text` is in.
    pub fn of(text: &str) -> Markup {
        if text.contains("<details") {
            return if text.contains("<answer>") {
                Markup::DetailsAnswer
            } else {
                Markup::DetailsBare
            };
        }
        for tag in ["think_faster", "think_fast", "think"] {
            if text.contains(&format!("</{tag}>")) {
                let open = text.contains(&format!("<{tag}>")) || text.contains(&format!("<{tag} "));
                return Markup::Think { tag, open };
            }
        }
        if text.contains("<answer>") {
            Markup::AnswerOnly
        } else {
            Markup::Plain
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Markup::Think { tag: "think", open } => {
                if open {
                    "think"
                } else {
                    "think-noopen"
                }
            }
            Markup::Think {
                tag: "think_fast",
                open,
            } => {
                if open {
                    "think_fast"
                } else {
                    "think_fast-noopen"
                }
            }
            Markup::Think { open, .. } => {
                if open {
                    "think_faster"
                } else {
                    "think_faster-noopen"
                }
            }
            Markup::DetailsAnswer => "details+answer",
            Markup::DetailsBare => "details+bare",
            Markup::AnswerOnly => "answer",
            Markup::Plain => "plain",
        }
    }
}

/// How the network side saw the body end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyEnd {
    /// A clean end of body.
    Eof,
    /// The connection failed (why).
    Broken(String),
    /// Nothing more arrived within the wait after an end marker.
    Silent,
    /// The check's timeout passed.
    Timeout,
}

/// How the answer ended, as judged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// `data: [DONE]` (then EOF).
    DoneMarker,
    /// A `done: true` event, then EOF.
    DoneThenEof,
    /// An end marker, then the connection was torn down (normal on K2 Horizon, §0.5 #8).
    DoneThenRagged,
    /// An end marker, then the body stayed open.
    DoneThenOpen,
    /// EOF without an end marker (the normal end of a JSON answer).
    Eof,
    /// The connection broke before any end marker (why).
    Cut(String),
    /// The check's timeout passed before any end marker.
    Timeout,
}

impl End {
    fn from_body(end: BodyEnd, done_event: bool, done_marker: bool) -> End {
        let done = done_event || done_marker;
        match end {
            BodyEnd::Eof if done_marker => End::DoneMarker,
            BodyEnd::Eof if done_event => End::DoneThenEof,
            BodyEnd::Eof => End::Eof,
            BodyEnd::Broken(_) if done => End::DoneThenRagged,
            BodyEnd::Silent | BodyEnd::Timeout if done => End::DoneThenOpen,
            BodyEnd::Broken(why) => End::Cut(why),
            BodyEnd::Silent | BodyEnd::Timeout => End::Timeout,
        }
    }

    /// Counts as a complete answer.
    pub fn is_clean(&self) -> bool {
        !matches!(self, End::Cut(_) | End::Timeout)
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            End::DoneMarker => "done_marker",
            End::DoneThenEof => "done_then_eof",
            End::DoneThenRagged => "done_then_ragged",
            End::DoneThenOpen => "done_then_open",
            End::Eof => "eof",
            End::Cut(_) => "cut",
            End::Timeout => "timeout",
        }
    }

    fn label(&self, delivery: Delivery) -> String {
        match self {
            End::DoneMarker => "[DONE]".to_string(),
            End::DoneThenEof => "done, then EOF".to_string(),
            End::DoneThenRagged => "done, then ragged teardown".to_string(),
            End::DoneThenOpen => "done, then the body stayed open".to_string(),
            End::Eof if delivery == Delivery::Json => "end of body".to_string(),
            End::Eof => "EOF without an end marker".to_string(),
            End::Cut(why) => format!("cut before any end marker ({why})"),
            End::Timeout => "timed out before any end marker".to_string(),
        }
    }
}

/// What one 2xx answer showed.
#[derive(Debug, Clone, PartialEq)]
pub struct AnswerSeen {
    /// `Sse` or `Json`, from the content type and the first byte (as requests decide).
    pub format: UpstreamFormat,
    pub delivery: Delivery,
    /// The markup of the raw answer text; `None` when no text arrived.
    pub markup: Option<Markup>,
    /// The events in order, repeats counted: `task_id`, `content`, `delta`, `usage`,
    /// `done`, `finish_chunk` (a `choices` chunk after `done`), `[DONE]`, `detail`,
    /// `error`, `text` (data that is not JSON), `json` (a JSON answer), `other`.
    pub events: Vec<(&'static str, u32)>,
    pub task_id: bool,
    /// The message of a `{"detail": …}` / `{"error": …}` event without content.
    pub error_event: Option<String>,
    /// A `{"done": true}` event.
    pub done_event: bool,
    /// `data: [DONE]`.
    pub done_marker: bool,
    /// The `finish_reason` of an OpenAI chunk after `done` (`""` when it had none).
    pub finish_after_done: Option<String>,
    pub usage: bool,
    pub end: End,
    pub bytes: u64,
    /// The body is an HTML page.
    pub html: bool,
    /// Why the decoder could not make an answer of it.
    pub decoder_error: Option<String>,
    pub reasoning_chars: usize,
    pub answer_chars: usize,
    /// The decoded answer's first [`ANSWER_HEAD`] characters.
    pub answer_head: String,
    /// Whether the decoded answer is the answer of the upstream's final text, decoded
    /// whole (`false`: the stream decoder added or lost text, say a chunk after `done`
    /// added on top of the cumulative text). `None` when not compared (no text, or no
    /// clean end). Reported, not judged.
    pub answer_matches_text: Option<bool>,
    /// How the decoder read the `content` values (`upstream.content_delivery`).
    pub content_delivery: ContentDelivery,
}

impl AnswerSeen {
    fn framing(&self) -> &'static str {
        match self.format {
            UpstreamFormat::Sse => "sse",
            UpstreamFormat::Json => "json",
        }
    }

    /// A `content` stream that looks incremental read as cumulative, or the other way
    /// round: the configured `upstream.content_delivery` does not fit this upstream.
    /// Only a stream of `content` values without OpenAI deltas is judged.
    pub fn delivery_mismatch(&self) -> Option<String> {
        if self.events.iter().any(|(k, _)| *k == "delta") {
            return None;
        }
        let seen = match (self.delivery, self.content_delivery) {
            (Delivery::Incremental, ContentDelivery::Cumulative) => "incremental",
            (Delivery::Cumulative, ContentDelivery::Incremental) => "cumulative",
            _ => return None,
        };
        Some(format!(
            "the content values look {seen}, but upstream.content_delivery is {}",
            self.content_delivery.as_str()
        ))
    }

    /// The warnings of this answer, for people.
    fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(w) = self.delivery_mismatch() {
            out.push(w);
        }
        if self.answer_matches_text == Some(false) {
            out.push(MISMATCH.to_string());
        }
        out
    }

    /// The events as one line: `task_id content×12 done finish_chunk`.
    pub fn sequence(&self) -> String {
        if self.events.is_empty() {
            return "none".to_string();
        }
        self.events
            .iter()
            .map(|(k, n)| {
                if *n > 1 {
                    format!("{k}×{n}")
                } else {
                    k.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn to_json(&self) -> Value {
        json!({
            "format": self.framing(),
            "delivery": self.delivery.as_str(),
            "markup": self.markup.map(Markup::as_str),
            "events": self.events.iter().map(|(k, n)| json!({"event": k, "count": n})).collect::<Vec<_>>(),
            "sequence": self.sequence(),
            "task_id": self.task_id,
            "error_event": self.error_event,
            "done_event": self.done_event,
            "done_marker": self.done_marker,
            "finish_chunk_after_done": self.finish_after_done.is_some(),
            "finish_reason_after_done": self.finish_after_done,
            "usage": self.usage,
            "end": self.end.as_str(),
            "end_detail": match &self.end {
                End::Cut(why) => Some(why.as_str()),
                _ => None,
            },
            "clean_end": self.end.is_clean(),
            "bytes": self.bytes,
            "html": self.html,
            "decoder_error": self.decoder_error,
            "reasoning_chars": self.reasoning_chars,
            "answer_chars": self.answer_chars,
            "answer_head": self.answer_head,
            "answer_matches_text": self.answer_matches_text,
            "content_delivery": self.content_delivery.as_str(),
            "delivery_mismatch": self.delivery_mismatch(),
        })
    }
}

/// The answer's raw text as the events build it (for its markup), read as the decoder's
/// `auto` reading guesses (what the upstream looks like, whatever the config says).
#[derive(Debug, Default)]
struct RawText {
    text: String,
    /// `Some(true)` cumulative, `Some(false)` incremental, `None` not known yet.
    cumulative: Option<bool>,
    values: u32,
}

impl RawText {
    fn content(&mut self, s: &str, done: bool) {
        if s.is_empty() {
            return;
        }
        self.values += 1;
        if self.cumulative == Some(false) {
            // The last `done` value after pieces is the whole text when it extends (or
            // repeats) them, else one more piece.
            if !done {
                self.text.push_str(s);
            } else if s.starts_with(self.text.as_str()) {
                self.text = s.to_string();
            } else if !self.text.ends_with(s) {
                self.text.push_str(s);
            }
            return;
        }
        if self.text.is_empty() {
            self.text = s.to_string();
            return;
        }
        let shared = self
            .text
            .bytes()
            .zip(s.bytes())
            .take_while(|(a, b)| a == b)
            .count();
        if s.starts_with(self.text.as_str()) {
            if s.len() > self.text.len() || self.text.len() >= REWRITE_PREFIX {
                self.cumulative = Some(true);
            }
            self.text = s.to_string();
        } else if self.cumulative == Some(true) || shared >= REWRITE_PREFIX {
            self.cumulative = Some(true);
            self.text = s.to_string();
        } else {
            self.cumulative = Some(false);
            self.text.push_str(s);
        }
    }

    fn append(&mut self, s: &str) {
        self.values += 1;
        self.cumulative = Some(false);
        self.text.push_str(s);
    }
}

/// The framing, decided at the first byte that is not whitespace.
#[derive(Debug)]
enum Framing {
    /// Only whitespace so far (kept).
    Undecided(Vec<u8>),
    Sse,
    Json,
}

/// Watches one 2xx answer as it arrives: the events, the raw text, the end, and the
/// answer the proxy's decoder makes of it. The result does not depend on how the body
/// was split into pieces.
#[derive(Debug)]
pub struct AnswerObserver {
    content_type: String,
    implicit_think: bool,
    delivery: ContentDelivery,
    framing: Framing,
    format: UpstreamFormat,
    completion: Option<Completion<K2Decoder>>,
    sse: SseDecoder,
    /// The body, while it may still be a JSON document (JSON framing, or SSE framing
    /// before the first event).
    kept: Vec<u8>,
    kept_over: bool,
    raw: RawText,
    delta_seen: bool,
    content_seen: bool,
    events: Vec<(&'static str, u32)>,
    task_id: bool,
    error_event: Option<String>,
    done_event: bool,
    done_marker: bool,
    finish_after_done: Option<String>,
    usage: bool,
    html: bool,
    bytes: u64,
}

impl AnswerObserver {
    /// An observer for one body with this (lower-case) content type; `implicit_think` and
    /// `delivery` as `reasoning.implicit_think` and `upstream.content_delivery` set them
    /// for requests.
    pub fn new(
        content_type: &str,
        implicit_think: bool,
        delivery: ContentDelivery,
    ) -> AnswerObserver {
        AnswerObserver {
            content_type: content_type.to_ascii_lowercase(),
            implicit_think,
            delivery,
            framing: Framing::Undecided(Vec::new()),
            format: UpstreamFormat::Sse,
            completion: None,
            sse: SseDecoder::new(),
            kept: Vec::new(),
            kept_over: false,
            raw: RawText::default(),
            delta_seen: false,
            content_seen: false,
            events: Vec::new(),
            task_id: false,
            error_event: None,
            done_event: false,
            done_marker: false,
            finish_after_done: None,
            usage: false,
            html: false,
            bytes: 0,
        }
    }

    /// An end marker (`done: true`, `[DONE]`) was seen: what follows may be cut.
    pub fn done_seen(&self) -> bool {
        self.done_event || self.done_marker
    }

    /// Feed the next piece of the body.
    pub fn push(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        self.bytes += bytes.len() as u64;
        if let Framing::Undecided(held) = &mut self.framing {
            let Some(&lead) = bytes.iter().find(|b| !b.is_ascii_whitespace()) else {
                held.extend_from_slice(bytes);
                return;
            };
            let held = std::mem::take(held);
            self.decide(lead);
            if !held.is_empty() {
                self.feed(&held);
            }
        }
        self.feed(bytes);
    }

    /// Like `detect_format` of the chat route: SSE or JSON from the content type or,
    /// when it says neither, the first byte.
    fn decide(&mut self, lead: u8) {
        self.html = lead == b'<' || self.content_type.contains("text/html");
        let json = !self.content_type.contains("event-stream")
            && (self.content_type.contains("json") || lead == b'{');
        self.format = if json {
            UpstreamFormat::Json
        } else {
            UpstreamFormat::Sse
        };
        self.framing = if json { Framing::Json } else { Framing::Sse };
        self.completion =
            Some(Completion::new(self.format, self.implicit_think).with_delivery(self.delivery));
    }

    fn feed(&mut self, bytes: &[u8]) {
        if let Some(c) = self.completion.as_mut() {
            c.push(bytes);
        }
        let keep = match self.framing {
            Framing::Json => true,
            _ => self.sse.events() == 0,
        };
        if keep && !self.kept_over {
            if self.kept.len() + bytes.len() > KEEP_LIMIT {
                self.kept_over = true;
                self.kept = Vec::new();
            } else {
                self.kept.extend_from_slice(bytes);
            }
        }
        if matches!(self.framing, Framing::Sse) {
            self.push_sse(bytes);
        }
    }

    fn push_sse(&mut self, bytes: &[u8]) {
        let mut sse = std::mem::take(&mut self.sse);
        let _ = sse.push(bytes, |ev| self.on_event(ev.event, ev.data));
        self.sse = sse;
    }

    fn note(&mut self, kind: &'static str) {
        match self.events.last_mut() {
            Some((k, n)) if *k == kind => *n += 1,
            _ => self.events.push((kind, 1)),
        }
    }

    fn on_event(&mut self, name: &str, data: &[u8]) {
        let data = String::from_utf8_lossy(data);
        let t = data.trim();
        if name == "error" {
            self.note("error");
            let msg = match serde_json::from_str::<Value>(t) {
                Ok(v) => error_message(&v),
                Err(_) if t.is_empty() => "upstream error".to_string(),
                Err(_) => t.to_string(),
            };
            self.error_event.get_or_insert(msg);
            return;
        }
        if matches!(t, "[DONE]" | "DONE" | "done") {
            self.note("[DONE]");
            self.done_marker = true;
            return;
        }
        if t.is_empty() || t == "-1" {
            return;
        }
        match serde_json::from_str::<Value>(t) {
            Ok(v) => self.on_json(&v),
            Err(_) => {
                // Several JSON lines in one event (an upstream without blank lines)?
                let lines: Vec<Value> = t
                    .lines()
                    .filter(|l| !l.trim().is_empty())
                    .map_while(|l| serde_json::from_str(l.trim()).ok())
                    .collect();
                if lines.len() > 1
                    && lines.len() == t.lines().filter(|l| !l.trim().is_empty()).count()
                {
                    for v in &lines {
                        self.on_json(v);
                    }
                } else {
                    self.note("text");
                    self.raw.append(&data);
                }
            }
        }
    }

    fn on_json(&mut self, v: &Value) {
        let Some(o) = v.as_object() else {
            match v.as_str() {
                Some(s) => {
                    self.note("text");
                    self.raw.append(s);
                }
                None => self.note("other"),
            }
            return;
        };
        let content = o.get("content").and_then(Value::as_str);
        let choice = o
            .get("choices")
            .and_then(Value::as_array)
            .and_then(|a| a.first());
        let done = o.get("done") == Some(&Value::Bool(true));
        if o.get("usage").is_some_and(|u| !u.is_null()) {
            self.usage = true;
        }
        if content.is_none() && choice.is_none() {
            let err = [("detail", "detail"), ("error", "error")]
                .into_iter()
                .find_map(|(k, kind)| o.get(k).filter(|e| !e.is_null()).map(|e| (kind, e)));
            if let Some((kind, e)) = err {
                self.note(kind);
                self.error_event.get_or_insert_with(|| error_message(e));
                return;
            }
        }
        if let Some(c) = choice {
            let reason = c
                .get("finish_reason")
                .and_then(Value::as_str)
                .map(str::to_string);
            if self.done_seen() {
                self.note("finish_chunk");
                self.finish_after_done = Some(reason.unwrap_or_default());
                return;
            }
            self.note("delta");
            self.delta_seen = true;
            let text = c
                .get("delta")
                .or(c.get("message"))
                .and_then(|d| d.get("content"))
                .and_then(Value::as_str);
            if let Some(t) = text {
                self.raw.append(t);
            }
        }
        if let Some(c) = content {
            self.content_seen = true;
            self.raw.content(c, done);
        }
        if done {
            self.note("done");
            self.done_event = true;
        } else if content.is_some() {
            self.note("content");
        } else if choice.is_none() {
            if o.contains_key("task_id") {
                self.note("task_id");
                self.task_id = true;
            } else if o.contains_key("usage") {
                self.note("usage");
            } else {
                self.note("other");
            }
        }
    }

    /// A JSON document as the whole answer.
    fn on_document(&mut self, body: &[u8]) {
        self.note("json");
        let Ok(v) = serde_json::from_slice::<Value>(body) else {
            return;
        };
        let choice_text = v
            .pointer("/choices/0/message/content")
            .or_else(|| v.pointer("/choices/0/delta/content"))
            .and_then(Value::as_str);
        let text = v.get("content").and_then(Value::as_str).or(choice_text);
        if v.get("usage").is_some_and(|u| !u.is_null()) {
            self.usage = true;
        }
        match text {
            Some(t) => {
                self.content_seen = true;
                self.raw.content(t, true);
            }
            None => {
                let err = v
                    .get("detail")
                    .filter(|e| !e.is_null())
                    .or(v.get("error").filter(|e| !e.is_null()));
                if let Some(e) = err {
                    self.error_event = Some(error_message(e));
                }
            }
        }
    }

    /// The body ended (`end` says how): what was seen.
    pub fn finish(mut self, end: BodyEnd) -> AnswerSeen {
        if let Framing::Undecided(held) = &self.framing {
            let lead = held.first().copied().unwrap_or(b' ');
            let held = held.clone();
            self.decide(lead);
            self.feed(&held);
        }
        let clean = matches!(end, BodyEnd::Eof);
        match self.framing {
            Framing::Json if clean && !self.kept_over => {
                let body = std::mem::take(&mut self.kept);
                let t = body.trim_ascii_start();
                if t.starts_with(b"data:") || t.starts_with(b"event:") || t.starts_with(b":") {
                    // An SSE body labelled JSON.
                    self.push_sse(t);
                    self.finish_sse();
                } else {
                    self.on_document(&body);
                }
            }
            Framing::Sse => {
                if clean {
                    self.finish_sse();
                }
                if clean && self.sse.events() == 0 && !self.kept_over {
                    // A JSON body labelled SSE.
                    let body = std::mem::take(&mut self.kept);
                    if body.iter().any(|b| !b.is_ascii_whitespace()) {
                        self.on_document(&body);
                    }
                }
            }
            _ => {}
        }
        let json_answer = self.events.iter().any(|(k, _)| *k == "json");
        let end = End::from_body(end, self.done_event, self.done_marker);
        let (mut reasoning_chars, mut answer_chars, mut answer_head) = (0, 0, String::new());
        let (mut decoder_error, mut answer_matches_text) = (None, None);
        if let Some(c) = self.completion.as_mut() {
            match c.finish() {
                Ok(r) => {
                    reasoning_chars = r.reasoning.chars().count();
                    answer_chars = r.content.chars().count();
                    answer_head = r.content.chars().take(ANSWER_HEAD).collect();
                    if end.is_clean() && !self.raw.text.is_empty() {
                        answer_matches_text =
                            Some(answer_of(&self.raw.text, self.implicit_think) == r.content);
                    }
                }
                Err(e) => decoder_error = Some(e),
            }
        } else {
            decoder_error = Some("an empty body".to_string());
        }
        let delivery = if json_answer {
            Delivery::Json
        } else if self.delta_seen && !self.content_seen {
            Delivery::OpenaiDelta
        } else {
            match self.raw.cumulative {
                Some(true) => Delivery::Cumulative,
                Some(false) => Delivery::Incremental,
                None if self.raw.values > 0 => Delivery::Single,
                None => Delivery::None,
            }
        };
        let markup = (!self.raw.text.is_empty()).then(|| Markup::of(&self.raw.text));
        AnswerSeen {
            format: self.format,
            delivery,
            markup,
            events: self.events,
            task_id: self.task_id,
            error_event: self.error_event,
            done_event: self.done_event,
            done_marker: self.done_marker,
            finish_after_done: self.finish_after_done,
            usage: self.usage,
            end,
            bytes: self.bytes,
            html: self.html,
            decoder_error,
            reasoning_chars,
            answer_chars,
            answer_head,
            answer_matches_text,
            content_delivery: self.delivery,
        }
    }

    fn finish_sse(&mut self) {
        let mut sse = std::mem::take(&mut self.sse);
        let _ = sse.finish(|ev| self.on_event(ev.event, ev.data));
        self.sse = sse;
    }
}

/// The answer the decoder makes of `text` as one whole JSON answer.
fn answer_of(text: &str, implicit_think: bool) -> String {
    let mut whole = Completion::new(UpstreamFormat::Json, implicit_think);
    whole.push(json!({ "content": text }).to_string().as_bytes());
    whole.finish().map(|r| r.content).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mock::script::{render, stream_events, StreamSpec};
    use crate::mock::{Delivery as MockDelivery, Directives, End as MockEnd, Fault, Form};

    const PROMPT: &str = "Once more: reply with the single word OK.";

    /// The mock's streamed answer to [`HISTORY`] under `directives`, as one body.
    fn mock_stream(d: &Directives) -> Vec<u8> {
        let spec = StreamSpec {
            directives: d,
            last_user_text: PROMPT,
            prompt_chars: 80,
            model: "IFM/K2-Horizon-375B-A23B",
            id: "chatcmpl-probe",
            created: 1_700_000_000,
        };
        stream_events(&spec).0.concat()
    }

    /// The mock's answer text for [`PROMPT`].
    fn mock_answer(d: &Directives) -> String {
        crate::mock::reply_for(PROMPT, d).1
    }

    /// What an observer sees of `body` fed in `pieces`, ending with `end`, with the
    /// default `upstream.content_delivery` (cumulative).
    fn observe(content_type: &str, pieces: &[&[u8]], end: BodyEnd) -> AnswerSeen {
        observe_as(ContentDelivery::default(), content_type, pieces, end)
    }

    /// [`observe`] with `upstream.content_delivery: delivery`.
    fn observe_as(
        delivery: ContentDelivery,
        content_type: &str,
        pieces: &[&[u8]],
        end: BodyEnd,
    ) -> AnswerSeen {
        let mut o = AnswerObserver::new(content_type, true, delivery);
        for p in pieces {
            o.push(p);
        }
        o.finish(end)
    }

    /// The observation of `body` is the same whole, byte by byte, and split at every
    /// byte (into two pieces), and at every pair of cuts for short bodies.
    fn observe_every_split(content_type: &str, body: &[u8], end: BodyEnd) -> AnswerSeen {
        observe_every_split_as(ContentDelivery::default(), content_type, body, end)
    }

    /// [`observe_every_split`] with `upstream.content_delivery: delivery`.
    fn observe_every_split_as(
        delivery: ContentDelivery,
        content_type: &str,
        body: &[u8],
        end: BodyEnd,
    ) -> AnswerSeen {
        let observe =
            |pieces: &[&[u8]], end: BodyEnd| observe_as(delivery, content_type, pieces, end);
        let whole = observe(&[body], end.clone());
        let bytewise: Vec<&[u8]> = body.chunks(1).collect();
        assert_eq!(observe(&bytewise, end.clone()), whole, "byte by byte");
        for i in 0..=body.len() {
            let (a, b) = body.split_at(i);
            assert_eq!(observe(&[a, b], end.clone()), whole, "split at {i}");
        }
        if body.len() <= 400 {
            for i in 0..body.len() {
                for j in i..body.len() {
                    let (a, rest) = body.split_at(i);
                    let (b, c) = rest.split_at(j - i);
                    assert_eq!(observe(&[a, b, c], end.clone()), whole, "split at {i},{j}");
                }
            }
        }
        whole
    }

    const SSE: &str = "text/event-stream; charset=utf-8";

    #[test]
    fn horizon_stream_at_every_split() {
        let d = Directives::horizon();
        let body = mock_stream(&d);
        let seen = observe_every_split(SSE, &body, BodyEnd::Broken("ReadError".into()));
        assert_eq!(seen.format, UpstreamFormat::Sse);
        assert_eq!(seen.delivery, Delivery::Cumulative);
        assert_eq!(seen.markup, Some(Markup::DetailsBare));
        assert!(seen.task_id);
        assert_eq!(seen.events.first(), Some(&("task_id", 1)));
        assert!(seen.done_event && !seen.done_marker);
        assert_eq!(seen.finish_after_done.as_deref(), Some("stop"));
        assert_eq!(seen.events.last(), Some(&("finish_chunk", 1)));
        assert!(seen.usage);
        assert_eq!(seen.end, End::DoneThenRagged);
        assert!(seen.end.is_clean());
        assert_eq!(seen.error_event, None);
        assert_eq!(seen.decoder_error, None);
        assert!(seen.reasoning_chars > 0);
        assert!(seen.answer_head.starts_with("Echo: Once more"));
        // The flag says whether the stream decoder's answer is the upstream's answer.
        let answer = mock_answer(&d);
        let decoded_is_answer =
            seen.answer_chars == answer.chars().count() && answer.starts_with(&seen.answer_head);
        assert_eq!(seen.answer_matches_text, Some(decoded_is_answer));
        assert_eq!(
            seen.sequence(),
            "task_id content×14 usage done finish_chunk",
            "{seen:?}"
        );
    }

    #[test]
    fn old_host_stream_every_delivery_at_every_split() {
        for delivery in MockDelivery::ALL {
            let d = Directives {
                delivery,
                chunk: 24,
                ..Directives::default()
            };
            let body = mock_stream(&d);
            // `upstream.content_delivery` as the upstream sends (deltas: either).
            let configured = match delivery {
                MockDelivery::Incremental => ContentDelivery::Incremental,
                _ => ContentDelivery::Cumulative,
            };
            let seen = observe_every_split_as(configured, SSE, &body, BodyEnd::Eof);
            assert_eq!(seen.content_delivery, configured);
            assert_eq!(seen.delivery_mismatch(), None, "{delivery:?}");
            let want = match delivery {
                MockDelivery::Cumulative => Delivery::Cumulative,
                MockDelivery::Incremental => Delivery::Incremental,
                MockDelivery::Delta => Delivery::Cumulative,
            };
            if delivery == MockDelivery::Delta {
                // Deltas, then the done event repeating the whole text as `content`.
                assert!(seen.events.iter().any(|(k, _)| *k == "delta"), "{seen:?}");
            } else {
                assert_eq!(seen.delivery, want, "{delivery:?}");
            }
            assert_eq!(
                seen.markup,
                Some(Markup::Think {
                    tag: "think",
                    open: true
                })
            );
            assert!(seen.done_event && seen.done_marker, "{delivery:?}");
            assert_eq!(seen.events.last(), Some(&("[DONE]", 1)));
            assert_eq!(seen.end, End::DoneMarker);
            assert!(!seen.task_id);
            assert_eq!(seen.finish_after_done, None);
            assert_eq!(seen.answer_head, mock_answer(&d), "{delivery:?}");
            assert_eq!(seen.answer_matches_text, Some(true), "{delivery:?}");
        }
    }

    #[test]
    fn a_content_delivery_that_does_not_fit_the_upstream_is_a_warning() {
        // No `done` event repeating the whole text at the end, which would mend a
        // misread non-stream answer.
        let body_of = |delivery| {
            mock_stream(&Directives {
                delivery,
                chunk: 24,
                end: MockEnd::Marker,
                ..Directives::default()
            })
        };
        let answer = mock_answer(&Directives::default());
        // Incremental pieces read as cumulative: each piece rewrites the text.
        let seen = observe_as(
            ContentDelivery::Cumulative,
            SSE,
            &[&body_of(MockDelivery::Incremental)],
            BodyEnd::Eof,
        );
        assert_eq!(seen.delivery, Delivery::Incremental);
        assert_eq!(
            seen.delivery_mismatch().as_deref(),
            Some(
                "the content values look incremental, but upstream.content_delivery is cumulative"
            )
        );
        assert_eq!(seen.warnings().len(), 2, "{:?}", seen.warnings());
        assert_eq!(seen.to_json()["content_delivery"], "cumulative");
        assert!(seen.to_json()["delivery_mismatch"].is_string());
        // Cumulative values read as pieces: the text repeats.
        let seen = observe_as(
            ContentDelivery::Incremental,
            SSE,
            &[&body_of(MockDelivery::Cumulative)],
            BodyEnd::Eof,
        );
        assert_eq!(
            seen.delivery_mismatch().as_deref(),
            Some(
                "the content values look cumulative, but upstream.content_delivery is incremental"
            )
        );
        assert_ne!(seen.answer_head, answer);
        // `auto` guesses either, and OpenAI deltas are never judged.
        for delivery in MockDelivery::ALL {
            let seen = observe_as(
                ContentDelivery::Auto,
                SSE,
                &[&body_of(delivery)],
                BodyEnd::Eof,
            );
            assert_eq!(seen.delivery_mismatch(), None, "{delivery:?}");
            assert_eq!(seen.answer_head, answer, "{delivery:?}");
            assert!(seen.warnings().is_empty(), "{delivery:?}");
        }
        for configured in [ContentDelivery::Cumulative, ContentDelivery::Incremental] {
            let seen = observe_as(
                configured,
                SSE,
                &[&body_of(MockDelivery::Delta)],
                BodyEnd::Eof,
            );
            assert_eq!(seen.delivery_mismatch(), None, "{configured:?}");
        }
    }

    #[test]
    fn openai_delta_only_stream() {
        let d = Directives {
            delivery: MockDelivery::Delta,
            end: MockEnd::Marker,
            usage: false,
            ..Directives::default()
        };
        let seen = observe_every_split(SSE, &mock_stream(&d), BodyEnd::Eof);
        assert_eq!(seen.delivery, Delivery::OpenaiDelta);
        assert_eq!(
            seen.markup,
            Some(Markup::Think {
                tag: "think",
                open: true
            })
        );
        assert!(!seen.done_event && seen.done_marker && !seen.usage);
        assert_eq!(seen.end, End::DoneMarker);
        assert_eq!(seen.answer_head, mock_answer(&d));
    }

    #[test]
    fn every_markup_form_is_named() {
        let cases = [
            (
                Form::V1,
                "think",
                Markup::Think {
                    tag: "think",
                    open: true,
                },
            ),
            (
                Form::V2,
                "think",
                Markup::Think {
                    tag: "think",
                    open: true,
                },
            ),
            (
                Form::V2Answer,
                "think",
                Markup::Think {
                    tag: "think",
                    open: true,
                },
            ),
            (
                Form::V2NoOpen,
                "think",
                Markup::Think {
                    tag: "think",
                    open: false,
                },
            ),
            (
                Form::V2,
                "think_fast",
                Markup::Think {
                    tag: "think_fast",
                    open: true,
                },
            ),
            (
                Form::V2NoOpen,
                "think_fast",
                Markup::Think {
                    tag: "think_fast",
                    open: false,
                },
            ),
            (
                Form::V2,
                "think_faster",
                Markup::Think {
                    tag: "think_faster",
                    open: true,
                },
            ),
            (Form::Details, "think", Markup::DetailsAnswer),
            (Form::DetailsBare, "think", Markup::DetailsBare),
            (Form::None, "think", Markup::Plain),
        ];
        for (form, tag, want) in cases {
            let text = render(form, "I think.\nYes.", "OK", 3, tag);
            assert_eq!(Markup::of(&text), want, "{form:?} {tag}: {text}");
        }
        assert_eq!(Markup::of("<answer>OK</answer>"), Markup::AnswerOnly);
        let names: Vec<&str> = [
            Markup::Think {
                tag: "think",
                open: false,
            },
            Markup::Think {
                tag: "think_fast",
                open: true,
            },
            Markup::Think {
                tag: "think_faster",
                open: false,
            },
            Markup::DetailsAnswer,
            Markup::DetailsBare,
            Markup::AnswerOnly,
            Markup::Plain,
        ]
        .into_iter()
        .map(Markup::as_str)
        .collect();
        assert_eq!(
            names,
            [
                "think-noopen",
                "think_fast",
                "think_faster-noopen",
                "details+answer",
                "details+bare",
                "answer",
                "plain"
            ]
        );
    }

    #[test]
    fn effort_closer_in_a_stream() {
        let mut d = Directives {
            form: Form::V2,
            effort_closers: true,
            ..Directives::default()
        };
        d.effort = Some("low".into());
        let seen = observe_every_split(SSE, &mock_stream(&d), BodyEnd::Eof);
        assert_eq!(
            seen.markup,
            Some(Markup::Think {
                tag: "think_faster",
                open: true
            })
        );
    }

    #[test]
    fn json_answers_and_mislabelled_bodies() {
        let d = Directives::horizon();
        let (r, a) = crate::mock::reply_for(PROMPT, &d);
        let content = render(Form::DetailsBare, &r, &a, 3, "think");
        let body = json!({
            "id": "chatcmpl-1", "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8},
        })
        .to_string();
        for ct in ["application/json", SSE, ""] {
            let seen = observe_every_split(ct, body.as_bytes(), BodyEnd::Eof);
            assert_eq!(
                seen.format,
                if ct == SSE {
                    UpstreamFormat::Sse
                } else {
                    UpstreamFormat::Json
                },
                "{ct}"
            );
            assert_eq!(seen.delivery, Delivery::Json, "{ct}");
            assert_eq!(seen.markup, Some(Markup::DetailsBare), "{ct}");
            assert_eq!(seen.events, vec![("json", 1)], "{ct}");
            assert_eq!(seen.end, End::Eof);
            assert!(seen.usage);
            assert_eq!(seen.answer_head, a, "{ct}");
            assert_eq!(seen.answer_matches_text, Some(true));
        }
        // an SSE body labelled JSON
        let sse = mock_stream(&Directives::default());
        let seen = observe_every_split("application/json", &sse, BodyEnd::Eof);
        assert_eq!(seen.delivery, Delivery::Cumulative);
        assert_eq!(seen.end, End::DoneMarker);
        assert_eq!(seen.answer_head, mock_answer(&Directives::default()));
        // a JSON answer cut halfway
        let half = &body.as_bytes()[..body.len() / 2];
        let seen = observe(
            "application/json",
            &[half],
            BodyEnd::Broken("ReadError".into()),
        );
        assert_eq!(seen.end, End::Cut("ReadError".into()));
        assert!(!seen.end.is_clean());
    }

    #[test]
    fn error_events_are_seen_exactly() {
        let d = Directives {
            fault: Fault::DetailEvent,
            ..Directives::horizon()
        };
        let seen = observe_every_split(SSE, &mock_stream(&d), BodyEnd::Eof);
        assert_eq!(seen.error_event.as_deref(), Some(crate::mock::DETAIL_EVENT));
        assert_eq!(seen.events.last(), Some(&("detail", 1)));
        assert_eq!(seen.end, End::Eof);
        assert!(seen.decoder_error.is_some());
        let d = Directives {
            fault: Fault::ErrorEvent,
            ..Directives::default()
        };
        let seen = observe_every_split(SSE, &mock_stream(&d), BodyEnd::Eof);
        assert_eq!(seen.error_event.as_deref(), Some("upstream model error"));
        assert_eq!(seen.events.last(), Some(&("error", 1)));
        // a named error event
        let body = b"event: error\ndata: {\"message\":\"overloaded\"}\n\n";
        let seen = observe_every_split(SSE, body, BodyEnd::Eof);
        assert_eq!(seen.error_event.as_deref(), Some("overloaded"));
        // a JSON body that is only an error
        let seen = observe("application/json", &[br#"{"detail":"busy"}"#], BodyEnd::Eof);
        assert_eq!(seen.error_event.as_deref(), Some("busy"));
    }

    #[test]
    fn how_the_body_ended() {
        let d = Directives::default();
        let full = mock_stream(&d);
        let text = String::from_utf8(full.clone()).unwrap();
        let done_at = text.find("\"done\":true").unwrap();
        let before_done = text[..done_at].rfind("data: ").unwrap();
        let cut = &full[..before_done];
        // cut before any end marker
        let seen = observe(SSE, &[cut], BodyEnd::Broken("ReadError".into()));
        assert_eq!(seen.end, End::Cut("ReadError".into()));
        assert_eq!(seen.answer_matches_text, None);
        let seen = observe(SSE, &[cut], BodyEnd::Timeout);
        assert_eq!(seen.end, End::Timeout);
        let seen = observe(SSE, &[cut], BodyEnd::Eof);
        assert_eq!(seen.end, End::Eof);
        assert!(seen.end.is_clean());
        // after the done event
        let done_only = Directives {
            end: MockEnd::Done,
            ..Directives::default()
        };
        let body = mock_stream(&done_only);
        assert_eq!(observe(SSE, &[&body], BodyEnd::Eof).end, End::DoneThenEof);
        assert_eq!(
            observe(SSE, &[&body], BodyEnd::Broken("ConnectionClosed".into())).end,
            End::DoneThenRagged
        );
        assert_eq!(
            observe(SSE, &[&body], BodyEnd::Silent).end,
            End::DoneThenOpen
        );
        assert_eq!(
            observe(SSE, &[&body], BodyEnd::Timeout).end,
            End::DoneThenOpen
        );
        for e in [
            End::DoneMarker,
            End::DoneThenEof,
            End::DoneThenRagged,
            End::DoneThenOpen,
            End::Eof,
        ] {
            assert!(e.is_clean(), "{e:?}");
        }
        // nothing at all
        let seen = observe(SSE, &[], BodyEnd::Eof);
        assert_eq!(seen.delivery, Delivery::None);
        assert_eq!(seen.markup, None);
        assert!(seen.decoder_error.is_some());
        // an HTML page
        let seen = observe(
            "text/html",
            &[b"<!DOCTYPE html><html></html>"],
            BodyEnd::Eof,
        );
        assert!(seen.html);
    }

    fn chat_target(stream: bool) -> Target {
        Target::Chat {
            upstream_model: "IFM/K2-Horizon-375B-A23B".into(),
            public_ids: vec!["K2-Horizon".into()],
            stream,
        }
    }

    #[test]
    fn chat_checks_are_judged() {
        let limit = Duration::from_secs(30);
        let ms = Duration::from_millis(5);
        let d = Directives::horizon();
        let ok_seen = observe(
            SSE,
            &[&mock_stream(&d)],
            BodyEnd::Broken("ReadError".into()),
        );
        let ok = Check::chat_answered(chat_target(true), 200, SSE, ok_seen.clone(), ms, limit);
        assert_eq!(ok.verdict, Verdict::Ok, "{ok:?}");
        assert_eq!(ok.name, "chat IFM/K2-Horizon-375B-A23B (stream)");
        assert_eq!(ok.reason, None);
        // each failure, and its reason
        let with = |f: Change| {
            let mut s = ok_seen.clone();
            f(&mut s);
            Check::chat_answered(chat_target(true), 200, SSE, s, ms, limit)
        };
        type Change = fn(&mut AnswerSeen);
        let cases: [(Change, &str); 6] = [
            (
                |s| s.end = End::Cut("ReadError".into()),
                "broke before any end marker (ReadError)",
            ),
            (|s| s.end = End::Timeout, "within 30s (--timeout)"),
            (|s| s.answer_chars = 0, "the answer text is empty"),
            (
                |s| s.decoder_error = Some("bad".into()),
                "cannot be decoded: bad",
            ),
            (
                |s| s.error_event = Some("overloaded".into()),
                "error event: overloaded",
            ),
            (|s| s.html = true, "HTML page"),
        ];
        for (change, why) in cases {
            let c = with(change);
            assert_eq!(c.verdict, Verdict::Failed, "{why}");
            assert!(
                c.reason.as_deref().is_some_and(|r| r.contains(why)),
                "{why}: {:?}",
                c.reason
            );
        }
        assert_eq!(
            with(|s| s.error_event = Some("overloaded".into()))
                .detail
                .as_deref(),
            Some("overloaded")
        );
        // a refusal keeps the upstream's detail exactly
        let body = br#"{"detail":"messages[1]: Add a supported thinking field to each assistant message (reasoning)"}"#;
        let c = Check::chat_refused(chat_target(false), 400, "application/json", body, ms);
        assert_eq!(c.verdict, Verdict::Failed);
        assert_eq!(c.status, Some(400));
        assert_eq!(
            c.detail.as_deref(),
            Some(
                "messages[1]: Add a supported thinking field to each assistant message (reasoning)"
            )
        );
        assert_eq!(c.name, "chat IFM/K2-Horizon-375B-A23B (non-stream)");
        assert!(c.summary().starts_with("HTTP 400: messages[1]"));
    }

    #[test]
    fn error_details() {
        assert_eq!(
            error_detail("application/json", br#"{"detail":"Model not found"}"#).as_deref(),
            Some("Model not found")
        );
        assert_eq!(
            error_detail("", br#"{"error":{"message":"nope","type":"x"}}"#).as_deref(),
            Some("nope")
        );
        assert_eq!(
            error_detail("", br#"{"error":"nope"}"#).as_deref(),
            Some("nope")
        );
        assert_eq!(
            error_detail("", br#"{"message":"m"}"#).as_deref(),
            Some("m")
        );
        assert_eq!(
            error_detail(
                "",
                br#"{"detail":[{"loc":["body","messages"],"msg":"Field required"}]}"#
            )
            .as_deref(),
            Some(r#"[{"loc":["body","messages"],"msg":"Field required"}]"#)
        );
        assert_eq!(error_detail("", br#"{"other":1}"#), None);
        assert_eq!(
            error_detail("", br#"{"detail":null,"error":{"message":"inner"}}"#).as_deref(),
            Some("inner")
        );
        assert_eq!(error_detail("text/html", b"<html>challenge</html>"), None);
        assert_eq!(
            error_detail("text/plain", b"  Bad Gateway \n").as_deref(),
            Some("Bad Gateway")
        );
        assert_eq!(error_detail("", b""), None);
    }

    #[test]
    fn models_checks() {
        let wanted = || vec!["A".to_string(), "B".to_string()];
        let ms = Duration::from_millis(1);
        let c = Check::models(
            wanted(),
            200,
            "application/json",
            br#"{"data":[{"id":"A"},{"id":"B"},{"id":"C"}]}"#,
            ms,
        );
        assert_eq!(c.verdict, Verdict::Ok, "{c:?}");
        assert_eq!(
            c.observed,
            Observed::Models(ModelList {
                listed: vec!["A".into(), "B".into(), "C".into()],
                missing: vec![]
            })
        );
        let c = Check::models(wanted(), 200, "application/json", br#"[{"id":"B"}]"#, ms);
        assert_eq!(c.verdict, Verdict::Failed);
        assert_eq!(
            c.reason.as_deref(),
            Some("configured upstream model(s) not listed: A")
        );
        let c = Check::models(wanted(), 200, "application/json", br#"["A","B"]"#, ms);
        assert_eq!(c.verdict, Verdict::Ok);
        for status in [401, 403, 404] {
            let c = Check::models(
                wanted(),
                status,
                "application/json",
                br#"{"detail":"Not authenticated"}"#,
                ms,
            );
            assert_eq!(c.verdict, Verdict::Skipped, "{status}");
            assert_eq!(
                c.reason,
                Some(format!(
                    "not served to this caller: HTTP {status}: Not authenticated"
                ))
            );
        }
        let c = Check::models(
            wanted(),
            500,
            "application/json",
            br#"{"detail":"boom"}"#,
            ms,
        );
        assert_eq!(
            (c.verdict, c.reason.as_deref()),
            (Verdict::Failed, Some("HTTP 500: boom"))
        );
        let c = Check::models(wanted(), 200, "text/html", b"<html></html>", ms);
        assert_eq!(c.verdict, Verdict::Failed);
        assert!(c
            .reason
            .as_deref()
            .is_some_and(|r| r.starts_with("not a model list")));
        assert_eq!(c.target, Target::Models { wanted: wanted() });
    }

    fn sample_report() -> Report {
        let d = Directives::horizon();
        let seen = observe(
            SSE,
            &[&mock_stream(&d)],
            BodyEnd::Broken("ReadError".into()),
        );
        let ms = Duration::from_millis(12);
        Report {
            upstream: "https://chat.ifm.ai".into(),
            mode: "user",
            token: Some("eyJh…X9c0".into()),
            checks: vec![
                Check::models(
                    vec!["IFM/K2-Horizon-375B-A23B".into()],
                    401,
                    "application/json",
                    br#"{"detail":"Not authenticated"}"#,
                    ms,
                ),
                Check::chat_answered(
                    chat_target(true),
                    200,
                    SSE,
                    seen,
                    ms,
                    Duration::from_secs(30),
                ),
                Check::chat_refused(
                    chat_target(false),
                    400,
                    "application/json",
                    br#"{"detail":"bad token eyJhbGciOiJIUzI1NiJ9.secret-X9c0"}"#,
                    ms,
                ),
            ],
        }
    }

    #[test]
    fn report_json_table_and_scrub() {
        let mut r = sample_report();
        assert!(!r.ok());
        r.scrub("eyJhbGciOiJIUzI1NiJ9.secret-X9c0", "eyJh…X9c0");
        let v = r.to_json();
        let text = v.to_string();
        assert!(!text.contains("secret"), "{text}");
        assert_eq!(v["ok"], false);
        assert_eq!(v["mode"], "user");
        assert_eq!(v["token"], "eyJh…X9c0");
        assert_eq!(v["upstream"], "https://chat.ifm.ai");
        let checks = v["checks"].as_array().unwrap();
        assert_eq!(checks.len(), 3);
        assert_eq!(checks[0]["result"], "skipped");
        assert_eq!(checks[1]["result"], "ok");
        assert_eq!(checks[1]["observed"]["markup"], "details+bare");
        assert_eq!(checks[1]["observed"]["end"], "done_then_ragged");
        assert_eq!(checks[1]["observed"]["task_id"], true);
        assert_eq!(checks[1]["observed"]["finish_chunk_after_done"], true);
        assert_eq!(checks[1]["stream"], true);
        assert_eq!(checks[1]["elapsed_ms"], 12);
        assert_eq!(checks[2]["result"], "failed");
        assert_eq!(checks[2]["status"], 400);
        assert_eq!(checks[2]["detail"], "bad token eyJh…X9c0");
        let table = r.table();
        assert!(!table.contains("secret"), "{table}");
        assert!(
            table.starts_with("k2proxy probe: https://chat.ifm.ai (user mode, token eyJh…X9c0)")
        );
        for name in [
            "models",
            "chat IFM/K2-Horizon-375B-A23B (stream)",
            "chat IFM/K2-Horizon-375B-A23B (non-stream)",
        ] {
            assert!(
                table.lines().any(|l| l.starts_with(name)),
                "{name}: {table}"
            );
        }
        // the failed row has its details underneath
        let detail_lines: Vec<&str> = table.lines().filter(|l| l.starts_with("    ")).collect();
        assert!(
            detail_lines
                .iter()
                .any(|l| l.contains("detail   bad token eyJh…X9c0")),
            "{table}"
        );
        assert!(
            detail_lines
                .iter()
                .any(|l| l.contains("models   K2-Horizon")),
            "{table}"
        );
        // An ok chat row has one line underneath: the events the upstream sent.
        let lines: Vec<&str> = table.lines().collect();
        let ok_row = lines
            .iter()
            .position(|l| l.starts_with("chat IFM/K2-Horizon-375B-A23B (stream)"))
            .unwrap();
        assert!(
            lines[ok_row + 1].starts_with("    events   task_id"),
            "{table}"
        );
        assert!(!lines[ok_row + 2].starts_with("    "), "{table}");
        assert!(
            table
                .trim_end()
                .ends_with("1 ok, 1 failed, 1 skipped: FAILED"),
            "{table}"
        );
        // skipped checks do not fail a run
        r.checks.pop();
        assert!(r.ok());
        assert_eq!(r.to_json()["ok"], true);
    }

    #[test]
    fn request_body_is_the_two_turn_history() {
        let body = chat_request_body("K2-Horizon", true);
        let req = crate::surface::chat::request::ChatRequest::parse(&body).unwrap();
        assert_eq!(req.model, "K2-Horizon");
        assert!(req.stream);
        assert_eq!(req.messages.len(), 3);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v["messages"][1],
            json!({"role": "assistant", "content": "OK"})
        );
        assert_eq!(v["messages"][2]["content"], PROMPT);
    }
}
