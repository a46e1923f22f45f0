//! The canonical byte form of a resource: what is sealed, hashed, stored and served.
//!
//! It is RFC 8785 (JSON Canonicalization Scheme) with one documented deviation:
//!
//! * objects: members sorted by the UTF-16 code units of their names (RFC 8785 §3.2.3);
//! * no insignificant white space;
//! * strings: escaped as RFC 8785 §3.2.2.2 (`\"`, `\\`, `\b`, `\f`, `\n`, `\r`, `\t`, other
//!   control characters as lower-case `\u00xx`, everything else literal UTF-8);
//! * **numbers: kept in the lexical form the client sent** (serde_json's `arbitrary_precision`).
//!   RFC 8785 would rewrite `37.50` as `37.5`, but in FHIR the trailing zero is the decimal's
//!   precision (R4 §2.24.0.1 "decimal"), so rewriting it would change the record. The one
//!   normalisation is serde_json's: an exponent gets an explicit sign (`1.0e3` → `1.0e+3`),
//!   which keeps both value and precision.
//!
//! The function does no I/O and never fails: every `serde_json::Value` has exactly one form.

use serde_json::Value;

/// The canonical bytes of `value`.
pub fn to_canonical_bytes(value: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(1024);
    write_value(value, &mut out);
    out
}

fn write_value(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(number) => out.extend_from_slice(number.as_str().as_bytes()),
        Value::String(text) => write_string(text, out),
        Value::Array(items) => {
            out.push(b'[');
            for (position, item) in items.iter().enumerate() {
                if position > 0 {
                    out.push(b',');
                }
                write_value(item, out);
            }
            out.push(b']');
        }
        Value::Object(members) => {
            // ASCII names in ascending byte order (FHIR's, as serde_json's map keeps them) are
            // already in UTF-16 order; anything else is sorted.
            let mut previous: Option<&str> = None;
            let in_order = members.keys().all(|name| {
                let ascending = name.is_ascii() && previous.is_none_or(|previous| previous < name.as_str());
                previous = Some(name);
                ascending
            });
            out.push(b'{');
            if in_order {
                write_members(members.iter(), out);
            } else {
                let mut sorted: Vec<(&String, &Value)> = members.iter().collect();
                sorted.sort_by(|(left, _), (right, _)| left.encode_utf16().cmp(right.encode_utf16()));
                write_members(sorted.into_iter(), out);
            }
            out.push(b'}');
        }
    }
}

fn write_members<'v>(members: impl Iterator<Item = (&'v String, &'v Value)>, out: &mut Vec<u8>) {
    for (position, (name, member)) in members.enumerate() {
        if position > 0 {
            out.push(b',');
        }
        write_string(name, out);
        out.push(b':');
        write_value(member, out);
    }
}

/// Appends `text` as a canonical JSON string (for writers of fixed shapes, like ledger entries).
pub fn write_string(text: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    // Runs of bytes that need no escape are copied whole (all of UTF-8 above 0x7f is literal).
    let bytes = text.as_bytes();
    let mut run_start = 0;
    let mut position = 0;
    while position < bytes.len() {
        // Eight bytes at a time while none of them needs an escape (most strings need none).
        if let Some(word) = bytes.get(position..position + 8)
            && !needs_escape(u64::from_le_bytes(word.try_into().expect("eight bytes")))
        {
            position += 8;
            continue;
        }
        let byte = bytes[position];
        position += 1;
        let escape: &[u8] = match byte {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            0x08 => b"\\b",
            0x0c => b"\\f",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            control if control < 0x20 => {
                out.extend_from_slice(&bytes[run_start..position - 1]);
                out.extend_from_slice(format!("\\u{control:04x}").as_bytes());
                run_start = position;
                continue;
            }
            _ => continue,
        };
        out.extend_from_slice(&bytes[run_start..position - 1]);
        out.extend_from_slice(escape);
        run_start = position;
    }
    out.extend_from_slice(&bytes[run_start..]);
    out.push(b'"');
}

/// Whether any of the eight bytes of `word` is a control character, `"` or `\\` (the classic
/// "has a zero byte" test, applied to `word`, `word ^ '"'…` and `word ^ '\\'…`; it can report a
/// byte that needs no escape, never miss one: the caller then looks byte by byte).
fn needs_escape(word: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let below = |word: u64, limit: u8| word.wrapping_sub(ONES * u64::from(limit)) & !word & HIGH;
    below(word, 0x20) | below(word ^ (ONES * u64::from(b'"')), 1) | below(word ^ (ONES * u64::from(b'\\')), 1) != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canonical(text: &str) -> String {
        let value: Value = serde_json::from_str(text).unwrap();
        String::from_utf8(to_canonical_bytes(&value)).unwrap()
    }

    #[test]
    fn sorts_members_and_drops_white_space() {
        assert_eq!(canonical(r#"{ "b": 1, "a": [true, null] }"#), r#"{"a":[true,null],"b":1}"#);
    }

    #[test]
    fn keeps_decimal_precision() {
        assert_eq!(canonical(r#"{"value": 37.50}"#), r#"{"value":37.50}"#);
        assert_eq!(canonical(r#"{"value": 120}"#), r#"{"value":120}"#);
        assert_eq!(canonical(r#"{"value": 1.0e3}"#), r#"{"value":1.0e+3}"#);
        assert_eq!(canonical(r#"{"value": -0.000100}"#), r#"{"value":-0.000100}"#);
    }

    /// RFC 8785 §3.2.3 sorts by UTF-16 code units: U+E000 sorts after U+1F600 (a surrogate pair,
    /// 0xD83D...), although its UTF-8 bytes sort before.
    #[test]
    fn sorts_by_utf16_code_units() {
        assert_eq!(canonical("{\"\u{e000}\":1,\"\u{1f600}\":2}"), "{\"\u{1f600}\":2,\"\u{e000}\":1}");
    }

    /// String escapes from RFC 8785 §3.2.2.2 (and its Appendix B examples).
    #[test]
    fn escapes_strings_like_rfc8785() {
        assert_eq!(canonical(r#""\u0001\u000a\u001f\"\\/€""#), r#""\u0001\n\u001f\"\\/€""#);
        assert_eq!(canonical(r#""\u2028""#), "\"\u{2028}\"");
    }

    /// Every character that needs an escape, at every position of strings longer than the
    /// eight-byte fast path, next to multi-byte UTF-8 and `0x7f`, escapes as serde_json does
    /// (which for strings is RFC 8785's form).
    #[test]
    fn escapes_at_every_position_of_long_strings() {
        let specials = ['"', '\\', '\u{0}', '\u{8}', '\t', '\n', '\u{c}', '\r', '\u{1f}'];
        let plain = ['a', 'é', '\u{7f}', '€', ' ', '!', '#', '[', ']'];
        for length in [1, 7, 8, 9, 16, 23] {
            for position in 0..length {
                for special in specials {
                    for filler in plain {
                        let text: String = (0..length).map(|at| if at == position { special } else { filler }).collect();
                        let mut out = Vec::new();
                        write_string(&text, &mut out);
                        assert_eq!(String::from_utf8(out).unwrap(), serde_json::to_string(&text).unwrap(), "{text:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn the_word_test_never_misses_a_byte_to_escape() {
        for byte in 0..=255u8 {
            for lane in 0..8 {
                let mut word = [b'a'; 8];
                word[lane] = byte;
                let expected = byte < 0x20 || byte == b'"' || byte == b'\\';
                assert_eq!(needs_escape(u64::from_le_bytes(word)), expected, "byte {byte:#x} in lane {lane}");
            }
        }
    }
}
