//! Glossaries: a merchant's product terms, translated exactly as the merchant said. A
//! glossary is a list of terms, each a map language → text (`{"zh":"藤编篮","en":"rattan
//! basket"}`), plus the rooms it applies to (room ids, `*` patterns) and a version that is
//! bumped on every change and is part of every translation cache key.
//!
//! Protecting terms (sans-IO): before a text goes to a provider it is XML-escaped and every
//! glossary term of the source language is replaced by `<x i="N">target term</x>`. DeepL
//! keeps such spans untranslated (`tag_handling=xml`, `ignore_tags=x`), LibreTranslate treats
//! them as markup (`format=html`), and the OpenAI-compatible prompt asks for them unchanged.
//! After translation each `<x i="N">…</x>` is replaced by term N's target text, whatever the
//! provider did to its content or its position, and the rest is unescaped. A translation that
//! lost or duplicated a placeholder is refused ([`RestoreError`]): the viewer gets the
//! original rather than a translation without the merchant's term.
//!
//! Storage: [`GlossaryStore`] — a JSON file on the embedded engine, a Redis hash on the Redis
//! engine (nodes poll a change counter). [`Glossaries`] is the node's compiled index.

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use async_trait::async_trait;
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

/// A glossary as stored and as the HTTP API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Glossary {
    pub id: String,
    /// The user who created it (set by the server).
    #[serde(default)]
    pub owner: String,
    /// Bumped on every change (set by the server).
    #[serde(default)]
    pub version: u64,
    /// Rooms whose comments use it: ids or patterns with `*` (the longest matching pattern
    /// wins when several glossaries match a room).
    #[serde(default)]
    pub rooms: Vec<String>,
    /// Each term: language → text, in at least two languages.
    pub terms: Vec<BTreeMap<String, String>>,
}

/// Why a glossary is not acceptable.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GlossaryError {
    #[error("{0}")]
    Invalid(String),
    #[error("glossary storage unavailable: {0}")]
    Unavailable(String),
}

impl Glossary {
    /// Check ids, sizes and terms.
    pub fn validate(&self, max_terms: usize) -> Result<(), GlossaryError> {
        let bad = |m: String| Err(GlossaryError::Invalid(m));
        if self.id.is_empty()
            || self.id.len() > 64
            || !self
                .id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
        {
            return bad("glossary id must match [A-Za-z0-9_.:-]{1,64}".into());
        }
        if self.terms.len() > max_terms {
            return bad(format!("at most {max_terms} terms per glossary"));
        }
        if self.rooms.len() > 100 {
            return bad("at most 100 room patterns per glossary".into());
        }
        for (i, term) in self.terms.iter().enumerate() {
            if term.len() < 2 {
                return bad(format!("term {i}: give the term in at least two languages"));
            }
            for (lang, text) in term {
                if ferry_client::protocol::translation::normalize_lang(lang).as_deref()
                    != Some(lang.as_str())
                {
                    return bad(format!(
                        "term {i}: `{lang}` is not a lowercase language code"
                    ));
                }
                if text.trim().is_empty() || text.chars().count() > 200 {
                    return bad(format!(
                        "term {i} ({lang}): text must be 1..=200 characters"
                    ));
                }
                if text.chars().any(char::is_control) {
                    return bad(format!("term {i} ({lang}): control characters"));
                }
            }
        }
        Ok(())
    }
}

/// A glossary compiled for matching: per source language, one automaton over its terms.
#[derive(Debug)]
pub struct Compiled {
    pub glossary: Glossary,
    by_lang: HashMap<String, (AhoCorasick, Vec<usize>)>,
}

