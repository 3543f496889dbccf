//! The phrasebook, sans-IO: frequent livestream-commerce phrases in several languages,
//! answered without a provider. Each entry is one meaning; every string of it is an input,
//! and the first string of each language is the output into that language (see
//! `config/phrasebook/livestream-commerce.toml`).

use super::text::{phrase_key, segments};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// The phrasebooks shipped in `config/phrasebook/`, compiled in.
pub const BUILTIN: &[(&str, &str)] = &[(
    "livestream-commerce.toml",
    include_str!("../../config/phrasebook/livestream-commerce.toml"),
)];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    phrases: Vec<BTreeMap<String, Vec<String>>>,
}

/// Why a phrasebook could not be loaded (names the file).
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct PhrasebookError {
    pub path: String,
    pub message: String,
}

/// Every phrase, indexed by (language, key).
#[derive(Debug, Default)]
pub struct Phrasebook {
    /// Per meaning: language → its canonical output.
    outputs: Vec<BTreeMap<String, String>>,
    /// (language, phrase key) → meaning.
    index: HashMap<(String, String), usize>,
    /// Phrase key → languages it is known in.
    langs: HashMap<String, Vec<String>>,
}

impl Phrasebook {
    /// Parse phrasebook files `(name, TOML text)`.
    pub fn parse<'a>(
        files: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Phrasebook, PhrasebookError> {
        let mut book = Phrasebook::default();
        for (path, text) in files {
            let err = |message: String| PhrasebookError {
                path: path.to_owned(),
                message,
            };
            let file: File = toml::from_str(text).map_err(|e| err(e.message().to_owned()))?;
            for (n, entry) in file.phrases.into_iter().enumerate() {
                let meaning = book.outputs.len();
                let mut outputs = BTreeMap::new();
                for (lang, phrases) in entry {
                    if ferry_client::protocol::translation::normalize_lang(&lang).as_deref()
                        != Some(lang.as_str())
                    {
                        return Err(err(format!("phrase {n}: `{lang}` is not a language code")));
                    }
                    let Some(first) = phrases.first() else {
                        return Err(err(format!("phrase {n}: `{lang}` has no phrases")));
                    };
                    outputs.insert(lang.clone(), first.clone());
                    for p in &phrases {
                        let key = phrase_key(p);
                        if key.is_empty() {
                            continue;
                        }
                        match book.index.get(&(lang.clone(), key.clone())) {
                            Some(&other) if other != meaning => {
                                return Err(err(format!(
                                    "phrase {n}: `{p}` ({lang}) already means something else"
                                )))
                            }
                            Some(_) => {}
                            None => {
                                book.index.insert((lang.clone(), key.clone()), meaning);
                                let langs = book.langs.entry(key).or_default();
                                if !langs.contains(&lang) {
                                    langs.push(lang.clone());
                                }
                            }
                        }
                    }
                }
                book.outputs.push(outputs);
            }
        }
        Ok(book)
    }

    /// Read every `*.toml` in `dir`.
    pub fn load_dir(dir: &Path) -> Result<Phrasebook, PhrasebookError> {
        let err = |message: String| PhrasebookError {
            path: dir.display().to_string(),
            message,
        };
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(|e| err(e.to_string()))? {
            let path = entry.map_err(|e| err(e.to_string()))?.path();
            if path.extension().and_then(|e| e.to_str()) == Some("toml") {
                let text = std::fs::read_to_string(&path).map_err(|e| err(e.to_string()))?;
                files.push((path.display().to_string(), text));
            }
        }
        files.sort();
        Self::parse(files.iter().map(|(p, t)| (p.as_str(), t.as_str())))
    }

    /// Meanings in the book.
    pub fn len(&self) -> usize {
        self.outputs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.outputs.is_empty()
    }

    /// Languages a phrase key is known in (for language detection).
    pub fn languages_of(&self, key: &str) -> Vec<String> {
        self.langs.get(key).cloned().unwrap_or_default()
    }

    fn one(&self, phrase: &str, source: &str, target: &str) -> Option<&str> {
        let meaning = self.index.get(&(source.to_owned(), phrase_key(phrase)))?;
        self.outputs[*meaning].get(target).map(String::as_str)
    }

    /// The book's translation of `text` from `source` into `target`: the whole text, or every
    /// punctuation-separated part of it, must be a known phrase.
    pub fn translate(&self, text: &str, source: &str, target: &str) -> Option<String> {
        if let Some(t) = self.one(text, source, target) {
            return Some(t.to_owned());
        }
        let parts = segments(text);
        if parts.len() < 2 {
            return None;
        }
        let sep = if matches!(target, "zh" | "ja") {
            ""
        } else {
            " "
        };
        let mut out = String::new();
        for p in parts {
            let t = self.one(p, source, target)?;
            if !out.is_empty() {
                out.push_str(sep);
            }
            out.push_str(t);
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped() -> Phrasebook {
        Phrasebook::parse(BUILTIN.iter().copied()).expect("shipped phrasebook parses")
    }

    #[test]
    fn the_shipped_book_covers_the_commerce_pairs() {
        let b = shipped();
        assert!(b.len() >= 15);
        let pairs = [
            ("zh", "en"),
            ("en", "zh"),
            ("zh", "es"),
            ("es", "zh"),
            ("zh", "ja"),
            ("ja", "zh"),
            ("en", "es"),
            ("es", "en"),
            ("en", "ja"),
            ("ja", "en"),
        ];
        for (s, t) in pairs {
            let probe = match s {
                "zh" => "多少钱",
                "en" => "How much?",
                "es" => "¿cuanto cuesta?",
                _ => "いくらですか",
            };
            assert!(b.translate(probe, s, t).is_some(), "{s}->{t}");
        }
        assert_eq!(
            b.translate("LINK PLS!!", "en", "zh").as_deref(),
            Some("请发链接")
        );
        assert_eq!(
            b.translate("有货吗？", "zh", "en").as_deref(),
            Some("In stock?")
        );
        assert_eq!(
            b.translate("hi! how much?", "en", "es").as_deref(),
            Some("Hola ¿Cuánto cuesta?")
        );
        assert_eq!(
            b.translate("how much for the rattan basket", "en", "zh"),
            None
        );
        assert_eq!(b.languages_of("gracias"), vec!["es".to_owned()]);
    }

    #[test]
    fn conflicting_phrases_are_refused() {
        let err = Phrasebook::parse([(
            "x.toml",
            "[[phrases]]\nen = [\"yes\"]\nes = [\"sí\"]\n[[phrases]]\nen = [\"Yes!\"]\nes = [\"no\"]",
        )])
        .expect_err("yes means two things");
        assert!(err.to_string().contains("x.toml"), "{err}");
    }
}
