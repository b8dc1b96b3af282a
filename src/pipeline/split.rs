//! Incremental split of K2Think answer text into a reasoning channel and a
//! content channel.
//!
//! [`Splitter`] is fed the raw answer text as it grows (appended pieces) and
//! writes ordered [`Delta`]s. It understands every markup form K2Think has
//! used:
//!
//! 1. v1: `<think>R</think>\n<answer>A</answer>`
//! 2. v2: `<think duration="12">R</think>\nA`, with or without `<answer>…</answer>`
//!    (any attributes on the think tag);
//! 3. v2 without its opening tag: `R</think>\n\nA`;
//! 4. Open WebUI: `<details type="reasoning" …>\n<summary>…</summary>\n> R\n</details>\n<answer>A</answer>`:
//!    the summary is dropped and the `> ` (or bare `>`) quoting at each line
//!    start is removed;
//! 5. no markup: all content.
//!
//! K2 Horizon's lower reasoning efforts name their tag `think_fast` / `think_faster`
//! (k2think-protocol.md §0.5 #4): `<think_fast>` opens and `</think_fast>` closes like
//! `<think>` and `</think>`, and any of the three closers ends any reasoning.
//!
//! Rules: whitespace before the first tag is ignored; `<answer>`/`</answer>`
//! never reach the output; each channel's leading whitespace is trimmed and
//! its trailing whitespace is held back until something else follows (and
//! dropped at the end). Output streams as the text grows: only a suffix that
//! could still become a tag relevant in the current state is held back (at
//! most [`MAX_TAG`] bytes for a tag with attributes), and released as soon as
//! it cannot. Once the answer has started only `</answer>` is special.
//!
//! # Forms 3 and 5: `implicit_think`
//!
//! Both start with untagged text; only a later `</think>` tells them apart.
//!
//! * `implicit_think = true` (the product default): untagged leading text is
//!   streamed on the **reasoning** channel, speculatively, until `</think>` or
//!   `<answer>` proves it was reasoning. If the text ends without such proof,
//!   [`Splitter::finish`] emits the whole speculative text **again on the
//!   content channel** (nothing is lost for a streaming client) and
//!   [`Splitter::reasoning_retracted`] becomes true; the first
//!   [`Splitter::retracted_len`] bytes of the reasoning channel were that
//!   speculation, so a non-stream aggregator can drop them and keep the text
//!   as content only. [`Splitter::disable_implicit`] (called when the upstream
//!   separates reasoning itself, e.g. OpenAI `reasoning_content`) resolves a
//!   running speculation the same way at once.
//! * `implicit_think = false`: untagged leading text is content; a later
//!   stray `</think>` is removed and nothing else changes.

/// Longest opening tag (with attributes) that is recognised; a longer
/// `<think …`/`<details …` is plain text.
pub const MAX_TAG: usize = 256;

pub use crate::core::events::{Delta, Deltas};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Reasoning,
    Content,
}

/// Output side of one channel: trimming, held-back trailing whitespace and
/// the byte counters used to re-derive after an upstream rewrite.
#[derive(Debug, Clone, Default)]
struct Channel {
    started: bool,
    held: String,
    /// Bytes this channel has produced (before `skip`).
    derived: usize,
    /// Bytes actually written to the output.
    emitted: usize,
    /// Bytes of future production already emitted by an earlier derivation.
    skip: usize,
}

impl Channel {
    fn emit(&mut self, text: &str, kind: Kind, out: &mut Deltas) {
        let mut t = text;
        if !self.started {
            t = t.trim_start();
            if t.is_empty() {
                return;
            }
            self.started = true;
        }
        let body = t.trim_end();
        if body.is_empty() {
            self.held.push_str(t);
            return;
        }
        if !self.held.is_empty() {
            let held = std::mem::take(&mut self.held);
            self.output(&held, kind, out);
            self.held = held;
            self.held.clear();
        }
        self.output(body, kind, out);
        self.held.push_str(&t[body.len()..]);
    }

    fn output(&mut self, text: &str, kind: Kind, out: &mut Deltas) {
        self.derived += text.len();
        let mut s = text;
        if self.skip > 0 {
            let cut = ceil_boundary(s, self.skip.min(s.len()));
            self.skip = self.skip.saturating_sub(cut);
            s = &s[cut..];
        }
        if s.is_empty() {
            return;
        }
        self.emitted += s.len();
        match kind {
            Kind::Reasoning => out.push_reasoning(s),
            Kind::Content => out.push_content(s),
        }
    }

