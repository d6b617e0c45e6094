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

/// Split `msg` into lines of at most `width` characters, at spaces where possible.
pub fn wrap(msg: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut cur = String::new();
    let mut cur_len = 0;
    for word in msg.split(' ').filter(|w| !w.is_empty()) {
        let mut chars: Vec<char> = word.chars().collect();
        let sep = usize::from(cur_len > 0);
        if cur_len + sep + chars.len() <= width {
            if sep == 1 {
                cur.push(' ');
            }
            cur.extend(&chars);
            cur_len += sep + chars.len();
            continue;
        }
        if cur_len > 0 {
            lines.push(std::mem::take(&mut cur));
        }
        // A word longer than a line (a deep path): cut it.
        while chars.len() > width {
            let rest = chars.split_off(width);
            lines.push(chars.into_iter().collect());
            chars = rest;
        }
        cur_len = chars.len();
        cur = chars.into_iter().collect();
    }
    if cur_len > 0 || lines.is_empty() {
        lines.push(cur);
    }
    lines
}

/// Lines of `text` longer than `width` wrapped at spaces, continued under a `indent`-column label
/// (`reason    ...` then `          ...`), for the 80-column console.
pub fn wrap_labelled(text: &str, width: usize, indent: usize) -> String {
    let mut out = String::with_capacity(text.len() + 16);
    for line in text.lines() {
        if line.chars().count() <= width {
            out.push_str(line);
            out.push('\n');
            continue;
        }
        let label: String = line.chars().take(indent).collect();
        let rest: String = line.chars().skip(indent).collect();
        for (i, part) in wrap(&rest, width - indent).iter().enumerate() {
            let head = if i == 0 {
                label.clone()
            } else {
                " ".repeat(indent)
            };
            out.push_str(&head);
            out.push_str(part);
            out.push('\n');
        }
    }
    out
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
        let long = format!("reason    {}", "word ".repeat(30));
        let w = wrap_labelled(&long, 80, 10);
        assert!(w.lines().all(|l| l.chars().count() <= 80), "{w}");
        assert!(
            w.lines().nth(1).unwrap().starts_with("          word"),
            "{w}"
        );
        assert_eq!(safe_name("k\u{1b}]0;pwn\u{7}.epb"), "k__0_pwn_.epb");
    }
}
