//! Bytes from a dump file, standard input or the command line, made safe for a terminal.
//!
//! A dump's note names and a malformed input line are hostile: printed raw, an escape
//! sequence in them could retitle the window, move the cursor or worse, and a name of
//! half a gigabyte would be printed whole. Everything the tool echoes goes through
//! [`escape`] (and long things through [`show`]): printable characters stay, `\` becomes
//! `\\`, a control character (C0, DEL, C1) becomes `\xNN` (or `\u{NNNN}` above 0xff), and a
//! byte that is not part of valid UTF-8 becomes `\xNN`.

use core::fmt::Write as _;

/// The most bytes of one name or line [`show`] prints; the rest is counted.
pub(crate) const SHOWN: usize = 64;

/// `bytes` with every control character, backslash and byte that is not valid UTF-8
/// escaped.
pub(crate) fn escape(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                c if c.is_control() && u32::from(c) <= 0xff => {
                    let _ = write!(out, "\\x{:02x}", u32::from(c));
                }
                c if c.is_control() => {
                    let _ = write!(out, "\\u{{{:04x}}}", u32::from(c));
                }
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

/// The first [`SHOWN`] bytes of `bytes`, escaped, followed by `… (N bytes)` when the
/// whole thing (`full_len` bytes, of which `bytes` may be a prefix) is longer.
pub(crate) fn show(bytes: &[u8], full_len: usize) -> String {
    let shown = bytes.get(..SHOWN).unwrap_or(bytes);
    let mut out = escape(shown);
    if full_len > shown.len() {
        let _ = write!(out, "… ({full_len} bytes)");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_and_bad_utf8_are_escaped() {
        assert_eq!(escape(b"VMCOREINFO"), "VMCOREINFO");
        assert_eq!(escape("Grüße".as_bytes()), "Grüße");
        assert_eq!(
            escape(b"\x1b]0;t\x07a\\b\xff\x7f\n"),
            r"\x1b]0;t\x07a\\b\xff\x7f\x0a"
        );
        // C1 controls (a CSI in some terminals) and a control above 0xff: none are
        // printed as themselves.
        assert_eq!(escape("\u{9b}2J".as_bytes()), r"\x9b2J");
        assert_eq!(escape(b"\xe2\x82"), r"\xe2\x82");
        assert_eq!(
            show(&[b'N'; 100], 100_000),
            format!("{}… (100000 bytes)", "N".repeat(64))
        );
        assert_eq!(show(b"short", 5), "short");
    }
}
