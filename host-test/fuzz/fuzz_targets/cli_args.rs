//! The `introvisor` tool's parsing and output escaping, fuzzed in process: the tool is a
//! binary whose modules are private to it, so this target compiles its self-contained
//! modules from their source with `#[path]`: `args.rs` (the argument parser and the
//! number formats; it needs only the tool's `Failure`, given here in the shape `main.rs`
//! has), `escape.rs` (what every echoed dump or stdin byte goes through) and `json.rs`
//! (the `--json` strings and the base64 of `read --json --base64`). The line reader of
//! `translate`'s stdin is private to `translate.rs`, which needs the whole tool: its
//! lines are fuzzed here through what each line goes through, `parse_hex` and `escape`.
//!
//! The input is split at NUL bytes into arguments (non-UTF-8 ones too) and parsed
//! against the option table the first byte picks. Checks:
//! - the parse succeeds or fails with a usage error, never panics; what it returns
//!   accounts for the arguments (every positional is an argument, every option is in the
//!   table, with a value exactly when the table says it takes one);
//! - a number parsed from text prints back to the same number, in hex and in decimal;
//! - `escape` leaves no control character and undoes exactly (bytes -> text -> bytes)
//!   for input without C1 controls (see FUZZING.md),
//!   and `show` is bounded;
//! - `json::string` writes a JSON string that decodes to its input, with no control
//!   character raw; base64 in pieces is base64 of the whole, and decodes to it.
#![no_main]

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt as _;

use libfuzzer_sys::fuzz_target;

#[path = "../../../backends/host/src/bin/introvisor/args.rs"]
#[allow(dead_code)]
mod args;
#[path = "../../../backends/host/src/bin/introvisor/escape.rs"]
#[allow(dead_code)]
mod escape;
#[path = "../../../backends/host/src/bin/introvisor/json.rs"]
#[allow(dead_code)]
mod json;

/// The tool's `Failure` (backends/host/src/bin/introvisor/main.rs), as much of it as
/// `args.rs` uses.
#[derive(Debug)]
#[allow(dead_code)]
enum Failure {
    Usage(String),
    Input(String),
}

impl Failure {
    fn usage(msg: impl Into<String>) -> Self {
        Self::Usage(msg.into())
    }

    fn input(msg: impl Into<String>) -> Self {
        Self::Input(msg.into())
    }
}

const fn opt(name: &'static str, short: Option<char>, takes_value: bool) -> args::Opt {
    args::Opt {
        name,
        short,
        takes_value,
    }
}

/// Option tables in the shape of the tool's subcommands.
const TABLES: [&[args::Opt]; 3] = [
    &[
        opt("cr3", None, true),
        opt("paging", None, true),
        opt("vcpu", None, true),
        opt("maxphyaddr", None, true),
        opt("format", None, true),
        opt("json", None, false),
        opt("verbose", Some('v'), false),
    ],
    &[
        opt("physical", None, false),
        opt("raw", None, false),
        opt("base64", None, false),
        opt("json", None, false),
        opt("format", Some('f'), true),
    ],
    &[],
];

/// Undoes `escape::escape`.
fn unescape(text: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            let mut buf = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            continue;
        }
        match chars.next() {
            Some('\\') => out.push(b'\\'),
            Some('x') => {
                let hex: String = chars.by_ref().take(2).collect();
                // A C0 control or DEL (that byte), or a byte that is not UTF-8.
                out.push(u8::from_str_radix(&hex, 16).unwrap());
            }
            Some('u') => {
                assert_eq!(chars.next(), Some('{'));
                let hex: String = chars.by_ref().take_while(|&c| c != '}').collect();
                let c = char::from_u32(u32::from_str_radix(&hex, 16).unwrap()).unwrap();
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
            other => panic!("a bad escape {other:?} in {text:?}"),
        }
    }
    out
}

