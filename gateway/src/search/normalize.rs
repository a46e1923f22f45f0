//! Case- and accent-insensitive form of strings for `string` search.
//!
//! FHIR string search is "case-insensitive and accent-insensitive". Full
//! Unicode decomposition would need a dependency; instead Latin-1 Supplement
//! and Latin Extended-A letters (U+00C0–U+017F, which cover Western and
//! Central European names) are folded by table, combining marks
//! (U+0300–U+036F, as left by already-decomposed input) are dropped, and
//! everything else is lower-cased with [`char::to_lowercase`].

/// Lower-cases `text` and strips accents (see the module documentation).
pub fn normalize_text(text: &str) -> String {
    if text.is_ascii() {
        return text.to_ascii_lowercase();
    }
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if is_combining_mark(c) {
            continue;
        }
        match fold_latin(c) {
            Some(folded) => out.push_str(folded),
            None => out.extend(c.to_lowercase()),
        }
    }
    out
}

fn is_combining_mark(c: char) -> bool {
    ('\u{0300}'..='\u{036F}').contains(&c)
}

/// Unaccented lower-case form of a Latin-1 Supplement / Latin Extended-A letter.
fn fold_latin(c: char) -> Option<&'static str> {
    let code = u32::from(c);
    if !(0xC0..=0x17F).contains(&code) {
        return None;
    }
    LATIN_FOLDS.iter().find(|(first, last, _)| (*first..=*last).contains(&code)).map(|(_, _, folded)| *folded)
}

/// `(first, last, folded)`: every code point in `first..=last` folds to `folded`.
/// Gaps (×, ÷) are left to `to_lowercase`, which keeps them unchanged.
const LATIN_FOLDS: &[(u32, u32, &str)] = &[
    // Latin-1 Supplement
    (0xC0, 0xC5, "a"),  // À Á Â Ã Ä Å
    (0xC6, 0xC6, "ae"), // Æ
    (0xC7, 0xC7, "c"),  // Ç
    (0xC8, 0xCB, "e"),  // È É Ê Ë
    (0xCC, 0xCF, "i"),  // Ì Í Î Ï
    (0xD0, 0xD0, "d"),  // Ð
    (0xD1, 0xD1, "n"),  // Ñ
    (0xD2, 0xD6, "o"),  // Ò Ó Ô Õ Ö
    (0xD8, 0xD8, "o"),  // Ø
    (0xD9, 0xDC, "u"),  // Ù Ú Û Ü
    (0xDD, 0xDD, "y"),  // Ý
    (0xDE, 0xDE, "th"), // Þ
    (0xDF, 0xDF, "ss"), // ß
    (0xE0, 0xE5, "a"),
    (0xE6, 0xE6, "ae"),
    (0xE7, 0xE7, "c"),
    (0xE8, 0xEB, "e"),
    (0xEC, 0xEF, "i"),
    (0xF0, 0xF0, "d"),
    (0xF1, 0xF1, "n"),
    (0xF2, 0xF6, "o"),
    (0xF8, 0xF8, "o"),
    (0xF9, 0xFC, "u"),
    (0xFD, 0xFD, "y"),
    (0xFE, 0xFE, "th"),
    (0xFF, 0xFF, "y"),
    // Latin Extended-A
    (0x100, 0x105, "a"),  // Ā ā Ă ă Ą ą
    (0x106, 0x10D, "c"),  // Ć ć Ĉ ĉ Ċ ċ Č č
    (0x10E, 0x111, "d"),  // Ď ď Đ đ
    (0x112, 0x11B, "e"),  // Ē ē Ĕ ĕ Ė ė Ę ę Ě ě
    (0x11C, 0x123, "g"),  // Ĝ ĝ Ğ ğ Ġ ġ Ģ ģ
    (0x124, 0x127, "h"),  // Ĥ ĥ Ħ ħ
    (0x128, 0x131, "i"),  // Ĩ ĩ Ī ī Ĭ ĭ Į į İ ı
    (0x132, 0x133, "ij"), // Ĳ ĳ
    (0x134, 0x135, "j"),  // Ĵ ĵ
    (0x136, 0x138, "k"),  // Ķ ķ ĸ
    (0x139, 0x142, "l"),  // Ĺ ĺ Ļ ļ Ľ ľ Ŀ ŀ Ł ł
    (0x143, 0x14B, "n"),  // Ń ń Ņ ņ Ň ň ŉ Ŋ ŋ
    (0x14C, 0x151, "o"),  // Ō ō Ŏ ŏ Ő ő
    (0x152, 0x153, "oe"), // Œ œ
    (0x154, 0x159, "r"),  // Ŕ ŕ Ŗ ŗ Ř ř
    (0x15A, 0x161, "s"),  // Ś ś Ŝ ŝ Ş ş Š š
    (0x162, 0x167, "t"),  // Ţ ţ Ť ť Ŧ ŧ
    (0x168, 0x173, "u"),  // Ũ ũ Ū ū Ŭ ŭ Ů ů Ű ű Ų ų
    (0x174, 0x175, "w"),  // Ŵ ŵ
    (0x176, 0x178, "y"),  // Ŷ ŷ Ÿ
    (0x179, 0x17E, "z"),  // Ź ź Ż ż Ž ž
    (0x17F, 0x17F, "s"),  // ſ
];

#[cfg(test)]
mod tests {
    use super::normalize_text;

    #[test]
    fn folds_case_and_accents() {
        assert_eq!(normalize_text("Chalmers"), "chalmers");
        assert_eq!(normalize_text("Müller-Lüdenscheidt"), "muller-ludenscheidt");
        assert_eq!(normalize_text("ÉLODIE Łukasz Œuvre Straße"), "elodie lukasz oeuvre strasse");
        assert_eq!(normalize_text("Dvořák İlhan"), "dvorak ilhan");
        // decomposed input: e + COMBINING ACUTE ACCENT
        assert_eq!(normalize_text("Jose\u{301}"), "jose");
        assert_eq!(normalize_text("2 × 3 ÷ 1"), "2 × 3 ÷ 1");
        // outside the table: plain lower-casing, accents kept
        assert_eq!(normalize_text("ΣΊΣΥΦΟΣ"), "σίσυφοσ");
    }
}
