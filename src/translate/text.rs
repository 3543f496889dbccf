//! Sans-IO text handling for translation: the keys texts are looked up by (phrasebook and
//! cache), and source-language detection for short comments restricted to the languages in
//! play in the room.
//!
//! Detection, in order: (1) script — kana means Japanese, Han without kana Chinese (Japanese
//! when the sender reads Japanese and Japanese is in play), Hangul Korean, Arabic script
//! Arabic, Cyrillic Russian, Thai Thai; (2) for Latin script, the phrasebook (a phrase known
//! in exactly one candidate language); (3) marker words and letters of each Latin candidate
//! (`¿ ñ` and `el la que` for Spanish, `the you is` for English...); (4) the sender's own
//! language when it is a Latin candidate; (5) the first Latin candidate. Statistical
//! detectors guess badly on two-word comments (`docs/translation.md` has the measurement);
//! the room's languages and the sender's choice are better evidence.

use std::borrow::Cow;

/// The key a phrase is matched by: compatibility-normalized (NFKD), accents (combining
/// diacritical marks U+0300–U+036F) dropped, lowercase, punctuation and symbols as spaces,
/// spaces collapsed. "¿Cuánto  cuesta?" and "cuanto cuesta" share a key.
pub fn phrase_key(text: &str) -> String {
    let decomposed: Cow<str> = if text.is_ascii() {
        Cow::Borrowed(text)
    } else {
        icu_normalizer::DecomposingNormalizerBorrowed::new_nfkd().normalize(text)
    };
    let mut out = String::with_capacity(decomposed.len());
    let mut space = false;
    for c in decomposed.chars() {
        if ('\u{0300}'..='\u{036F}').contains(&c) {
            continue;
        }
        // Apostrophes join words ("what's"); other non-alphanumerics separate them.
        if c == '\'' || c == '’' {
            continue;
        }
        if c.is_alphanumeric() || ('\u{3099}'..='\u{309A}').contains(&c) {
            if space && !out.is_empty() {
                out.push(' ');
            }
            space = false;
            for l in c.to_lowercase() {
                out.push(l);
            }
        } else {
            space = true;
        }
    }
    out
}

/// The key a provider translation is cached by: NFKC, whitespace collapsed and trimmed.
/// Case and punctuation are kept (they can change a translation).
pub fn cache_text(text: &str) -> String {
    let nfkc: Cow<str> = if text.is_ascii() {
        Cow::Borrowed(text)
    } else {
        icu_normalizer::ComposingNormalizerBorrowed::new_nfkc().normalize(text)
    };
    let mut out = String::with_capacity(nfkc.len());
    for word in nfkc.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

/// Splits a comment at sentence punctuation into the parts the phrasebook may know.
pub fn segments(text: &str) -> Vec<&str> {
    text.split(|c: char| {
        matches!(
            c,
            '?' | '!'
                | '.'
                | ','
                | ';'
                | '\n'
                | '。'
                | '？'
                | '！'
                | '，'
                | '、'
                | '；'
                | '¿'
                | '¡'
        )
    })
    .map(str::trim)
    .filter(|s| !s.is_empty())
    .collect()
}

/// Script families that decide a language by themselves.
#[derive(Default, Debug)]
struct ScriptCounts {
    han: usize,
    kana: usize,
    hangul: usize,
    arabic: usize,
    cyrillic: usize,
    thai: usize,
    latin: usize,
}

fn scripts(text: &str) -> ScriptCounts {
    let mut s = ScriptCounts::default();
    for c in text.chars() {
        match c {
            'a'..='z' | 'A'..='Z' | '\u{00C0}'..='\u{024F}' => s.latin += 1,
            '\u{3040}'..='\u{30FF}' | '\u{31F0}'..='\u{31FF}' | '\u{FF66}'..='\u{FF9F}' => {
                s.kana += 1
            }
            '\u{3400}'..='\u{4DBF}' | '\u{4E00}'..='\u{9FFF}' | '\u{F900}'..='\u{FAFF}' => {
                s.han += 1
            }
            '\u{AC00}'..='\u{D7AF}' | '\u{1100}'..='\u{11FF}' => s.hangul += 1,
            '\u{0600}'..='\u{06FF}' | '\u{0750}'..='\u{077F}' => s.arabic += 1,
            '\u{0400}'..='\u{04FF}' => s.cyrillic += 1,
            '\u{0E00}'..='\u{0E7F}' => s.thai += 1,
            // Full-width Latin letters.
            '\u{FF21}'..='\u{FF3A}' | '\u{FF41}'..='\u{FF5A}' => s.latin += 1,
            _ => {}
        }
    }
    s
}

/// Marker words and letters of the Latin-script languages the detector knows.
struct LatinProfile {
    lang: &'static str,
    words: &'static [&'static str],
    letters: &'static str,
}