    /// Forget the start and held whitespace (counters stay).
    fn restart(&mut self) {
        self.started = false;
        self.held.clear();
    }
}

/// Smallest char boundary of `s` that is `>= i` (or `s.len()`).
fn ceil_boundary(s: &str, mut i: usize) -> usize {
    while i < s.len() && !s.is_char_boundary(i) {
        i += 1;
    }
    i.min(s.len())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Nothing but whitespace seen yet.
    Start,
    /// Inside reasoning that ends at `</think>`; `implicit` = no opening tag
    /// was seen (speculative, also ends at `<answer>`).
    Think { implicit: bool },
    /// Inside `<details type="reasoning">`.
    Details {
        line_start: bool,
        skip_space: bool,
        in_summary: bool,
        body_started: bool,
    },
    /// After `</think>` / `</details>`: whitespace, then `<answer>` or text.
    AfterThink,
    /// The answer. `stray_think`: a `</think>` is still removed (untagged
    /// start with `implicit_think = false`).
    Answer { stray_think: bool },
}

enum Tag {
    Match(usize),
    Partial,
    No,
}

/// `rest` starts with the exact `tag`, or could still become it.
fn exact(rest: &str, tag: &str) -> Tag {
    if rest.starts_with(tag) {
        Tag::Match(tag.len())
    } else if tag.starts_with(rest) {
        Tag::Partial
    } else {
        Tag::No
    }
}

/// The reasoning closers: `</think>` and the lower efforts' `</think_fast>`,
/// `</think_faster>`.
const THINK_CLOSERS: [&str; 3] = ["</think>", "</think_fast>", "</think_faster>"];

/// `rest` starts with one of the reasoning closers, or could still become one.
fn closer(rest: &str) -> Tag {
    any_of(THINK_CLOSERS.iter().map(|tag| exact(rest, tag)))
}

/// `rest` starts with a reasoning opening tag (`<think`, `<think_fast`, `<think_faster`,
/// with or without attributes), or could still become one.
fn think_open(rest: &str) -> Tag {
    any_of(
        ["<think", "<think_fast", "<think_faster"]
            .iter()
            .map(|name| open(rest, name)),
    )
}

/// The first match among `tags`; else `Partial` when any could still match.
fn any_of(tags: impl Iterator<Item = Tag>) -> Tag {
    let mut partial = false;
    for t in tags {
        match t {
            Tag::Match(n) => return Tag::Match(n),
            Tag::Partial => partial = true,
            Tag::No => {}
        }
    }
    if partial {
        Tag::Partial
    } else {
        Tag::No
    }
}

/// `rest` starts with the opening tag `name` (e.g. `<think`), optionally
/// followed by attributes, up to `>` within [`MAX_TAG`] bytes.
fn open(rest: &str, name: &str) -> Tag {
    let r = rest.as_bytes();
    let n = name.as_bytes();
    if r.len() <= n.len() {
        return if n.starts_with(r) {
            Tag::Partial
        } else {
            Tag::No
        };
    }
    if !r.starts_with(n) {
        return Tag::No;
    }
    match r[n.len()] {
        b'>' => Tag::Match(n.len() + 1),
        c if c.is_ascii_whitespace() => {
            let lim = r.len().min(MAX_TAG);
            match r[..lim].iter().position(|&b| b == b'>') {
                Some(p) => Tag::Match(p + 1),
                None if r.len() < MAX_TAG => Tag::Partial,
                None => Tag::No,
            }
        }
        _ => Tag::No,
    }
}

/// Result of one state step.
enum Step {
    /// Continue scanning at this offset.
    Go(usize),
    /// Keep everything from this offset for the next push.
    Hold(usize),
}

/// Incremental reasoning/content splitter. See the module docs.
#[derive(Debug, Clone)]
pub struct Splitter {
    implicit_think: bool,
    state: State,
    /// Unconsumed text: only a possible partial tag between pushes.
    pending: String,
    reasoning: Channel,
    content: Channel,
    /// Raw speculative text while in implicit think.
    spec: String,
    retracted: bool,
    retracted_len: usize,
    finished: bool,
}

