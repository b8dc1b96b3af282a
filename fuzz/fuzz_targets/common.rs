//! Helpers shared by the fuzz targets: a header byte for options and input splitting. The
//! contract checks are the property tests' own (`tests/contracts`).

#![allow(dead_code)]

#[path = "../../tests/contracts/mod.rs"]
mod contracts;
#[allow(unused_imports)] // each target uses some of them
pub use contracts::{assemble, check_call, check_request, content_of, detect, Assembled};

/// The first byte (options) and the rest; an empty input gives `(0, [])`.
pub fn header(data: &[u8]) -> (u8, &[u8]) {
    match data.split_first() {
        Some((&h, rest)) => (h, rest),
        None => (0, data),
    }
}

/// Piece lengths drawn from a xorshift seeded by `seed` (1 to 16 bytes, some empty).
fn lengths(total: usize, seed: u8) -> Vec<usize> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ u64::from(seed).wrapping_mul(0x2545_F491_4F6C_DD1D);
    let mut out = Vec::new();
    let mut left = total;
    loop {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let n = ((x >> 33) % 17) as usize;
        let n = n.min(left);
        out.push(n);
        left -= n;
        if left == 0 {
            return out;
        }
    }
}

/// `data` cut into pieces (at any byte).
pub fn split_bytes(data: &[u8], seed: u8) -> Vec<&[u8]> {
    let mut rest = data;
    lengths(data.len(), seed)
        .into_iter()
        .map(|n| {
            let (a, b) = rest.split_at(n);
            rest = b;
            a
        })
        .collect()
}

/// `s` cut into pieces on char boundaries.
pub fn split_str(s: &str, seed: u8) -> Vec<&str> {
    let mut out = Vec::new();
    let mut at = 0;
    for n in lengths(s.len(), seed) {
        let mut end = (at + n).min(s.len());
        while !s.is_char_boundary(end) {
            end += 1;
        }
        out.push(&s[at..end]);
        at = end;
        if at == s.len() {
            break;
        }
    }
    if at < s.len() {
        out.push(&s[at..]);
    }
    out
}
