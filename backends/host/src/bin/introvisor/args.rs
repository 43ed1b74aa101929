//! A small hand-written argument parser and the number formats of the tool.

use std::ffi::{OsStr, OsString};

use super::Failure;

/// One option a subcommand accepts.
pub(crate) struct Opt {
    /// The long name, without `--`.
    pub(crate) name: &'static str,
    /// A one-letter alias, without `-`.
    pub(crate) short: Option<char>,
    /// Whether it takes a value (`--name VALUE` or `--name=VALUE`).
    pub(crate) takes_value: bool,
}

/// The parsed command line of a subcommand.
#[derive(Debug, Default)]
pub(crate) struct Parsed {
    pub(crate) positionals: Vec<OsString>,
    /// (name, value): the last occurrence wins in [`Parsed::value`].
    pub(crate) options: Vec<(&'static str, Option<String>)>,
}

impl Parsed {
    /// Whether a flag was given.
    pub(crate) fn flag(&self, name: &str) -> bool {
        self.options.iter().any(|(n, _)| *n == name)
    }

    /// The value of an option (its last occurrence).
    pub(crate) fn value(&self, name: &str) -> Option<&str> {
        self.options
            .iter()
            .rev()
            .find(|(n, _)| *n == name)
            .and_then(|(_, v)| v.as_deref())
    }
}

/// Parses `args` against `spec`. `--help`/`-h` is always accepted (as the flag `help`).
/// Options may come before, between or after positionals; `--` ends them.
pub(crate) fn parse(args: &[OsString], spec: &[Opt]) -> Result<Parsed, Failure> {
    let mut out = Parsed::default();
    let mut iter = args.iter();
    let mut only_positionals = false;
    while let Some(arg) = iter.next() {
        if only_positionals {
            out.positionals.push(arg.clone());
            continue;
        }
        let Some(text) = arg.to_str() else {
            // Not UTF-8: only a positional (a path) can be that.
            out.positionals.push(arg.clone());
            continue;
        };
        if text == "--" {
            only_positionals = true;
            continue;
        }
        if text == "--help" || text == "-h" {
            out.options.push(("help", None));
            continue;
        }
        let (opt, inline) = if let Some(long) = text.strip_prefix("--") {
            let (name, inline) = match long.split_once('=') {
                Some((n, v)) => (n, Some(v.to_owned())),
                None => (long, None),
            };
            let opt = spec
                .iter()
                .find(|o| o.name == name)
                .ok_or_else(|| Failure::usage(format!("unknown option '--{name}'")))?;
            (opt, inline)
        } else if let Some(short) = text.strip_prefix('-').filter(|s| !s.is_empty()) {
            let mut chars = short.chars();
            let (Some(c), None) = (chars.next(), chars.next()) else {
                return Err(Failure::usage(format!("unknown option '{text}'")));
            };
            let opt = spec
                .iter()
                .find(|o| o.short == Some(c))
                .ok_or_else(|| Failure::usage(format!("unknown option '-{c}'")))?;
            (opt, None)
        } else {
            out.positionals.push(arg.clone());
            continue;
        };
        let value = match (opt.takes_value, inline) {
            (true, Some(v)) => Some(v),
            (true, None) => {
                let v = iter.next().ok_or_else(|| {
                    Failure::usage(format!("option '--{}' needs a value", opt.name))
                })?;
                Some(
                    v.to_str()
                        .ok_or_else(|| {
                            Failure::usage(format!("the value of '--{}' is not UTF-8", opt.name))
                        })?
                        .to_owned(),
                )
            }
            (false, Some(_)) => {
                return Err(Failure::usage(format!(
                    "option '--{}' takes no value",
                    opt.name
                )));
            }
            (false, None) => None,
        };
        out.options.push((opt.name, value));
    }
    Ok(out)
}

fn digits(text: &str) -> String {
    text.chars().filter(|&c| c != '_').collect()
}

/// Hexadecimal digits (and `_` separators) only, at most 64 bits.
fn hex_digits(body: &str) -> Option<u64> {
    let body = digits(body);
    if body.is_empty() || !body.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(&body, 16).ok()
}

/// A hexadecimal number, with or without `0x`; `_` may separate digits.
pub(crate) fn parse_hex(text: &str) -> Option<u64> {
    let t = text.trim();
    hex_digits(
        t.strip_prefix("0x")
            .or_else(|| t.strip_prefix("0X"))
            .unwrap_or(t),
    )
}

/// A count: decimal, or hexadecimal with `0x`; `_` may separate digits.
pub(crate) fn parse_count(text: &str) -> Option<u64> {
    let t = text.trim();
    if let Some(hex) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        return hex_digits(hex);
    }
    let body = digits(t);
    if body.is_empty() || !body.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    body.parse().ok()
}

/// A hexadecimal address from the command line, or a usage failure naming `what`.
pub(crate) fn hex_arg(text: &str, what: &str) -> Result<u64, Failure> {
    parse_hex(text).ok_or_else(|| {
        Failure::input(format!(
            "malformed {what} '{text}' (expected a hexadecimal number of at most 64 bits, 0x optional)"
        ))
    })
}

/// A count from the command line, or a usage failure naming `what`.
pub(crate) fn count_arg(text: &str, what: &str) -> Result<u64, Failure> {
    parse_count(text).ok_or_else(|| {
        Failure::input(format!(
            "malformed {what} '{text}' (expected a decimal number, or hexadecimal with 0x)"
        ))
    })
}

/// An OS string for messages.
pub(crate) fn show(s: &OsStr) -> String {
    s.to_string_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        assert_eq!(parse_hex("0x1000"), Some(0x1000));
        assert_eq!(parse_hex("1000"), Some(0x1000));
        assert_eq!(
            parse_hex("0XfFff_8000_0000_0000"),
            Some(0xffff_8000_0000_0000)
        );
        assert_eq!(parse_hex("ffffffffffffffff"), Some(u64::MAX));
        assert_eq!(parse_hex("1_0000_0000_0000_0000"), None);
        assert_eq!(parse_hex("0x"), None);
        assert_eq!(parse_hex(""), None);
        assert_eq!(parse_hex("0xg"), None);
        assert_eq!(parse_hex("-1"), None);
        assert_eq!(parse_hex("+1"), None);
        assert_eq!(parse_count("64"), Some(64));
        assert_eq!(parse_count("0x40"), Some(64));
        assert_eq!(parse_count("1_000"), Some(1000));
        assert_eq!(parse_count("0x0x1"), None);
        assert_eq!(parse_count("ff"), None);
        assert_eq!(parse_count("18446744073709551616"), None);
    }

    #[test]
    fn options_anywhere_and_inline_values() {
        let spec = [
            Opt {
                name: "cr3",
                short: None,
                takes_value: true,
            },
            Opt {
                name: "raw",
                short: Some('r'),
                takes_value: false,
            },
        ];
        let args: Vec<OsString> = ["a", "--cr3", "1000", "b", "--cr3=2000", "-r", "--", "--raw"]
            .iter()
            .map(OsString::from)
            .collect();
        let p = parse(&args, &spec).unwrap();
        assert_eq!(p.positionals, ["a", "b", "--raw"]);
        assert_eq!(p.value("cr3"), Some("2000"));
        assert!(p.flag("raw"));
        let bad: Vec<OsString> = vec!["--nope".into()];
        assert!(parse(&bad, &spec).is_err());
        let missing: Vec<OsString> = vec!["--cr3".into()];
        assert!(parse(&missing, &spec).is_err());
        let flag_value: Vec<OsString> = vec!["--raw=1".into()];
        assert!(parse(&flag_value, &spec).is_err());
    }
}