const LATIN: &[LatinProfile] = &[
    LatinProfile {
        lang: "en",
        words: &[
            "the",
            "is",
            "it",
            "you",
            "do",
            "does",
            "this",
            "that",
            "what",
            "how",
            "much",
            "can",
            "i",
            "my",
            "me",
            "to",
            "and",
            "please",
            "pls",
            "have",
            "are",
            "with",
            "for",
            "of",
            "in",
            "on",
            "size",
            "color",
            "colour",
            "ship",
            "shipping",
            "link",
            "price",
            "want",
            "love",
            "buy",
            "nice",
            "beautiful",
            "thanks",
            "thank",
            "hello",
            "hi",
            "yes",
            "no",
            "where",
            "when",
            "will",
            "there",
            "any",
            "does",
            "show",
            "again",
            "available",
            "stock",
            "so",
            "cute",
            "wow",
            "good",
            "great",
        ],
        letters: "",
    },
    LatinProfile {
        lang: "es",
        words: &[
            "el", "la", "los", "las", "de", "que", "qué", "es", "y", "en", "un", "una", "por",
            "para", "con", "no", "sí", "si", "lo", "me", "mi", "tu", "hay", "cuánto", "cuanto",
            "cuesta", "precio", "talla", "tallas", "color", "colores", "envío", "envio", "quiero",
            "gracias", "hola", "favor", "está", "esta", "tiene", "tienes", "muy", "bonito",
            "bonita", "dónde", "donde", "cuándo", "cuando", "puedo", "del", "al", "también",
            "pero", "más",
        ],
        letters: "ñ¿¡áéíóú",
    },
    LatinProfile {
        lang: "pt",
        words: &[
            "o", "os", "as", "de", "que", "é", "não", "nao", "um", "uma", "para", "com", "você",
            "voce", "quanto", "custa", "obrigado", "obrigada", "olá", "ola", "tem", "muito",
            "lindo", "frete", "tamanho",
        ],
        letters: "ãõç",
    },
    LatinProfile {
        lang: "fr",
        words: &[
            "le",
            "la",
            "les",
            "de",
            "des",
            "que",
            "est",
            "et",
            "un",
            "une",
            "pour",
            "avec",
            "vous",
            "je",
            "combien",
            "merci",
            "bonjour",
            "taille",
            "couleur",
            "livraison",
            "c'est",
            "très",
            "joli",
        ],
        letters: "çèêàùœ",
    },
    LatinProfile {
        lang: "de",
        words: &[
            "der", "die", "das", "und", "ist", "ich", "sie", "nicht", "ein", "eine", "wie", "viel",
            "kostet", "danke", "hallo", "größe", "farbe", "versand", "bitte", "schön",
        ],
        letters: "äöüß",
    },
];

/// A language whose script alone identifies it.
fn script_language(
    s: &ScriptCounts,
    hint: Option<&str>,
    candidates: &[String],
) -> Option<&'static str> {
    if s.kana > 0 {
        return Some("ja");
    }
    let non_latin = s.han + s.hangul + s.arabic + s.cyrillic + s.thai;
    if non_latin == 0 || s.latin > non_latin * 3 {
        return None;
    }
    let top = [
        (s.han, "zh"),
        (s.hangul, "ko"),
        (s.arabic, "ar"),
        (s.cyrillic, "ru"),
        (s.thai, "th"),
    ]
    .into_iter()
    .max_by_key(|(n, _)| *n)
    .map(|(_, l)| l)?;
    // Kanji-only Japanese ("値段"): trust a Japanese reader in a room where Japanese is read.
    if top == "zh" && hint == Some("ja") && candidates.iter().any(|c| c == "ja") {
        return Some("ja");
    }
    Some(top)
}