/// Decodes a JSON string literal (RFC 8259 section 7).
fn json_decode(text: &str) -> String {
    let inner = text.strip_prefix('"').unwrap().strip_suffix('"').unwrap();
    let mut out = String::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        assert!(u32::from(c) >= 0x20, "a raw control character in {text:?}");
        assert_ne!(c, '"', "a raw quote in {text:?}");
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next().unwrap() {
            '"' => out.push('"'),
            '\\' => out.push('\\'),
            'n' => out.push('\n'),
            'r' => out.push('\r'),
            't' => out.push('\t'),
            'u' => {
                let hex: String = chars.by_ref().take(4).collect();
                out.push(char::from_u32(u32::from_str_radix(&hex, 16).unwrap()).unwrap());
            }
            e => panic!("an escape \\{e} in {text:?}"),
        }
    }
    out
}

fn base64_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    assert_eq!(text.len() % 4, 0);
    let mut out = Vec::new();
    for group in text.as_bytes().chunks(4) {
        let pad = group.iter().filter(|&&b| b == b'=').count();
        let mut v = 0u32;
        for &b in group {
            let index = if b == b'=' {
                0
            } else {
                ALPHABET.iter().position(|&a| a == b).unwrap() as u32
            };
            v = v << 6 | index;
        }
        out.extend_from_slice(&v.to_be_bytes()[1..4 - pad]);
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&choice, rest)) = data.split_first() else {
        return;
    };
    let spec = TABLES[usize::from(choice) % TABLES.len()];
    let argv: Vec<OsString> = rest
        .split(|&b| b == 0)
        .map(|a| OsString::from_vec(a.to_vec()))
        .collect();
    match args::parse(&argv, spec) {
        Ok(parsed) => {
            assert!(parsed.positionals.len() + parsed.options.len() <= argv.len());
            for p in &parsed.positionals {
                assert!(argv.contains(p));
            }
            for (name, value) in &parsed.options {
                if *name == "help" {
                    assert!(value.is_none());
                    continue;
                }
                let o = spec.iter().find(|o| o.name == *name).unwrap();
                assert_eq!(o.takes_value, value.is_some(), "--{name}");
                assert!(parsed.flag(name));
            }
        }
        Err(Failure::Usage(_)) => {}
        Err(e) => panic!("the parser failed with {e:?}"),
    }

    for arg in &argv {
        let bytes = arg.as_encoded_bytes();
        if let Ok(text) = std::str::from_utf8(bytes) {
            if let Some(v) = args::parse_hex(text) {
                assert_eq!(args::parse_hex(&format!("{v:x}")), Some(v));
                assert_eq!(args::parse_hex(&format!("{v:#X}")), Some(v));
                assert!(args::hex_arg(text, "address").is_ok());
            } else {
                assert!(matches!(
                    args::hex_arg(text, "address"),
                    Err(Failure::Input(_))
                ));
            }
            if let Some(v) = args::parse_count(text) {
                assert_eq!(args::parse_count(&v.to_string()), Some(v));
                assert_eq!(args::parse_count(&format!("{v:#x}")), Some(v));
            }
            let mut out = String::new();
            json::string(&mut out, text);
            assert_eq!(json_decode(&out), text);
        }
        let escaped = escape::escape(bytes);
        assert!(
            !escaped.chars().any(char::is_control),
            "a control character left in {escaped:?}"
        );
        // A C1 control (U+0080..U+009F, two bytes in UTF-8) and an invalid byte of the
        // same value print alike (`\\xNN`): the escape undoes exactly without them.
        let c1 = String::from_utf8_lossy(bytes)
            .chars()
            .any(|c| ('\u{80}'..='\u{9f}').contains(&c));
        if !c1 {
            assert_eq!(unescape(&escaped), bytes, "{escaped:?}");
        }
        let shown = escape::show(bytes, bytes.len());
        assert!(
            shown.len() <= escape::SHOWN * 10 + 32,
            "{} bytes shown",
            shown.len()
        );
    }

    // Base64 of the input in the pieces its arguments make, against the whole.
    let (mut whole, mut pieces) = (String::new(), String::new());
    let mut one = json::Base64::default();
    one.push(&mut whole, rest);
    one.finish(&mut whole);
    let mut many = json::Base64::default();
    for piece in rest.split_inclusive(|&b| b == 0) {
        many.push(&mut pieces, piece);
    }
    many.finish(&mut pieces);
    assert_eq!(whole, pieces);
    assert_eq!(base64_decode(&whole), rest);
});