impl Splitter {
    /// A splitter; see the module docs for `implicit_think`.
    pub fn new(implicit_think: bool) -> Self {
        Splitter {
            implicit_think,
            state: State::Start,
            pending: String::new(),
            reasoning: Channel::default(),
            content: Channel::default(),
            spec: String::new(),
            retracted: false,
            retracted_len: 0,
            finished: false,
        }
    }

    /// Whether speculative reasoning was turned into content.
    pub fn reasoning_retracted(&self) -> bool {
        self.retracted
    }

    /// How many leading bytes of the reasoning channel were speculative and
    /// retracted (0 unless [`Self::reasoning_retracted`]).
    pub fn retracted_len(&self) -> usize {
        self.retracted_len
    }

    /// Whether the text is still untagged leading text streamed as reasoning.
    pub fn speculating(&self) -> bool {
        matches!(self.state, State::Think { implicit: true })
    }

    /// Bytes emitted so far on (reasoning, content).
    pub fn emitted(&self) -> (usize, usize) {
        (self.reasoning.emitted, self.content.emitted)
    }

    /// Append raw answer text.
    #[inline]
    pub fn push(&mut self, text: &str, out: &mut Deltas) {
        if text.is_empty() || self.finished {
            return;
        }
        self.pending.push_str(text);
        self.run(false, out);
    }

    /// Reasoning that the upstream already separated (OpenAI
    /// `reasoning_content`): goes straight to the reasoning channel.
    #[inline]
    pub fn push_reasoning(&mut self, text: &str, out: &mut Deltas) {
        if text.is_empty() || self.finished {
            return;
        }
        self.disable_implicit(out);
        self.reasoning.emit(text, Kind::Reasoning, out);
    }

    /// Stop treating untagged leading text as reasoning. If a speculation is
    /// running it is resolved now as in [`Self::finish`] (retracted: the text
    /// goes to content and the answer continues untagged).
    pub fn disable_implicit(&mut self, out: &mut Deltas) {
        if !self.implicit_think {
            return;
        }
        self.implicit_think = false;
        if self.speculating() {
            self.retract(out);
            self.state = State::Answer { stray_think: true };
        }
    }

    /// The text is complete: flush what was held back, resolve a running
    /// speculation, drop trailing whitespace.
    pub fn finish(&mut self, out: &mut Deltas) {
        if self.finished {
            return;
        }
        self.run(true, out);
        if self.speculating() {
            self.retract(out);
        }
        self.reasoning.held.clear();
        self.content.held.clear();
        self.finished = true;
    }

    /// The upstream replaced the whole text with `full` (a cumulative rewrite,
    /// e.g. Open WebUI's `done="false"` → `done="true"` head). Derive the
    /// channels again from `full` and emit only what goes beyond what was
    /// already emitted on each channel; later output continues from there.
    pub fn rederive(&mut self, full: &str, out: &mut Deltas) {
        let mut fresh = Splitter::new(self.implicit_think);
        let mut tmp = Deltas::new();
        fresh.push(full, &mut tmp);
        let r = tmp.reasoning_text();
        let c = tmp.content_text();
        let old_r = self.reasoning.emitted;
        let old_c = self.content.emitted;
        out.push_reasoning(&r[ceil_boundary(&r, old_r)..]);
        out.push_content(&c[ceil_boundary(&c, old_c)..]);
        for (ch, old) in [(&mut fresh.reasoning, old_r), (&mut fresh.content, old_c)] {
            ch.skip = old.saturating_sub(ch.derived);
            ch.emitted = ch.derived.max(old);
        }
        *self = fresh;
    }

    fn retract(&mut self, out: &mut Deltas) {
        self.retracted = true;
        self.retracted_len = self.reasoning.emitted;
        let spec = std::mem::take(&mut self.spec);
        self.content.emit(&spec, Kind::Content, out);
        self.reasoning.restart();
        if let State::Think { implicit: true } = self.state {
            self.state = State::Answer { stray_think: false };
        }
    }

    fn run(&mut self, fin: bool, out: &mut Deltas) {
        let mut buf = std::mem::take(&mut self.pending);
        let mut i = 0;
        while i < buf.len() {
            let step = match self.state {
                State::Start => self.start(&buf, i, fin),
                State::Think { implicit } => self.think(&buf, i, implicit, fin, out),
                State::Details { .. } => self.details(&buf, i, fin, out),
                State::AfterThink => self.after_think(&buf, i, fin),
                State::Answer { stray_think } => self.answer(&buf, i, stray_think, fin, out),
            };
            match step {
                Step::Go(j) => i = j,
                Step::Hold(j) => {
                    i = j;
                    break;
                }
            }
        }
        buf.drain(..i);
        self.pending = buf;
    }

