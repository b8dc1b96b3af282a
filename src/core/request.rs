//! The neutral request a surface's conversion produces and a provider's body builder
//! reads: the conversation as turns (role, text or parts with images, an assistant turn's
//! thinking) and the sampling parameters. Serialized, a turn is an OpenAI-style message.

use serde::{Deserialize, Serialize};

/// One message of the upstream's history. An assistant message carries its thinking
/// (the client's own reasoning, else `""`, never `null`) under the configured field name:
/// the new upstream refuses assistant messages without one (k2think-protocol.md §0.5 #3).
#[derive(Debug, Clone, PartialEq)]
pub struct Turn {
    pub role: &'static str,
    pub content: TurnContent,
    /// `Some` on assistant messages (when a thinking field is configured).
    pub thinking: Option<Thinking>,
}

/// An assistant message's thinking field: its name and text.
#[derive(Debug, Clone, PartialEq)]
pub struct Thinking {
    pub field: &'static str,
    pub text: String,
}

impl Serialize for Turn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(2 + usize::from(self.thinking.is_some())))?;
        m.serialize_entry("role", self.role)?;
        m.serialize_entry("content", &self.content)?;
        if let Some(t) = &self.thinking {
            m.serialize_entry(t.field, &t.text)?;
        }
        m.end()
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(untagged)]
pub enum TurnContent {
    Text(String),
    Parts(Vec<TurnPart>),
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TurnPart {
    Text { text: String },
    ImageUrl { image_url: ImageUrl },
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ImageUrl {
    pub url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// Sampling parameters, sent in `params` (only those the client set).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Sampling {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
}

/// How hard the model reasons: the upstream's `chat_template_kwargs.reasoning_effort`
/// (k2think-protocol.md §0.5 #4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Effort {
    Low,
    Medium,
    High,
}

impl Effort {
    pub fn as_str(self) -> &'static str {
        match self {
            Effort::Low => "low",
            Effort::Medium => "medium",
            Effort::High => "high",
        }
    }

    /// A client's effort name, as OpenAI and Anthropic spell them, onto the three levels:
    /// `none`, `minimal` and `low` → low; `medium`; `high`, `xhigh` and `max` → high.
    pub fn from_client(name: &str) -> Option<Effort> {
        Some(match name {
            "none" | "minimal" | "low" => Effort::Low,
            "medium" => Effort::Medium,
            "high" | "xhigh" | "max" => Effort::High,
            _ => return None,
        })
    }

    /// An Anthropic thinking budget (`thinking.budget_tokens`) onto the three levels:
    /// up to 4,096 tokens low, up to 16,384 medium, more high.
    pub fn from_budget(tokens: u64) -> Effort {
        match tokens {
            0..=4096 => Effort::Low,
            4097..=16_384 => Effort::Medium,
            _ => Effort::High,
        }
    }
}
