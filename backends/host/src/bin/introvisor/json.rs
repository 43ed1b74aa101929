//! The JSON the tool writes with `--json`, by hand: a few flat objects do not need a
//! serialisation framework, and writing them here keeps the tool's dependencies to the
//! library's.
//!
//! Conventions (the `--help` texts repeat them): addresses, register and entry values are
//! strings of lowercase hex with `0x` (`"0x1000"`), since a JSON number loses precision
//! above 2^53 in most parsers; counts and sizes are numbers. Strings are escaped so that
//! the output is valid JSON and safe on a terminal: `"` and `\`, every C0 control, DEL,
//! the C1 controls and U+2028/U+2029 are written as escapes. Bytes from the dump that need
//! not be UTF-8 (a note name) are written twice: decoded lossily (U+FFFD for each bad
//! byte), and exactly, in hex.

use core::fmt::Write as _;

/// Appends `s` to `out` as a JSON string, quotes included.
pub(crate) fn string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{0}'..='\u{1f}' | '\u{7f}'..='\u{9f}' | '\u{2028}' | '\u{2029}' => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A JSON object, written field by field.
pub(crate) struct Object {
    text: String,
    empty: bool,
}

impl Object {
    /// `{`.
    pub(crate) fn new() -> Self {
        Self {
            text: String::from("{"),
            empty: true,
        }
    }

    fn key(&mut self, key: &str) -> &mut String {
        if !self.empty {
            self.text.push(',');
        }
        self.empty = false;
        string(&mut self.text, key);
        self.text.push(':');
        &mut self.text
    }

    /// A string field.
    pub(crate) fn str(mut self, key: &str, value: &str) -> Self {
        string(self.key(key), value);
        self
    }

    /// An address or raw value: a `"0x..."` string.
    pub(crate) fn hex(mut self, key: &str, value: u64) -> Self {
        let _ = write!(self.key(key), "\"{value:#x}\"");
        self
    }

    /// A count or size: a number.
    pub(crate) fn num(mut self, key: &str, value: u64) -> Self {
        let _ = write!(self.key(key), "{value}");
        self
    }

    /// A boolean.
    pub(crate) fn bool(mut self, key: &str, value: bool) -> Self {
        self.key(key).push_str(if value { "true" } else { "false" });
        self
    }

    /// `null`.
    pub(crate) fn null(mut self, key: &str) -> Self {
        self.key(key).push_str("null");
        self
    }

    /// A value already written as JSON (an object or an array).
    pub(crate) fn raw(mut self, key: &str, json: &str) -> Self {
        self.key(key).push_str(json);
        self
    }

    /// `}`: the object's text.
    pub(crate) fn finish(mut self) -> String {
        self.text.push('}');
        self.text
    }
}

/// A JSON array of values already written as JSON.
pub(crate) fn array(items: impl IntoIterator<Item = String>) -> String {
    let mut out = String::from("[");
    for (i, item) in items.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&item);
    }
    out.push(']');
    out
}

/// A JSON array of strings.
pub(crate) fn strings<'a>(items: impl IntoIterator<Item = &'a str>) -> String {
    array(items.into_iter().map(|s| {
        let mut out = String::new();
        string(&mut out, s);
        out
    }))
}

/// Appends lowercase hex of `bytes` to `out`.
pub(crate) fn hex_bytes(out: &mut String, bytes: &[u8]) {
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
}

/// Base64 (RFC 4648 §4, with padding) of a byte stream given in pieces of any size.
#[derive(Default)]
pub(crate) struct Base64 {
    /// Bytes not yet encoded: fewer than three.
    carry: [u8; 3],
    held: usize,
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn sextet(value: u32, shift: u32) -> char {
    let index = (value >> shift) & 0x3f;
    ALPHABET
        .get(index as usize)
        .copied()
        .map_or('=', char::from)
}

impl Base64 {
    fn group(out: &mut String, group: [u8; 3], len: usize) {
        let v = u32::from(group[0]) << 16 | u32::from(group[1]) << 8 | u32::from(group[2]);
        out.push(sextet(v, 18));
        out.push(sextet(v, 12));
        out.push(if len > 1 { sextet(v, 6) } else { '=' });
        out.push(if len > 2 { sextet(v, 0) } else { '=' });
    }

    /// Encodes `bytes` after what came before, appending whole groups to `out`.
    pub(crate) fn push(&mut self, out: &mut String, bytes: &[u8]) {
        for &b in bytes {
            if let Some(slot) = self.carry.get_mut(self.held) {
                *slot = b;
            }
            self.held += 1;
            if self.held == 3 {
                Self::group(out, self.carry, 3);
                self.held = 0;
            }
        }
    }

    /// Encodes what is left, with padding.
    pub(crate) fn finish(mut self, out: &mut String) {
        if self.held > 0 {
            for slot in self.carry.iter_mut().skip(self.held) {
                *slot = 0;
            }
            Self::group(out, self.carry, self.held);
            self.held = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quoted(s: &str) -> String {
        let mut out = String::new();
        string(&mut out, s);
        out
    }

    #[test]
    fn strings_escape_quotes_backslashes_and_every_control() {
        assert_eq!(quoted("plain"), "\"plain\"");
        assert_eq!(quoted("a\"b\\c"), "\"a\\\"b\\\\c\"");
        assert_eq!(quoted("\n\r\t"), "\"\\n\\r\\t\"");
        assert_eq!(quoted("\u{1b}[31m"), "\"\\u001b[31m\"");
        assert_eq!(
            quoted("\0\u{7f}\u{85}\u{9b}"),
            "\"\\u0000\\u007f\\u0085\\u009b\""
        );
        assert_eq!(quoted("\u{2028}\u{2029}"), "\"\\u2028\\u2029\"");
        assert_eq!(quoted("Grüße ✓ \u{fffd}"), "\"Grüße ✓ \u{fffd}\"");
    }

    #[test]
    fn objects_and_arrays() {
        let o = Object::new()
            .str("name", "x")
            .hex("va", 0xffff_8000_0000_0000)
            .num("len", 16)
            .bool("ok", true)
            .null("none")
            .raw("list", &strings(["a", "b"]))
            .finish();
        assert_eq!(
            o,
            r#"{"name":"x","va":"0xffff800000000000","len":16,"ok":true,"none":null,"list":["a","b"]}"#
        );
        assert_eq!(Object::new().finish(), "{}");
        assert_eq!(array(Vec::new()), "[]");
    }

    #[test]
    fn base64_matches_rfc_4648_in_any_split() {
        // RFC 4648 §10's test vectors.
        let vectors = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (input, expected) in vectors {
            for split in 0..=input.len() {
                let (a, b) = input.as_bytes().split_at(split);
                let mut out = String::new();
                let mut enc = Base64::default();
                enc.push(&mut out, a);
                enc.push(&mut out, b);
                enc.finish(&mut out);
                assert_eq!(out, expected, "{input:?} split at {split}");
            }
        }
        let mut out = String::new();
        let mut enc = Base64::default();
        enc.push(&mut out, &[0xff, 0xfe, 0x00, 0x80]);
        enc.finish(&mut out);
        assert_eq!(out, "//4AgA==");
    }
}
