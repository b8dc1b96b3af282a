//! Token estimates, for the surfaces that report usage before (or without) the upstream's
//! count: Anthropic's `count_tokens` and `message_start`. K2Think's tokenizer is not
//! public, so these are heuristics and documented as such.

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
}