impl Compiled {
    pub fn new(glossary: Glossary) -> Compiled {
        let mut per_lang: HashMap<String, (Vec<String>, Vec<usize>)> = HashMap::new();
        for (i, term) in glossary.terms.iter().enumerate() {
            for (lang, text) in term {
                let e = per_lang.entry(lang.clone()).or_default();
                e.0.push(text.clone());
                e.1.push(i);
            }
        }
        let by_lang = per_lang
            .into_iter()
            .filter_map(|(lang, (pats, idx))| {
                AhoCorasickBuilder::new()
                    .match_kind(MatchKind::LeftmostLongest)
                    .ascii_case_insensitive(true)
                    .build(&pats)
                    .ok()
                    .map(|ac| (lang, (ac, idx)))
            })
            .collect();
        Compiled { glossary, by_lang }
    }

    pub fn id(&self) -> &str {
        &self.glossary.id
    }

    pub fn version(&self) -> u64 {
        self.glossary.version
    }
}

/// A text prepared for a provider.
#[derive(Clone, Debug, PartialEq)]
pub struct Protected {
    /// XML-escaped text with `<x i="N">target</x>` where terms were.
    pub markup: String,
    /// Term N's target text.
    pub restores: Vec<String>,
    /// The text is only glossary terms (and punctuation, digits, spaces): its translation is
    /// [`Protected::substituted`], no provider needed.
    pub only_terms: bool,
    /// The source text with every term replaced by its target text.
    pub substituted: String,
}

fn escape_into(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            _ => out.push(c),
        }
    }
}

fn is_ascii_word(s: &str) -> bool {
    s.bytes().any(|b| b.is_ascii_alphabetic())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b' ' || b == b'-')
}

/// Prepare `text` (in `source`) for translation into `target` with `glossary`.
pub fn protect(text: &str, source: &str, target: &str, glossary: Option<&Compiled>) -> Protected {
    let mut markup = String::with_capacity(text.len() + 16);
    let mut substituted = String::with_capacity(text.len());
    let mut restores = Vec::new();
    let mut rest_has_words = false;
    let mut last = 0;
    if let Some((g, (ac, idx))) = glossary.and_then(|g| g.by_lang.get(source).map(|x| (g, x))) {
        for m in ac.find_iter(text) {
            let term = idx[m.pattern().as_usize()];
            let Some(target_text) = g.glossary.terms[term].get(target) else {
                continue;
            };
            let matched = &text[m.start()..m.end()];
            // Latin-script terms must stand as words ("cat" is not in "category").
            if is_ascii_word(matched) {
                let before = text[..m.start()].chars().next_back();
                let after = text[m.end()..].chars().next();
                if before.is_some_and(char::is_alphanumeric)
                    || after.is_some_and(char::is_alphanumeric)
                {
                    continue;
                }
            }
            let between = &text[last..m.start()];
            rest_has_words |= between.chars().any(char::is_alphabetic);
            escape_into(&mut markup, between);
            substituted.push_str(between);
            markup.push_str(&format!("<x i=\"{}\">", restores.len()));
            escape_into(&mut markup, target_text);
            markup.push_str("</x>");
            substituted.push_str(target_text);
            restores.push(target_text.clone());
            last = m.end();
        }
    }
    let tail = &text[last..];
    rest_has_words |= tail.chars().any(char::is_alphabetic);
    escape_into(&mut markup, tail);
    substituted.push_str(tail);
    Protected {
        only_terms: !restores.is_empty() && !rest_has_words,
        markup,
        restores,
        substituted,
    }
}

/// A provider's output broke the placeholders.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RestoreError {
    #[error("placeholder {0} is missing from the translation")]
    Missing(usize),
    #[error("placeholder {0} appears more than once")]
    Duplicated(usize),
    #[error("unknown or malformed placeholder")]
    Malformed,
}