    fn emit_reasoning(&mut self, text: &str, out: &mut Deltas) {
        if let State::Think { implicit: true } = self.state {
            self.spec.push_str(text);
        }
        self.reasoning.emit(text, Kind::Reasoning, out);
    }

    fn start(&mut self, s: &str, i: usize, fin: bool) -> Step {
        let rest = &s[i..];
        let t = rest.trim_start();
        let j = i + (rest.len() - t.len());
        if t.is_empty() {
            return Step::Go(j);
        }
        if t.starts_with('<') {
            let mut partial = false;
            for (which, m) in [
                (0, think_open(t)),
                (1, open(t, "<details")),
                (2, exact(t, "<answer>")),
                (3, closer(t)),
            ] {
                match m {
                    Tag::Match(n) => {
                        self.state = match which {
                            0 => State::Think { implicit: false },
                            1 => State::Details {
                                line_start: true,
                                skip_space: false,
                                in_summary: false,
                                body_started: false,
                            },
                            2 => State::Answer { stray_think: false },
                            _ => State::AfterThink,
                        };
                        return Step::Go(j + n);
                    }
                    Tag::Partial => partial = true,
                    Tag::No => {}
                }
            }
            if partial && !fin {
                return Step::Hold(j);
            }
        }
        self.state = if self.implicit_think {
            State::Think { implicit: true }
        } else {
            State::Answer { stray_think: true }
        };
        Step::Go(j)
    }

    fn think(&mut self, s: &str, i: usize, implicit: bool, fin: bool, out: &mut Deltas) -> Step {
        let rest = &s[i..];
        let Some(k) = rest.find('<') else {
            self.emit_reasoning(rest, out);
            return Step::Go(s.len());
        };
        self.emit_reasoning(&rest[..k], out);
        let at = &rest[k..];
        let mut partial = false;
        match closer(at) {
            Tag::Match(n) => {
                self.spec.clear();
                self.state = State::AfterThink;
                return Step::Go(i + k + n);
            }
            Tag::Partial => partial = true,
            Tag::No => {}
        }
        if implicit {
            match exact(at, "<answer>") {
                Tag::Match(n) => {
                    self.spec.clear();
                    self.state = State::Answer { stray_think: false };
                    return Step::Go(i + k + n);
                }
                Tag::Partial => partial = true,
                Tag::No => {}
            }
        }
        if partial && !fin {
            return Step::Hold(i + k);
        }
        self.emit_reasoning("<", out);
        Step::Go(i + k + 1)
    }

    fn details(&mut self, s: &str, i: usize, fin: bool, out: &mut Deltas) -> Step {
        let State::Details {
            mut line_start,
            mut skip_space,
            mut in_summary,
            mut body_started,
        } = self.state
        else {
            return Step::Go(i);
        };
        let rest = &s[i..];
        let step = if in_summary {
            match rest.find('<') {
                None => Step::Go(s.len()),
                Some(k) => match exact(&rest[k..], "</summary>") {
                    Tag::Match(n) => {
                        in_summary = false;
                        Step::Go(i + k + n)
                    }
                    Tag::Partial if !fin => Step::Hold(i + k),
                    _ => Step::Go(i + k + 1),
                },
            }
        } else if line_start {
            line_start = false;
            if rest.starts_with('>') {
                skip_space = true;
                Step::Go(i + 1)
            } else {
                Step::Go(i)
            }
        } else if skip_space {
            skip_space = false;
            Step::Go(if rest.starts_with(' ') { i + 1 } else { i })
        } else {
            match rest.find(['<', '\n']) {
                None => {
                    body_started |= !rest.trim().is_empty();
                    self.reasoning.emit(rest, Kind::Reasoning, out);
                    Step::Go(s.len())
                }
                Some(k) if rest.as_bytes()[k] == b'\n' => {
                    body_started |= !rest[..k].trim().is_empty();
                    self.reasoning.emit(&rest[..=k], Kind::Reasoning, out);
                    line_start = true;
                    Step::Go(i + k + 1)
                }
                Some(k) => {
                    body_started |= !rest[..k].trim().is_empty();
                    self.reasoning.emit(&rest[..k], Kind::Reasoning, out);
                    let at = &rest[k..];
                    let end = exact(at, "</details>");
                    let summary = if body_started {
                        Tag::No
                    } else {
                        open(at, "<summary")
                    };
                    match (end, summary) {
                        (Tag::Match(n), _) => {
                            self.state = State::AfterThink;
                            return Step::Go(i + k + n);
                        }
                        (_, Tag::Match(n)) => {
                            in_summary = true;
                            Step::Go(i + k + n)
                        }
                        (Tag::Partial, _) | (_, Tag::Partial) if !fin => Step::Hold(i + k),
                        _ => {
                            body_started = true;
                            self.reasoning.emit("<", Kind::Reasoning, out);
                            Step::Go(i + k + 1)
                        }
                    }
                }
            }
        };
        self.state = State::Details {
            line_start,
            skip_space,
            in_summary,
            body_started,
        };
        step
    }

