//! Text safe for a terminal, and words a shell reads back as they were.
//!
//! Process names, paths and symbols are bytes the kernel got from elsewhere;
//! every text sink (plain lines, the full screen, folded stacks, pprof labels,
//! Prometheus labels) passes them through [`escape`], so no terminal escape
//! sequence, newline or invisible reordering gets through.
//!
//! The advice is the exception that proves the rule: it holds commands to paste
//! into a shell, and a command escaped for the terminal is no longer the command
//! (`'/mnt/a\b'` would name another path). So the advice escapes the names in its
//! words itself ([`prose`]), quotes the words of its commands for the shell
//! ([`shell_word`], whose output is already safe for a terminal), and the sinks
//! print it through [`controls`], which only ever changes a character no
//! command or escaped name holds. Shared by every stage, like `clock`: the model
//! writes the advice, the sinks print it.

use std::{ffi::OsStr, fmt::Write as _, os::unix::ffi::OsStrExt as _};

/// Text safe for a terminal: control characters and backslashes escaped, and the
/// invisible characters that reorder or hide text (bidirectional overrides and
/// isolates, zero-width characters: a name could otherwise show as another).
pub fn escape(text: &str) -> String {
    escape_as(text, Escape { backslash: true, backtick: false })
}

/// A name inside the words of the advice: [`escape`]d, and a backtick written
/// `\x60`, so that the advice's backticks only ever mark its commands.
pub fn prose(name: &str) -> String {
    escape_as(name, Escape { backslash: true, backtick: true })
}

/// Text already made of escaped names and shell-quoted words (the advice), made
/// safe for a terminal whatever it holds: control and invisible characters
/// escaped, a backslash left as it is (it is the shell's, or an escape's).
pub fn controls(text: &str) -> String {
    escape_as(text, Escape { backslash: false, backtick: false })
}

/// What [`escape_as`] escapes beside control and invisible characters.
#[derive(Clone, Copy)]
struct Escape {
    backslash: bool,
    backtick: bool,
}

fn escape_as(text: &str, what: Escape) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' if what.backslash => out.push_str("\\\\"),
            '`' if what.backtick => out.push_str("\\x60"),
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

/// A word (a path: any bytes) as a shell reads it back, and safe for a terminal
/// as it is printed: as it is when it holds only characters no shell treats
/// specially; else in single quotes (a `'` written `'\''`), which every POSIX
/// shell reads; else, when it holds what a terminal must not be sent (a control
/// or invisible character, a byte that is not UTF-8) or a backtick, in `$'...'`
/// with those bytes as `\xHH`, which bash, zsh and ksh read (POSIX sh since
/// 2024; not dash).
pub fn shell_word(word: &OsStr) -> String {
    let bytes = word.as_bytes();
    let plain =
        !bytes.is_empty() && bytes.iter().all(|&b| b.is_ascii_alphanumeric() || b"_-./:@%+=,".contains(&b));
    if plain {
        return String::from_utf8_lossy(bytes).into_owned();
    }
    match std::str::from_utf8(bytes) {
        Ok(text) if !text.chars().any(|c| c.is_control() || is_invisible_format(c) || c == '`') => {
            format!("'{}'", text.replace('\'', r"'\''"))
        }
        _ => {
            let mut out = String::from("$'");
            for &b in bytes {
                match b {
                    b'\\' | b'\'' => {
                        out.push('\\');
                        out.push(char::from(b));
                    }
                    b' '..=b'~' if b != b'`' => out.push(char::from(b)),
                    _ => {
                        let _ = write!(out, "\\x{b:02x}");
                    }
                }
            }
            out.push('\'');
            out
        }
    }
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

    #[test]
    fn shell_words_are_quoted_and_safe_for_a_terminal() {
        let word = |bytes: &[u8]| shell_word(OsStr::from_bytes(bytes));
        assert_eq!(word(b"/mnt/x"), "/mnt/x");
        assert_eq!(word(b"/mnt/with space"), "'/mnt/with space'");
        assert_eq!(word(b"/mnt/it's;rm -rf"), r"'/mnt/it'\''s;rm -rf'");
        assert_eq!(word(b"/mnt/nfs$(touch x)"), "'/mnt/nfs$(touch x)'");
        assert_eq!(word(b"/mnt/a\\b"), r"'/mnt/a\b'");
        assert_eq!(word(b""), "''");
        assert_eq!(word(b"/mnt/a\nb\xff`c'\\"), r"$'/mnt/a\x0ab\xff\x60c\'\\'");
        assert_eq!(word("/mnt/é\u{202e}".as_bytes()), r"$'/mnt/\xc3\xa9\xe2\x80\xae'");
        for bytes in [&b"\x1b]2;x\x07"[..], b"a\nb", b"\xfe"] {
            let quoted = word(bytes);
            assert_eq!(controls(&quoted), quoted, "{quoted}: printed as it is");
            assert!(!quoted.chars().any(char::is_control), "{quoted}");
        }
    }

    #[test]
    fn the_advice_escapes_its_names_and_keeps_its_commands() {
        assert_eq!(prose("a`b\\c\n"), r"a\x60b\\c\x0a");
        let line =
            format!("mount {}: `umount -l {}`", prose("/mnt/a\nb"), shell_word(OsStr::new("/mnt/a\nb")));
        assert_eq!(controls(&line), r"mount /mnt/a\x0ab: `umount -l $'/mnt/a\x0ab'`");
        assert_eq!(controls("a\x1bb\\"), r"a\x1bb\");
    }
}