/// Parse `<x i="N">` (quotes ' or ", spaces tolerated) at the start of `s`; the id and the
/// length of the tag, and whether it is self-closing (`<x i="N"/>`).
fn open_tag(s: &str) -> Option<(usize, usize, bool)> {
    let b = s.as_bytes();
    let mut i = 2; // after "<x"
    let skip_ws = |i: &mut usize| {
        while *i < b.len() && b[*i].is_ascii_whitespace() {
            *i += 1;
        }
    };
    if !b.get(i).is_some_and(|c| c.is_ascii_whitespace()) {
        return None;
    }
    skip_ws(&mut i);
    if b.get(i) != Some(&b'i') {
        return None;
    }
    i += 1;
    skip_ws(&mut i);
    if b.get(i) != Some(&b'=') {
        return None;
    }
    i += 1;
    skip_ws(&mut i);
    let quote = *b.get(i)?;
    if quote != b'"' && quote != b'\'' {
        return None;
    }
    i += 1;
    let start = i;
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    let id: usize = s.get(start..i)?.parse().ok()?;
    if b.get(i) != Some(&quote) {
        return None;
    }
    i += 1;
    skip_ws(&mut i);
    match (b.get(i), b.get(i + 1)) {
        (Some(b'/'), Some(b'>')) => Some((id, i + 2, true)),
        (Some(b'>'), _) => Some((id, i + 1, false)),
        _ => None,
    }
}