/// Detect the source language of a short `text`. `candidates` are the languages in play in
/// the room; `hint` is the sender's own language; `phrase_langs` answers which languages the
/// phrasebook knows a phrase key in. `None` when the text has no letters (emoji, numbers):
/// it needs no translation.
pub fn detect(
    text: &str,
    candidates: &[String],
    hint: Option<&str>,
    phrase_langs: &dyn Fn(&str) -> Vec<String>,
) -> Option<String> {
    let s = scripts(text);
    if let Some(l) = script_language(&s, hint, candidates) {
        return Some(l.to_owned());
    }
    if s.latin == 0 {
        return None;
    }
    let latin_candidates: Vec<&str> = candidates
        .iter()
        .map(String::as_str)
        .filter(|c| LATIN.iter().any(|p| p.lang == *c))
        .collect();
    // Only one Latin language in play: it is that one.
    if latin_candidates.len() == 1 {
        return Some(latin_candidates[0].to_owned());
    }
    let pool: Vec<&str> = if latin_candidates.is_empty() {
        LATIN.iter().map(|p| p.lang).collect()
    } else {
        latin_candidates.clone()
    };
    // The phrasebook knows this phrase in exactly one of the languages in play.
    let key = phrase_key(text);
    let known: Vec<String> = phrase_langs(&key)
        .into_iter()
        .filter(|l| pool.contains(&l.as_str()))
        .collect();
    if known.len() == 1 {
        return known.into_iter().next();
    }
    // Marker words and letters.
    let lower = text.to_lowercase();
    let words: Vec<&str> = lower
        .split(|c: char| !(c.is_alphanumeric() || c == '\''))
        .filter(|w| !w.is_empty())
        .collect();
    let mut best: Option<(&str, usize)> = None;
    let mut tie = false;
    for p in LATIN.iter().filter(|p| pool.contains(&p.lang)) {
        let mut score = words.iter().filter(|w| p.words.contains(w)).count() * 2;
        score += lower.chars().filter(|c| p.letters.contains(*c)).count() * 3;
        match best {
            Some((_, b)) if score > b => {
                best = Some((p.lang, score));
                tie = false;
            }
            Some((_, b)) if score == b => tie = true,
            None => best = Some((p.lang, score)),
            _ => {}
        }
    }
    match best {
        Some((l, score)) if score > 0 && !tie => Some(l.to_owned()),
        _ => match hint.filter(|h| pool.contains(h)) {
            Some(h) => Some(h.to_owned()),
            None => pool.first().map(|l| (*l).to_owned()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn none(_: &str) -> Vec<String> {
        Vec::new()
    }

    fn langs(l: &[&str]) -> Vec<String> {
        l.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn keys_ignore_case_accents_and_punctuation() {
        assert_eq!(phrase_key("¿Cuánto  cuesta?"), "cuanto cuesta");
        assert_eq!(phrase_key("HOW much??"), "how much");
        assert_eq!(phrase_key("What's the price"), "whats the price");
        assert_eq!(phrase_key("多少钱？"), "多少钱");
        assert_eq!(phrase_key("ｈｏｗ ｍｕｃｈ"), "how much");
        assert_eq!(phrase_key("いくらですか"), phrase_key("いくらですか？"));
        assert_eq!(cache_text("  a   b\tc "), "a b c");
        assert_eq!(segments("hi! how much?"), vec!["hi", "how much"]);
    }

    /// Short comments as viewers write them, labelled. The detector must get at least 95%
    /// right with the room's languages as candidates and no hint.
    #[test]
    fn short_comments_are_detected_among_the_rooms_languages() {
        let room = langs(&["zh", "en", "es", "ja"]);
        let labelled: &[(&str, &str)] = &[
            ("多少钱", "zh"),
            ("有货吗", "zh"),
            ("这个颜色好看", "zh"),
            ("能寄到美国吗", "zh"),
            ("いくらですか", "ja"),
            ("かわいい！", "ja"),
            ("在庫ありますか", "ja"),
            ("how much", "en"),
            ("link please", "en"),
            ("is it in stock?", "en"),
            ("do you ship to texas", "en"),
            ("so cute!!", "en"),
            ("what sizes do you have", "en"),
            ("love the color", "en"),
            ("can you show it again", "en"),
            ("is this real leather", "en"),
            ("wow nice", "en"),
            ("I want the blue one", "en"),
            ("¿cuánto cuesta?", "es"),
            ("hola a todos", "es"),
            ("qué tallas hay", "es"),
            ("me encanta el color", "es"),
            ("envío a méxico?", "es"),
            ("lo quiero", "es"),
            ("muy bonito", "es"),
            ("tienes en rojo", "es"),
            ("precio por favor", "es"),
            ("gracias", "es"),
            ("donde esta el enlace", "es"),
            ("quiero dos", "es"),
            ("¡qué lindo!", "es"),
            ("talla m por favor", "es"),
        ];
        let book = |key: &str| -> Vec<String> {
            match key {
                "gracias" | "lo quiero" | "precio" => langs(&["es"]),
                "how much" | "link please" => langs(&["en"]),
                _ => Vec::new(),
            }
        };
        let right = labelled
            .iter()
            .filter(|(text, want)| {
                let got = detect(text, &room, None, &book);
                if got.as_deref() != Some(*want) {
                    eprintln!("{text:?}: got {got:?}, want {want}");
                }
                got.as_deref() == Some(*want)
            })
            .count();
        assert!(
            right * 100 >= labelled.len() * 95,
            "{right}/{} detected",
            labelled.len()
        );
    }

    #[test]
    fn hints_and_candidates_settle_what_text_cannot() {
        // "ok" says nothing: the sender's language decides.
        assert_eq!(
            detect("ok", &langs(&["en", "es"]), Some("es"), &none).as_deref(),
            Some("es")
        );
        // One Latin language in play: it is that one.
        assert_eq!(
            detect("vale", &langs(&["zh", "en"]), None, &none).as_deref(),
            Some("en")
        );
        assert_eq!(
            detect("値段", &langs(&["zh", "ja"]), Some("ja"), &none).as_deref(),
            Some("ja")
        );
        assert_eq!(
            detect("値段", &langs(&["zh", "ja"]), None, &none).as_deref(),
            Some("zh")
        );
        assert_eq!(detect("😍😍 123", &langs(&["en"]), None, &none), None);
        assert_eq!(
            detect("كم السعر", &langs(&["en"]), None, &none).as_deref(),
            Some("ar")
        );
    }
}
