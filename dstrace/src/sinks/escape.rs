//! Text safe for a terminal. Process names, paths and symbols are bytes the kernel
//! got from elsewhere; every text sink (plain lines, the full screen, folded
//! stacks, pprof labels, Prometheus labels) passes them through [`escape`], so
//! no terminal escape sequence, newline or invisible reordering gets through.

use std::fmt::Write as _;

/// Text safe for a terminal: control characters and backslashes escaped, and the
/// invisible characters that reorder or hide text (bidirectional overrides and
/// isolates, zero-width characters: a name could otherwise show as another).
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if is_invisible_format(c) => {
                let _ = write!(out, "\\u{{{:04x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

/// Unicode format characters that change how the text around them is shown:
/// zero-width ones, the bidirectional marks, embeddings, overrides and isolates,
/// and the byte order mark.
fn is_invisible_format(c: char) -> bool {
    matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2069}' | '\u{feff}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_and_backslashes_are_escaped() {
        assert_eq!(escape("\x1b[2Jevil\n"), "\\x1b[2Jevil\\x0a");
        assert_eq!(escape("a\\b"), "a\\\\b");
    }

    #[test]
    fn invisible_format_characters_are_escaped() {
        assert_eq!(escape("evil\u{202e}fdp\u{200b}"), "evil\\u{202e}fdp\\u{200b}");
        assert_eq!(escape("é ü ß"), "é ü ß", "other non-ASCII text is left as it is");
    }
}