    fn after_think(&mut self, s: &str, i: usize, fin: bool) -> Step {
        let rest = &s[i..];
        let t = rest.trim_start();
        let j = i + (rest.len() - t.len());
        if t.is_empty() {
            return Step::Go(j);
        }
        match exact(t, "<answer>") {
            Tag::Match(n) => {
                self.state = State::Answer { stray_think: false };
                Step::Go(j + n)
            }
            Tag::Partial if !fin => Step::Hold(j),
            _ => {
                self.state = State::Answer { stray_think: false };
                Step::Go(j)
            }
        }
    }

    fn answer(
        &mut self,
        s: &str,
        i: usize,
        stray_think: bool,
        fin: bool,
        out: &mut Deltas,
    ) -> Step {
        let rest = &s[i..];
        let Some(k) = rest.find('<') else {
            self.content.emit(rest, Kind::Content, out);
            return Step::Go(s.len());
        };
        self.content.emit(&rest[..k], Kind::Content, out);
        let at = &rest[k..];
        let mut partial = false;
        match exact(at, "</answer>") {
            Tag::Match(n) => return Step::Go(i + k + n),
            Tag::Partial => partial = true,
            Tag::No => {}
        }
        if stray_think {
            match closer(at) {
                Tag::Match(n) => {
                    self.state = State::Answer { stray_think: false };
                    return Step::Go(i + k + n);
                }
                Tag::Partial => partial = true,
                Tag::No => {}
            }
        }
        if partial && !fin {
            return Step::Hold(i + k);
        }
        self.content.emit("<", Kind::Content, out);
        Step::Go(i + k + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feed `pieces`, return (reasoning, content, retracted, deltas-after-each-push).
    fn run(implicit: bool, pieces: &[&str]) -> (String, String, bool) {
        let mut s = Splitter::new(implicit);
        let mut out = Deltas::new();
        for p in pieces {
            s.push(p, &mut out);
        }
        s.finish(&mut out);
        (
            out.reasoning_text(),
            out.content_text(),
            s.reasoning_retracted(),
        )
    }

    /// Whole, byte-by-byte (char by char) and every 2-split agree; returns the result.
    fn all_splits(implicit: bool, text: &str) -> (String, String, bool) {
        let whole = run(implicit, &[text]);
        let chars: Vec<String> = text.chars().map(String::from).collect();
        let refs: Vec<&str> = chars.iter().map(String::as_str).collect();
        assert_eq!(run(implicit, &refs), whole, "char by char: {text:?}");
        for (i, _) in text.char_indices() {
            let (a, b) = text.split_at(i);
            assert_eq!(run(implicit, &[a, b]), whole, "split at {i}: {text:?}");
        }
        whole
    }

    fn rc(r: &str, c: &str) -> (String, String, bool) {
        (r.to_string(), c.to_string(), false)
    }

    #[test]
    fn v1_think_answer() {
        let t = "\n <think>I should greet.\nThen help.</think>\n<answer>你好 👋\nHow can I help?</answer>\n";
        assert_eq!(
            all_splits(true, t),
            rc("I should greet.\nThen help.", "你好 👋\nHow can I help?")
        );
        assert_eq!(
            all_splits(false, t),
            rc("I should greet.\nThen help.", "你好 👋\nHow can I help?")
        );
    }

    #[test]
    fn v2_duration_with_and_without_answer_tag() {
        let a = "<think duration=\"12\">R one\n\nR two</think>\nThe answer.";
        assert_eq!(all_splits(true, a), rc("R one\n\nR two", "The answer."));
        let b = "<think duration=\"12\" x='y'>R</think>\n<answer>A</answer>";
        assert_eq!(all_splits(false, b), rc("R", "A"));
    }

    #[test]
    fn v2_missing_open_tag() {
        let t = "Let me think.\nOK.</think>\n\nHello <b>there</b>";
        assert_eq!(
            all_splits(true, t),
            rc("Let me think.\nOK.", "Hello <b>there</b>")
        );
        // Without implicit think the stray close is just removed.
        assert_eq!(
            all_splits(false, t),
            rc("", "Let me think.\nOK.\n\nHello <b>there</b>")
        );
        // `<answer>` also proves the speculation.
        assert_eq!(all_splits(true, "R<answer>A</answer>"), rc("R", "A"));
    }

    #[test]
    fn details_form_strips_summary_and_quotes() {
        let t = "<details type=\"reasoning\" done=\"true\" duration=\"3\">\n<summary>Thought for 3 seconds</summary>\n> line one\n>\n> line <two>\n>no space\n</details>\n<answer>A <i>b</i></answer>";
        assert_eq!(
            all_splits(true, t),
            rc("line one\n\nline <two>\nno space", "A <i>b</i>")
        );
    }

    #[test]
    fn lower_effort_tags_split_like_think() {
        let t = "<think_fast duration=\"2\">Quick plan.</think_fast>\nDone <i>fast</i>.";
        assert_eq!(all_splits(true, t), rc("Quick plan.", "Done <i>fast</i>."));
        assert_eq!(all_splits(false, t), rc("Quick plan.", "Done <i>fast</i>."));
        let t = "<think_faster>R</think_faster>\n<answer>A</answer>";
        assert_eq!(all_splits(true, t), rc("R", "A"));
        // Without an opening tag, any closer proves the speculation.
        for closer in ["</think>", "</think_fast>", "</think_faster>"] {
            let t = format!("Plan it.{closer}\n\nAnswer.");
            assert_eq!(all_splits(true, &t), rc("Plan it.", "Answer."), "{closer}");
            assert_eq!(
                all_splits(false, &t),
                rc("", "Plan it.\n\nAnswer."),
                "{closer}: a stray closer is removed"
            );
        }
        // Near misses stay text.
        assert_eq!(
            all_splits(false, "<think_slow>x</think_fastest>"),
            rc("", "<think_slow>x</think_fastest>")
        );
    }

    #[test]
    fn details_with_a_bare_answer() {
        let t = "<details type=\"reasoning\" done=\"true\" duration=\"2\">\n<summary>Thought for 2 seconds</summary>\n> First line\n> second <b>line</b>\n</details>\nThe answer, <i>bare</i>.\nLine two.";
        let want = rc(
            "First line\nsecond <b>line</b>",
            "The answer, <i>bare</i>.\nLine two.",
        );
        assert_eq!(all_splits(true, t), want);
        assert_eq!(all_splits(false, t), want);
    }

    #[test]
    fn plain_text_speculation_is_retracted() {
        let t = "  Hello there,\nworld <3  ";
        let (r, c, retracted) = all_splits(true, t);
        assert_eq!(
            (r.as_str(), c.as_str(), retracted),
            ("Hello there,\nworld <3", "Hello there,\nworld <3", true)
        );
        let mut s = Splitter::new(true);
        let mut out = Deltas::new();
        s.push(t, &mut out);
        s.finish(&mut out);
        assert_eq!(s.retracted_len(), "Hello there,\nworld <3".len());
        assert_eq!(all_splits(false, t), rc("", "Hello there,\nworld <3"));
    }

    #[test]
    fn streams_as_it_grows() {
        let mut s = Splitter::new(true);
        let mut out = Deltas::new();
        s.push("<think>a</think><answer>Hel", &mut out);
        assert_eq!(
            out.as_slice(),
            &[Delta::Reasoning("a".into()), Delta::Content("Hel".into())]
        );
        out.clear();
        s.push("lo<", &mut out);
        assert_eq!(out.as_slice(), &[Delta::Content("lo".into())]);
        out.clear();
        s.push("b", &mut out);
        assert_eq!(out.as_slice(), &[Delta::Content("<b".into())]);
        out.clear();
        s.push("></ans", &mut out);
        assert_eq!(out.as_slice(), &[Delta::Content(">".into())]);
        out.clear();
        s.push("wer> tail", &mut out);
        assert_eq!(out.as_slice(), &[Delta::Content(" tail".into())]);
    }

    #[test]
    fn holds_only_possible_tag_prefixes() {
        let mut s = Splitter::new(true);
        let mut out = Deltas::new();
        s.push("<thi", &mut out);
        assert!(out.is_empty());
        s.push("nk>abc </th", &mut out);
        assert_eq!(out.as_slice(), &[Delta::Reasoning("abc".into())]);
        out.clear();
        s.push("e", &mut out); // "</the" cannot be "</think>"
        assert_eq!(out.as_slice(), &[Delta::Reasoning(" </the".into())]);
        // An attribute tag that never closes within MAX_TAG is text.
        let long = format!("<think {}", "a".repeat(MAX_TAG));
        let (r, c, _) = run(false, &[&long]);
        assert_eq!((r.as_str(), c.as_str()), ("", long.as_str()));
        // `<thinking>` is not a think tag.
        assert_eq!(run(false, &["<thinking>x"]), rc("", "<thinking>x"));
    }

    #[test]
    fn answer_tags_never_in_output_and_think_is_text_in_answer() {
        assert_eq!(
            all_splits(true, "<answer>a <think>b</think></answer>c"),
            rc("", "a <think>b</think>c")
        );
    }

    #[test]
    fn push_reasoning_resolves_speculation() {
        let mut s = Splitter::new(true);
        let mut out = Deltas::new();
        s.push("Hi", &mut out);
        s.push_reasoning("thinking", &mut out);
        s.push(" there", &mut out);
        s.finish(&mut out);
        assert_eq!(out.reasoning_text(), "Hithinking");
        assert_eq!(out.content_text(), "Hi there");
        assert!(s.reasoning_retracted());
        assert_eq!(s.retracted_len(), 2);
    }

    #[test]
    fn rederive_emits_only_new_text() {
        let mut s = Splitter::new(true);
        let mut out = Deltas::new();
        let a = "<details type=\"reasoning\" done=\"false\">\n<summary>Thinking…</summary>\n> The user wants";
        s.push(a, &mut out);
        assert_eq!(out.reasoning_text(), "The user wants");
        let b = "<details type=\"reasoning\" done=\"true\" duration=\"3\">\n<summary>Thought for 3 seconds</summary>\n> The user wants a greeting.\n</details>\n<answer>Hello";
        s.rederive(b, &mut out);
        s.push("!</answer>", &mut out);
        s.finish(&mut out);
        assert_eq!(out.reasoning_text(), "The user wants a greeting.");
        assert_eq!(out.content_text(), "Hello!");
        // A rewrite that shrinks a channel does not repeat it later.
        let mut s = Splitter::new(false);
        let mut out = Deltas::new();
        s.push("<answer>abcdef", &mut out);
        s.rederive("<answer>abc", &mut out);
        s.push("defgh", &mut out);
        assert_eq!(out.content_text(), "abcdefgh");
    }

    #[test]
    fn random_split_invariance() {
        // Differential property: any piece boundaries give the same channels.
        let alphabet: &[&str] = &[
            "<",
            ">",
            "/",
            "think",
            "answer",
            "details",
            "summary",
            " ",
            "\n",
            "a",
            "é",
            "👋",
            "<think>",
            "</think>",
            "<answer>",
            "</answer>",
            "<details type=\"reasoning\">",
            "</details>",
            "<summary>",
            "</summary>",
            "\n> ",
            "<think duration=\"3\">",
            "</th",
            "<ans",
            "<think_fast>",
            "</think_fast>",
            "</think_faster>",
            "_fast",
        ];
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..3000 {
            let n = (next() % 24) as usize;
            let mut text = String::new();
            for _ in 0..n {
                text.push_str(alphabet[(next() % alphabet.len() as u64) as usize]);
            }
            for implicit in [true, false] {
                let whole = run(implicit, &[&text]);
                let mut pieces = Vec::new();
                let mut rest = text.as_str();
                while !rest.is_empty() {
                    let mut cut = ((next() % 6) as usize).min(rest.len());
                    while !rest.is_char_boundary(cut) {
                        cut += 1;
                    }
                    let (a, b) = rest.split_at(cut);
                    pieces.push(a);
                    rest = b;
                }
                assert_eq!(run(implicit, &pieces), whole, "{text:?} {pieces:?}");
            }
        }
    }
}
