//! Text for people on a serial console: names from a USB stick or a bundle may hold escape
//! sequences (clear screen, set title, colour). Everything the agent prints goes through
//! [`printable`], so such bytes show as `\x1b` instead of acting on the terminal.

use std::fmt::Write;

/// `s` with control characters other than newline and tab written as `\xNN` (`\u{NNNN}` for the
/// C1 and other non-printing ones).
pub fn printable(s: &str) -> std::borrow::Cow<'_, str> {
    let bad = |c: char| c.is_control() && c != '\n' && c != '\t';
    if !s.chars().any(bad) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if !bad(c) {
            out.push(c);
        } else if (c as u32) < 0x80 {
            let _ = write!(out, "\\x{:02x}", c as u32);
        } else {
            let _ = write!(out, "\\u{{{:04x}}}", c as u32);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// A file name made safe to keep in state_dir and to print: anything but letters, digits and
/// `._+-` becomes `_`.
pub fn safe_name(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._+-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_become_visible() {
        assert_eq!(printable("ok line\n"), "ok line\n");
        assert_eq!(
            printable("x\u{1b}[2J\u{7}\u{9b}y"),
            "x\\x1b[2J\\x07\\u{009b}y"
        );
        assert_eq!(safe_name("k\u{1b}]0;pwn\u{7}.epb"), "k__0_pwn_.epb");
    }
}
