//! The front-end version Z.AI's completion endpoint demands in `X-FE-Version`
//! (providers-protocol.md §A.3.4), scraped from the asset URLs of the home page.

const PREFIX: &str = "prod-fe-";

/// The highest `prod-fe-X.Y.Z` in `html`, compared as numbers (`1.0.241` > `1.0.99`), as
/// the header value (with its `prod-fe-` prefix, digits as written). `None` when the page
/// names none.
pub fn scrape(html: &str) -> Option<String> {
    let mut best: Option<((u64, u64, u64), &str)> = None;
    let mut from = 0;
    while let Some(at) = html[from..].find(PREFIX) {
        let start = from + at;
        from = start + PREFIX.len();
        let Some((version, len)) = parse(&html[from..]) else {
            continue;
        };
        let text = &html[start..from + len];
        if best.is_none_or(|(b, _)| version > b) {
            best = Some((version, text));
        }
    }
    best.map(|(_, text)| text.to_string())
}

/// `X.Y.Z` at the start of `s` (each a run of ASCII digits): the numbers and the length.
fn parse(s: &str) -> Option<((u64, u64, u64), usize)> {
    let mut nums = [0u64; 3];
    let mut i = 0;
    let b = s.as_bytes();
    for (n, num) in nums.iter_mut().enumerate() {
        if n > 0 {
            if b.get(i) != Some(&b'.') {
                return None;
            }
            i += 1;
        }
        let digits = b[i..].iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return None;
        }
        *num = s[i..i + digits].parse().ok()?;
        i += digits;
    }
    Some(((nums[0], nums[1], nums[2]), i))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn highest_by_number_not_by_string() {
        let html = r#"<link href="/frontend/prod-fe-1.0.99/assets/a.css">
            <script src="/frontend/prod-fe-1.0.241/assets/index.js"></script>
            <script src="https://cdn/prod-fe-1.0.185/x.js"></script>"#;
        assert_eq!(scrape(html).as_deref(), Some("prod-fe-1.0.241"));
        // Each part compares as a number: 1.1.9 > 1.0.241, 2.0.0 > 1.99.99.
        assert_eq!(
            scrape("prod-fe-1.0.241 prod-fe-1.1.9").as_deref(),
            Some("prod-fe-1.1.9")
        );
        assert_eq!(
            scrape("prod-fe-2.0.0/ prod-fe-1.99.99/").as_deref(),
            Some("prod-fe-2.0.0")
        );
    }

    #[test]
    fn one_version_and_none() {
        assert_eq!(
            scrape(r#"<script src="/frontend/prod-fe-1.1.93/assets/i.js">"#).as_deref(),
            Some("prod-fe-1.1.93")
        );
        assert_eq!(scrape(""), None);
        assert_eq!(scrape("<html>no version here</html>"), None);
        // Incomplete or malformed versions are skipped.
        assert_eq!(
            scrape("prod-fe-1.0 prod-fe-.1.2 prod-fe-1..2 prod-fe-"),
            None
        );
        assert_eq!(
            scrape("prod-fe-1.0 and prod-fe-1.0.7x").as_deref(),
            Some("prod-fe-1.0.7")
        );
        // A number too large to compare is skipped, not a panic.
        assert_eq!(
            scrape("prod-fe-1.0.99999999999999999999999 prod-fe-1.0.1").as_deref(),
            Some("prod-fe-1.0.1")
        );
    }

    #[test]
    fn equal_versions_keep_the_first_text() {
        assert_eq!(
            scrape("prod-fe-1.0.070 prod-fe-1.0.70").as_deref(),
            Some("prod-fe-1.0.070")
        );
    }
}