fn unescape(s: &str) -> String {
    if !s.contains('&') {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(p) = rest.find('&') {
        out.push_str(&rest[..p]);
        rest = &rest[p..];
        let end = rest.find(';').filter(|e| *e <= 10);
        let decoded = end.and_then(|e| {
            let ent = &rest[1..e];
            let c = match ent {
                "amp" => Some('&'),
                "lt" => Some('<'),
                "gt" => Some('>'),
                "quot" => Some('"'),
                "apos" => Some('\''),
                _ if ent.starts_with("#x") || ent.starts_with("#X") => {
                    u32::from_str_radix(&ent[2..], 16)
                        .ok()
                        .and_then(char::from_u32)
                }
                _ if ent.starts_with('#') => ent[1..].parse().ok().and_then(char::from_u32),
                _ => None,
            };
            c.map(|c| (c, e + 1))
        });
        match decoded {
            Some((c, len)) => {
                out.push(c);
                rest = &rest[len..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Put the glossary's target terms back into a provider's output and unescape it.
pub fn restore(output: &str, restores: &[String]) -> Result<String, RestoreError> {
    let mut seen = vec![false; restores.len()];
    let mut out = String::with_capacity(output.len());
    let mut rest = output;
    while let Some(p) = rest.find("<x") {
        out.push_str(&unescape(&rest[..p]));
        let tail = &rest[p..];
        let Some((id, tag_len, self_closing)) = open_tag(tail) else {
            return Err(RestoreError::Malformed);
        };
        let term = restores.get(id).ok_or(RestoreError::Malformed)?;
        if std::mem::replace(&mut seen[id], true) {
            return Err(RestoreError::Duplicated(id));
        }
        out.push_str(term);
        let after = &tail[tag_len..];
        rest = if self_closing {
            after
        } else {
            let close = after.find("</x>").ok_or(RestoreError::Malformed)?;
            &after[close + 4..]
        };
    }
    if rest.contains("</x>") {
        return Err(RestoreError::Malformed);
    }
    out.push_str(&unescape(rest));
    if let Some(i) = seen.iter().position(|s| !s) {
        return Err(RestoreError::Missing(i));
    }
    Ok(out)
}

/// Where glossaries are kept.
#[async_trait]
pub trait GlossaryStore: Send + Sync + 'static {
    /// Every glossary.
    async fn load_all(&self) -> Result<Vec<Glossary>, GlossaryError>;
    /// Store `g` with a new version (returned), greater than every earlier one.
    async fn save(&self, g: Glossary) -> Result<Glossary, GlossaryError>;
    async fn delete(&self, id: &str) -> Result<bool, GlossaryError>;
    /// A counter that changes whenever any glossary changes (nodes poll it).
    async fn change_counter(&self) -> Result<u64, GlossaryError>;
}

/// Embedded engine: glossaries in memory, saved to a JSON file (written to a temporary file,
/// fsynced and renamed over the old one) when a path is set.
pub struct FileGlossaryStore {
    path: Option<PathBuf>,
    state: tokio::sync::Mutex<(u64, BTreeMap<String, Glossary>)>,
}

#[derive(Serialize, Deserialize, Default)]
struct FileContents {
    version: u64,
    glossaries: Vec<Glossary>,
}

impl FileGlossaryStore {
    /// Open (or start) the file at `path`; `None` keeps glossaries in memory only.
    pub fn open(path: Option<PathBuf>) -> Result<FileGlossaryStore, String> {
        let mut contents = FileContents::default();
        if let Some(p) = &path {
            match std::fs::read(p) {
                Ok(bytes) => {
                    contents = serde_json::from_slice(&bytes)
                        .map_err(|e| format!("{}: {e}", p.display()))?;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(format!("{}: {e}", p.display())),
            }
        }
        let map = contents
            .glossaries
            .into_iter()
            .map(|g| (g.id.clone(), g))
            .collect();
        Ok(FileGlossaryStore {
            path,
            state: tokio::sync::Mutex::new((contents.version, map)),
        })
    }

    async fn persist(
        &self,
        version: u64,
        map: &BTreeMap<String, Glossary>,
    ) -> Result<(), GlossaryError> {
        let Some(path) = self.path.clone() else {
            return Ok(());
        };
        let contents = FileContents {
            version,
            glossaries: map.values().cloned().collect(),
        };
        let bytes = serde_json::to_vec_pretty(&contents)
            .map_err(|e| GlossaryError::Unavailable(e.to_string()))?;
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            use std::io::Write;
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            let tmp = path.with_extension("json.tmp");
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
        })
        .await
        .map_err(|e| GlossaryError::Unavailable(e.to_string()))?
        .map_err(|e| GlossaryError::Unavailable(e.to_string()))
    }
}

#[async_trait]
impl GlossaryStore for FileGlossaryStore {
    async fn load_all(&self) -> Result<Vec<Glossary>, GlossaryError> {
        Ok(self.state.lock().await.1.values().cloned().collect())
    }

    async fn save(&self, mut g: Glossary) -> Result<Glossary, GlossaryError> {
        let mut st = self.state.lock().await;
        let version = st.0 + 1;
        g.version = version;
        let mut map = st.1.clone();
        map.insert(g.id.clone(), g.clone());
        self.persist(version, &map).await?;
        *st = (version, map);
        Ok(g)
    }

    async fn delete(&self, id: &str) -> Result<bool, GlossaryError> {
        let mut st = self.state.lock().await;
        if !st.1.contains_key(id) {
            return Ok(false);
        }
        let version = st.0 + 1;
        let mut map = st.1.clone();
        map.remove(id);
        self.persist(version, &map).await?;
        *st = (version, map);
        Ok(true)
    }

    async fn change_counter(&self) -> Result<u64, GlossaryError> {
        Ok(self.state.lock().await.0)
    }
}

/// Redis engine: `<prefix>:glossaries` HASH id → JSON and `<prefix>:glossaries:version`, a
/// counter incremented (in the same script) by every change; it is also the new version.
pub struct RedisGlossaryStore {
    conn: crate::redis_conn::RedisConn,
    hash: String,
    counter: String,
}

const SAVE: &str = r#"
-- KEYS: hash counter ; ARGV: id json_without_version
local v = redis.call('INCR', KEYS[2])
local g = cjson.decode(ARGV[2])
g['version'] = v
local json = cjson.encode(g)
redis.call('HSET', KEYS[1], ARGV[1], json)
return json
"#;

const DELETE: &str = r#"
-- KEYS: hash counter ; ARGV: id
if redis.call('HDEL', KEYS[1], ARGV[1]) == 1 then redis.call('INCR', KEYS[2]) return 1 end
return 0
"#;

impl RedisGlossaryStore {
    /// Both keys share the `{glossaries}` hash tag (one slot on a cluster).
    pub fn new(conn: crate::redis_conn::RedisConn, prefix: &str) -> Self {
        Self {
            conn,
            hash: format!("{prefix}:{{glossaries}}:all"),
            counter: format!("{prefix}:{{glossaries}}:version"),
        }
    }
}

fn unavailable(e: redis::RedisError) -> GlossaryError {
    GlossaryError::Unavailable(e.to_string())
}

#[async_trait]
impl GlossaryStore for RedisGlossaryStore {
    async fn load_all(&self) -> Result<Vec<Glossary>, GlossaryError> {
        let all: HashMap<String, String> = self
            .conn
            .clone()
            .cmd(redis::cmd("HGETALL").arg(&self.hash))
            .await
            .map_err(unavailable)?;
        Ok(all
            .values()
            .filter_map(|j| serde_json::from_str(j).ok())
            .collect())
    }

    async fn save(&self, g: Glossary) -> Result<Glossary, GlossaryError> {
        let json = serde_json::to_string(&g).map_err(|e| GlossaryError::Invalid(e.to_string()))?;
        let script = redis::Script::new(SAVE);
        let stored: String = self
            .conn
            .clone()
            .script(
                &script,
                &[self.hash.clone(), self.counter.clone()],
                &[g.id.clone(), json],
            )
            .await
            .map_err(unavailable)?;
        serde_json::from_str(&stored).map_err(|e| GlossaryError::Unavailable(e.to_string()))
    }

    async fn delete(&self, id: &str) -> Result<bool, GlossaryError> {
        let script = redis::Script::new(DELETE);
        let n: i64 = self
            .conn
            .clone()
            .script(
                &script,
                &[self.hash.clone(), self.counter.clone()],
                &[id.to_owned()],
            )
            .await
            .map_err(unavailable)?;
        Ok(n == 1)
    }

    async fn change_counter(&self) -> Result<u64, GlossaryError> {
        let v: Option<u64> = self
            .conn
            .clone()
            .cmd(redis::cmd("GET").arg(&self.counter))
            .await
            .map_err(unavailable)?;
        Ok(v.unwrap_or(0))
    }
}

/// This node's compiled glossaries, refreshed from the store.
pub struct Glossaries {
    store: Arc<dyn GlossaryStore>,
    index: RwLock<(u64, Vec<Arc<Compiled>>)>,
    max_terms: usize,
}

impl Glossaries {
    pub async fn new(
        store: Arc<dyn GlossaryStore>,
        max_terms: usize,
    ) -> Result<Arc<Self>, GlossaryError> {
        let g = Arc::new(Glossaries {
            store,
            index: RwLock::new((0, Vec::new())),
            max_terms,
        });
        g.reload().await?;
        Ok(g)
    }

    /// Re-read every glossary from the store.
    pub async fn reload(&self) -> Result<(), GlossaryError> {
        let counter = self.store.change_counter().await?;
        let all = self.store.load_all().await?;
        let compiled: Vec<Arc<Compiled>> = all
            .into_iter()
            .map(|g| Arc::new(Compiled::new(g)))
            .collect();
        *self.index.write() = (counter, compiled);
        Ok(())
    }

    /// Reload when another node changed a glossary (cheap when nothing changed).
    pub async fn refresh(&self) -> Result<(), GlossaryError> {
        let counter = self.store.change_counter().await?;
        if counter != self.index.read().0 {
            self.reload().await?;
        }
        Ok(())
    }

    pub fn get(&self, id: &str) -> Option<Arc<Compiled>> {
        self.index.read().1.iter().find(|g| g.id() == id).cloned()
    }

    pub fn list(&self) -> Vec<Glossary> {
        self.index
            .read()
            .1
            .iter()
            .map(|g| g.glossary.clone())
            .collect()
    }

    /// The glossary for `room`: the one with the longest room pattern matching it.
    pub fn for_room(&self, room: &str) -> Option<Arc<Compiled>> {
        let idx = self.index.read();
        let mut best: Option<(usize, &Arc<Compiled>)> = None;
        for g in &idx.1 {
            for p in &g.glossary.rooms {
                if crate::auth::glob_match(p.as_bytes(), room.as_bytes()) {
                    let better = match best {
                        None => true,
                        Some((len, b)) => p.len() > len || (p.len() == len && g.id() < b.id()),
                    };
                    if better {
                        best = Some((p.len(), g));
                    }
                }
            }
        }
        best.map(|(_, g)| g.clone())
    }

    /// Create or replace a glossary (validated; the version is assigned by the store).
    pub async fn put(&self, g: Glossary) -> Result<Glossary, GlossaryError> {
        g.validate(self.max_terms)?;
        let saved = self.store.save(g).await?;
        self.reload().await?;
        Ok(saved)
    }

    pub async fn delete(&self, id: &str) -> Result<bool, GlossaryError> {
        let deleted = self.store.delete(id).await?;
        self.reload().await?;
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basket() -> Compiled {
        Compiled::new(Glossary {
            id: "m1".into(),
            owner: "m1".into(),
            version: 3,
            rooms: vec!["shop-*".into()],
            terms: vec![
                [
                    ("zh".to_owned(), "藤编篮".to_owned()),
                    ("en".to_owned(), "rattan basket".to_owned()),
                    ("es".to_owned(), "cesta de ratán".to_owned()),
                ]
                .into(),
                [
                    ("zh".to_owned(), "青花瓷".to_owned()),
                    ("en".to_owned(), "Blue & White porcelain".to_owned()),
                ]
                .into(),
                [
                    ("en".to_owned(), "cat".to_owned()),
                    ("zh".to_owned(), "猫".to_owned()),
                ]
                .into(),
            ],
        })
    }

    #[test]
    fn terms_become_placeholders_and_come_back_exactly() {
        let g = basket();
        let p = protect("这个藤编篮和青花瓷 <b>多少钱</b>?", "zh", "en", Some(&g));
        assert_eq!(
            p.markup,
            "这个<x i=\"0\">rattan basket</x>和<x i=\"1\">Blue &amp; White porcelain</x> &lt;b&gt;多少钱&lt;/b&gt;?"
        );
        assert!(!p.only_terms);
        // A provider moved and rewrote the placeholders and escaped text: terms come back
        // exactly, markup of the user's own text is unescaped.
        let out = "How much is <x i='1'>porcelana</x> and <x i=\"0\"/> &lt;b&gt;?";
        assert_eq!(
            restore(out, &p.restores).expect("restores"),
            "How much is Blue & White porcelain and rattan basket <b>?"
        );
        assert_eq!(
            restore("How much?", &p.restores),
            Err(RestoreError::Missing(0))
        );
        assert_eq!(
            restore(
                "<x i=\"0\">a</x><x i=\"0\">b</x><x i=\"1\">c</x>",
                &p.restores
            ),
            Err(RestoreError::Duplicated(0))
        );
        assert_eq!(
            restore("<x i=\"7\">a</x>", &p.restores),
            Err(RestoreError::Malformed)
        );
    }

    #[test]
    fn a_text_of_terms_needs_no_provider_and_words_are_whole() {
        let g = basket();
        let p = protect("藤编篮!!", "zh", "es", Some(&g));
        assert!(p.only_terms);
        assert_eq!(p.substituted, "cesta de ratán!!");
        let p = protect("Rattan Basket?", "en", "zh", Some(&g));
        assert_eq!(p.substituted, "藤编篮?");
        let p = protect("category of cat toys", "en", "zh", Some(&g));
        assert_eq!(p.restores, vec!["猫".to_owned()]);
        assert_eq!(p.substituted, "category of 猫 toys");
        // No target text in the glossary for this language: left alone.
        let p = protect("青花瓷", "zh", "es", Some(&g));
        assert!(p.restores.is_empty());
    }

    #[test]
    fn glossaries_validate() {
        let mut g = basket().glossary;
        assert!(g.validate(10).is_ok());
        g.terms.push([("en".to_owned(), "x".to_owned())].into());
        assert!(g.validate(10).is_err());
        g.terms.pop();
        g.id = "bad id".into();
        assert!(g.validate(10).is_err());
    }
}
