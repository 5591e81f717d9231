//! Chinese word segmentation with `jieba-rs`, standing in for Python `jieba.cut(text)`
//! (accurate mode, HMM on). `tests/fixtures/eval/metrics.json` pins the tokens Python jieba
//! 0.42.1 produced and the tests check every one of them.
//!
//! Known differences of jieba-rs 0.11 from Python jieba, and what we do about them:
//! - The HMM stage's `re_skip` (ASCII runs inside a non-dictionary block): Python uses
//!   `[a-zA-Z0-9]+(?:\.\d+)?%?`, jieba-rs joins runs with any of `. _ -` (so "e-mail",
//!   "a_b", "x.com" stay whole). Fixed here: such tokens are re-split with Python's rule
//!   (no dictionary word contains those connectors, so only HMM-skip tokens are affected).
//! - Python's `dict.txt` lists "B超" twice, which adds 3 to the total frequency; every word's
//!   log-probability shifts by ~5e-8, which can only matter for near-exact ties. Not fixed.

use std::sync::OnceLock;

use jieba_rs::Jieba;

fn jieba() -> &'static Jieba {
    static JIEBA: OnceLock<Jieba> = OnceLock::new();
    JIEBA.get_or_init(Jieba::new)
}

/// `list(jieba.cut(text))`: words in order, whitespace and punctuation kept as tokens.
pub fn cut(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for t in jieba().cut(text, true) {
        let w = t.word;
        let joined = w.is_ascii()
            && w.as_bytes()[0].is_ascii_alphanumeric()
            && w.bytes().any(|b| matches!(b, b'.' | b'_' | b'-'));
        if joined {
            split_python_skip(w, &mut out);
        } else {
            out.push(w.to_string());
        }
    }
    out
}

/// Python `[x for x in re.split(r"([a-zA-Z0-9]+(?:\.\d+)?%?)", s) if x]` for ASCII `s`:
/// matched runs and the gaps between them, in order.
fn split_python_skip(s: &str, out: &mut Vec<String>) {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let start = i;
        if b[i].is_ascii_alphanumeric() {
            while i < b.len() && b[i].is_ascii_alphanumeric() {
                i += 1;
            }
            if i + 1 < b.len() && b[i] == b'.' && b[i + 1].is_ascii_digit() {
                i += 1;
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
            }
            if i < b.len() && b[i] == b'%' {
                i += 1;
            }
        } else {
            while i < b.len() && !b[i].is_ascii_alphanumeric() {
                i += 1;
            }
        }
        out.push(s[start..i].to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_skip_split() {
        let mut v = Vec::new();
        split_python_skip("v1.2.3-rc_1.5%x--y", &mut v);
        assert_eq!(
            v,
            ["v1.2", ".", "3", "-", "rc", "_", "1.5%", "x", "--", "y"]
        );
    }
}
