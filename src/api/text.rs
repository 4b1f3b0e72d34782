//! Which characters a text field may hold, written once: as predicates for
//! the validator ([`super::body`]) and as JSON Schema patterns for the OpenAPI
//! document ([`super::docs`]), so the two cannot disagree.
//!
//! The patterns spell every class out (no `\s`, `\p{..}` or `$`): ECMA-262,
//! Python's `re` (what contract testers such as schemathesis generate from)
//! and Rust each read those differently.

/// Unicode's White_Space characters: what [`str::trim`] removes.
const WHITESPACE: &[(char, char)] = &[
    ('\u{09}', '\u{0D}'),
    ('\u{20}', '\u{20}'),
    ('\u{85}', '\u{85}'),
    ('\u{A0}', '\u{A0}'),
    ('\u{1680}', '\u{1680}'),
    ('\u{2000}', '\u{200A}'),
    ('\u{2028}', '\u{2029}'),
    ('\u{202F}', '\u{202F}'),
    ('\u{205F}', '\u{205F}'),
    ('\u{3000}', '\u{3000}'),
];

/// General category Cc: what [`char::is_control`] is true for.
const CONTROL: &[(char, char)] = &[('\u{00}', '\u{1F}'), ('\u{7F}', '\u{9F}')];

/// General category Cf (format characters: bidirectional overrides and
/// isolates, zero-width spaces and joiners, the byte-order mark, tags), as of
/// Unicode 15.1. Invisible, they make an address display as another one.
const FORMAT: &[(char, char)] = &[
    ('\u{AD}', '\u{AD}'),
    ('\u{600}', '\u{605}'),
    ('\u{61C}', '\u{61C}'),
    ('\u{6DD}', '\u{6DD}'),
    ('\u{70F}', '\u{70F}'),
    ('\u{890}', '\u{891}'),
    ('\u{8E2}', '\u{8E2}'),
    ('\u{180E}', '\u{180E}'),
    ('\u{200B}', '\u{200F}'),
    ('\u{202A}', '\u{202E}'),
    ('\u{2060}', '\u{2064}'),
    ('\u{2066}', '\u{206F}'),
    ('\u{FEFF}', '\u{FEFF}'),
    ('\u{FFF9}', '\u{FFFB}'),
    ('\u{110BD}', '\u{110BD}'),
    ('\u{110CD}', '\u{110CD}'),
    ('\u{13430}', '\u{1343F}'),
    ('\u{1BCA0}', '\u{1BCA3}'),
    ('\u{1D173}', '\u{1D17A}'),
    ('\u{E0001}', '\u{E0001}'),
    ('\u{E0020}', '\u{E007F}'),
];

fn in_ranges(ranges: &[(char, char)], c: char) -> bool {
    ranges.iter().any(|&(low, high)| (low..=high).contains(&c))
}

/// Whether `text` holds something other than whitespace.
pub fn is_blank(text: &str) -> bool {
    text.chars().all(|c| in_ranges(WHITESPACE, c))
}

/// Whether `text` holds a control (Cc) or format (Cf) character.
pub fn has_invisible(text: &str) -> bool {
    text.chars()
        .any(|c| in_ranges(CONTROL, c) || in_ranges(FORMAT, c))
}

/// A regex character class of `ranges`.
fn class(negated: bool, ranges: &[&[(char, char)]]) -> String {
    let mut class = String::from(if negated { "[^" } else { "[" });
    for &(low, high) in ranges.iter().flat_map(|r| r.iter()) {
        class.push_str(&escaped(low));
        if high != low {
            class.push('-');
            class.push_str(&escaped(high));
        }
    }
    class.push(']');
    class
}

/// A BMP character as a `\uXXXX` escape, any other as itself: ECMA-262 (with
/// the `u` flag) and Python read both, and neither reads the other's escape
/// for characters beyond the BMP.
fn escaped(c: char) -> String {
    match u16::try_from(u32::from(c)) {
        Ok(unit) => format!("\\u{unit:04X}"),
        Err(_) => c.to_string(),
    }
}

/// A pattern a string matches when it holds a non-whitespace character.
pub fn not_blank_pattern() -> String {
    class(true, &[WHITESPACE])
}

/// A pattern a string matches when it holds a control or format character.
pub fn invisible_pattern() -> String {
    class(false, &[CONTROL, FORMAT])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_char() -> impl Iterator<Item = char> {
        (0..=0x10FFFF).filter_map(char::from_u32)
    }

    #[test]
    fn whitespace_and_control_are_what_rust_says_they_are() {
        for c in every_char() {
            assert_eq!(in_ranges(WHITESPACE, c), c.is_whitespace(), "{c:?}");
            assert_eq!(in_ranges(CONTROL, c), c.is_control(), "{c:?}");
        }
    }

    #[test]
    fn format_characters_are_refused_and_the_rest_of_the_text_is_not() {
        for spoof in ["a\u{202E}moc.b", "a\u{200B}@b.c", "\u{FEFF}x", "x\u{E0041}"] {
            assert!(has_invisible(spoof), "{spoof:?}");
        }
        for fine in ["user@example.com", "+1 555 0100", "ünïcødé@例え.jp", "🙂"] {
            assert!(!has_invisible(fine), "{fine:?}");
        }
        assert!(is_blank(" \u{3000}\t") && !is_blank(" x "));
    }

    #[test]
    fn patterns_spell_out_their_classes() {
        assert!(not_blank_pattern().starts_with("[^\\u0009-\\u000D\\u0020"));
        let invisible = invisible_pattern();
        assert!(invisible.starts_with("[\\u0000-\\u001F\\u007F-\\u009F\\u00AD"));
        assert!(invisible.ends_with("\u{E0020}-\u{E007F}]"), "{invisible}");
    }
}
