//! Token estimates, for the surfaces that report usage before (or without) the upstream's
//! count: Anthropic's `count_tokens` and `message_start`. K2Think's tokenizer is not
//! public, so these are heuristics and documented as such.

use crate::core::request::{TurnContent, TurnPart};
use crate::k2think::Payload;

/// An estimate of the token count of `text`: one token per 4 ASCII characters (rounded
/// up) plus one token per non-ASCII character. K2Think's tokenizer is not available, so
/// this is only a heuristic (BPE tokenizers average about 4 characters per token on
/// English text and code, and about one token per CJK character).
pub fn estimate_tokens(text: &str) -> u64 {
    let mut e = Estimate::default();
    e.add(text);
    e.tokens()
}

/// Running character counts behind [`estimate_tokens`] (summing per-piece estimates would
/// over-count rounding on a stream of small pieces).
#[derive(Debug, Clone, Copy, Default)]
pub struct Estimate {
    ascii: u64,
    other: u64,
}

impl Estimate {
    pub fn add(&mut self, text: &str) {
        let total = text.chars().count() as u64;
        let ascii = text.bytes().filter(u8::is_ascii).count() as u64;
        self.ascii += ascii;
        self.other += total - ascii;
    }

    pub fn tokens(&self) -> u64 {
        self.ascii.div_ceil(4) + self.other
    }
}

/// Tokens per image in [`estimate_input_tokens`]: a mid-sized image in most vision
/// tokenizers (the size is not known without decoding it).
const IMAGE_TOKENS: u64 = 1000;
/// Tokens of framing per message (role markers) in [`estimate_input_tokens`].
const MESSAGE_TOKENS: u64 = 4;

/// An estimate of the prompt tokens of what goes upstream.
pub fn estimate_input_tokens(payload: &Payload) -> u64 {
    payload
        .messages
        .iter()
        .map(|m| {
            MESSAGE_TOKENS
                + match &m.content {
                    TurnContent::Text(t) => estimate_tokens(t),
                    TurnContent::Parts(parts) => parts
                        .iter()
                        .map(|p| match p {
                            TurnPart::Text { text } => estimate_tokens(text),
                            TurnPart::ImageUrl { .. } => IMAGE_TOKENS,
                        })
                        .sum(),
                }
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimates() {
        assert_eq!(estimate_tokens(""), 0);
        assert_eq!(estimate_tokens("abc"), 1);
        assert_eq!(estimate_tokens("abcd"), 1);
        assert_eq!(estimate_tokens("abcde"), 2);
        assert_eq!(estimate_tokens("你好"), 2);
        assert_eq!(estimate_tokens("hi 你好"), 3);
    }

    #[test]
    fn a_payload_counts_messages_framing_and_images() {
        let p = Payload {
            effort: None,
            messages: vec![
                crate::core::request::Turn {
                    role: "system",
                    content: TurnContent::Text("abcdefgh".into()),
                    thinking: None,
                },
                crate::core::request::Turn {
                    thinking: None,
                    role: "user",
                    content: TurnContent::Parts(vec![
                        TurnPart::Text {
                            text: "你好".into(),
                        },
                        TurnPart::ImageUrl {
                            image_url: crate::core::request::ImageUrl {
                                url: "data:image/png;base64,AAAA".into(),
                                detail: None,
                            },
                        },
                    ]),
                },
            ],
            stream: true,
            model: "m".into(),
            params: crate::core::request::Sampling::default(),
            style: crate::k2think::BodyStyle::Minimal,
            chat_id: String::new(),
        };
        assert_eq!(
            estimate_input_tokens(&p),
            (MESSAGE_TOKENS + 2) + (MESSAGE_TOKENS + 2 + IMAGE_TOKENS)
        );
    }
}
