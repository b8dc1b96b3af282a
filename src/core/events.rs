//! The neutral events a provider's decoder produces and every surface's encoder reads:
//! ordered reasoning/content text ([`Deltas`]) and token usage ([`Usage`]).

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One piece of output text on one channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delta {
    /// Text for `reasoning_content`.
    Reasoning(String),
    /// Text for `content`.
    Content(String),
}

impl Delta {
    /// The text, whatever the channel.
    pub fn text(&self) -> &str {
        match self {
            Delta::Reasoning(s) | Delta::Content(s) => s,
        }
    }
}

/// Reusable ordered buffer of deltas. Consecutive text on the same channel is
/// merged into one item. The caller clears it between uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Deltas {
    items: Vec<Delta>,
}

impl Deltas {
    /// An empty buffer.
    #[inline]
    pub fn new() -> Self {
        Self::default()
    }

    /// Remove every item (keeps the allocation of the list).
    #[inline]
    pub fn clear(&mut self) {
        self.items.clear();
    }

    /// Whether there is no item.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Number of items.
    #[inline]
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// The items in order.
    #[inline]
    pub fn as_slice(&self) -> &[Delta] {
        &self.items
    }

    /// Iterate over the items in order.
    #[inline]
    pub fn iter(&self) -> std::slice::Iter<'_, Delta> {
        self.items.iter()
    }

    /// Append reasoning text (ignored when empty).
    #[inline]
    pub fn push_reasoning(&mut self, text: &str) {
        if text.is_empty() {
            return;
        }
        if let Some(Delta::Reasoning(last)) = self.items.last_mut() {
            last.push_str(text);
        } else {
            self.items.push(Delta::Reasoning(text.to_owned()));
        }
    }

    /// Append content text (ignored when empty).
    #[inline]
    pub fn push_content(&mut self, text: &str) {
        if text.is_empty() {
            return;
        }
        if let Some(Delta::Content(last)) = self.items.last_mut() {
            last.push_str(text);
        } else {
            self.items.push(Delta::Content(text.to_owned()));
        }
    }

    /// All reasoning text concatenated.
    #[inline]
    pub fn reasoning_text(&self) -> String {
        self.collect(true)
    }

    /// All content text concatenated.
    #[inline]
    pub fn content_text(&self) -> String {
        self.collect(false)
    }

    fn collect(&self, reasoning: bool) -> String {
        let mut s = String::new();
        for d in &self.items {
            match (d, reasoning) {
                (Delta::Reasoning(t), true) | (Delta::Content(t), false) => s.push_str(t),
                _ => {}
            }
        }
        s
    }
}

impl<'a> IntoIterator for &'a Deltas {
    type Item = &'a Delta;
    type IntoIter = std::slice::Iter<'a, Delta>;
    #[inline]
    fn into_iter(self) -> Self::IntoIter {
        self.items.iter()
    }
}

/// Token usage as OpenAI reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_tokens_details: Option<CompletionTokensDetails>,
}

/// `usage.completion_tokens_details`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompletionTokensDetails {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_tokens: Option<u64>,
}

impl Usage {
    /// This usage with `completion_tokens_details.reasoning_tokens` when the upstream gave
    /// none: `estimated`, our estimate of the reasoning text's tokens (as the surfaces
    /// estimate tokens the upstream does not count), at most `completion_tokens`.
    pub fn with_reasoning_estimate(&self, estimated: u64) -> Usage {
        let mut u = self.clone();
        let details = u
            .completion_tokens_details
            .get_or_insert_with(Default::default);
        if details.reasoning_tokens.is_none() {
            details.reasoning_tokens = Some(estimated.min(self.completion_tokens));
        }
        u
    }

    /// Lenient read of an upstream `usage` object (numbers may be floats or
    /// strings; `total_tokens` is computed when missing). `None` when it has
    /// none of the counters.
    pub fn from_value(v: &Value) -> Option<Usage> {
        let obj = v.as_object()?;
        let num = |v: Option<&Value>| -> Option<u64> {
            match v? {
                Value::Number(n) => n
                    .as_u64()
                    .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64)),
                Value::String(s) => s.trim().parse().ok(),
                _ => None,
            }
        };
        let prompt = num(obj.get("prompt_tokens"));
        let completion = num(obj.get("completion_tokens"));
        let total = num(obj.get("total_tokens"));
        if prompt.is_none() && completion.is_none() && total.is_none() {
            return None;
        }
        let (p, c) = (prompt.unwrap_or(0), completion.unwrap_or(0));
        let reasoning = obj
            .get("completion_tokens_details")
            .and_then(|d| num(d.get("reasoning_tokens")));
        Some(Usage {
            prompt_tokens: p,
            completion_tokens: c,
            total_tokens: total.unwrap_or(p.saturating_add(c)),
            completion_tokens_details: reasoning.map(|r| CompletionTokensDetails {
                reasoning_tokens: Some(r),
            }),
        })
    }
}

/// Error-event code for an upstream that broke off or sent an error mid-stream.
pub const UPSTREAM_STREAM_ERROR: &str = "upstream_stream_error";
/// Error-event code for an upstream that went silent for `upstream.idle_timeout`.
pub const UPSTREAM_TIMEOUT: &str = "upstream_timeout";
/// Error-event code for a request that ran past `limits.request_timeout`.
pub const REQUEST_TIMEOUT: &str = "request_timeout";

/// One parsed call, in OpenAI terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCall {
    /// `call_` + 24 ASCII letters/digits.
    pub id: String,
    pub name: String,
    /// A JSON object, serialized.
    pub arguments: String,
}
