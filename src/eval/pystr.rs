//! Python `str` whitespace rules (`str.split()`, `str.strip()`), which the reference metric
//! code relies on. Python's set is Rust's `char::is_whitespace` plus U+001C..U+001F.

/// `str.isspace()` for one character, as CPython defines it.
pub fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python `s.strip()`.
pub fn py_strip(s: &str) -> &str {
    s.trim_matches(is_py_space)
}

/// Python `s.rstrip()`.
pub fn py_rstrip(s: &str) -> &str {
    s.trim_end_matches(is_py_space)
}

/// Python `s.split()` (no argument): runs of whitespace separate, empty pieces dropped.
pub fn py_split_ws(s: &str) -> impl Iterator<Item = &str> {
    s.split(is_py_space).filter(|p| !p.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_whitespace_rules() {
        assert_eq!(py_strip("\u{3000} a b \u{1f}\n"), "a b");
        assert_eq!(py_rstrip("  a \t"), "  a");
        let v: Vec<&str> = py_split_ws(" a  b\u{a0}c\u{1c}d ").collect();
        assert_eq!(v, ["a", "b", "c", "d"]);
        assert_eq!(py_split_ws("   ").count(), 0);
    }
}
