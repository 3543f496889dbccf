//! Per-market moderation ("traffic light"), sans-IO. Each market has a rule set (one TOML
//! file per market in `moderation.markets_dir`, or the set shipped in `config/markets/`
//! compiled into the binary); each rule has a severity (red, yellow), the uses it applies to
//! (comments, product listings), its terms in any language, and optional exception phrases.
//!
//! All terms of all markets are folded ([`fold`]) and compiled into **one** Aho-Corasick
//! automaton; a text is folded once and scanned once, and each hit is mapped back to the
//! (market, rule) pairs that own the term. A check names the markets that apply; the verdict
//! is the most severe rule hit among them (red > yellow > green). Terms made only of ASCII
//! letters must stand as words in the source text (`gin` does not match `begin`, but does
//! match `g i n`); other terms (Chinese, Japanese, Arabic) match anywhere, and a rule's
//! `except` phrases mask hits they contain (`酒店`, hotel, is not alcohol).
//!
//! It must not know about rooms, sockets or configuration files beyond parsing the rule text.

pub mod fold;

use aho_corasick::automaton::Automaton;
use aho_corasick::{dfa, nfa, AhoCorasick, AhoCorasickBuilder, Anchored, MatchKind};
use ferry_client::protocol::translation::{RuleRef, Severity};
use fold::Folded;
use serde::Deserialize;
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// What a text is being checked as.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Usage {
    /// Comments and announcements in a room.
    Comments,
    /// Product titles and descriptions enabled for a market.
    Listings,
}

/// One market's rule file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MarketFile {
    /// Market code (`ae`, `us`...), as in tokens' `market` claim.
    pub market: String,
    /// Human-readable market name.
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub rules: Vec<RuleSpec>,
}

/// One rule as written in a market file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    pub id: String,
    #[serde(default)]
    pub label: String,
    pub severity: Severity,
    /// Default: both.
    #[serde(default = "both_uses")]
    pub applies: Vec<Usage>,
    pub terms: Vec<String>,
    /// Phrases that contain a term but are fine (`酒店` for `酒`).
    #[serde(default)]
    pub except: Vec<String>,
}

fn both_uses() -> Vec<Usage> {
    vec![Usage::Comments, Usage::Listings]
}

/// Why rule files could not be loaded. Each names the file (and the rule) at fault.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("cannot read {path}: {message}")]
    Read { path: String, message: String },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

/// The rule sets shipped in `config/markets/`, compiled in (used when
/// `moderation.markets_dir` is empty).
pub const BUILTIN_MARKETS: &[(&str, &str)] = &[
    ("ae.toml", include_str!("../../config/markets/ae.toml")),
    ("sa.toml", include_str!("../../config/markets/sa.toml")),
    ("us.toml", include_str!("../../config/markets/us.toml")),
    ("hk.toml", include_str!("../../config/markets/hk.toml")),
    ("mo.toml", include_str!("../../config/markets/mo.toml")),
];

/// Parse market files `(file name, TOML text)`.
pub fn parse_markets<'a>(
    files: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<Vec<MarketFile>, RulesError> {
    let mut out: Vec<MarketFile> = Vec::new();
    for (path, text) in files {
        let file: MarketFile = toml::from_str(text).map_err(|e| RulesError::Invalid {
            path: path.to_owned(),
            message: e.message().to_owned(),
        })?;
        let bad = |message: String| RulesError::Invalid {
            path: path.to_owned(),
            message,
        };
        if file.market.is_empty() || !file.market.bytes().all(|b| b.is_ascii_lowercase()) {
            return Err(bad(format!(
                "market code `{}` must be lowercase letters",
                file.market
            )));
        }
        if out.iter().any(|m| m.market == file.market) {
            return Err(bad(format!("market `{}` is defined twice", file.market)));
        }
        for r in &file.rules {
            if r.id.is_empty() {
                return Err(bad("a rule has an empty id".into()));
            }
            if r.severity == Severity::Green {
                return Err(bad(format!(
                    "rule `{}`: severity must be red or yellow",
                    r.id
                )));
            }
            if let Some(t) = r.terms.iter().find(|t| Folded::of(t).bytes().is_empty()) {
                return Err(bad(format!(
                    "rule `{}`: term {t:?} has no letters or digits",
                    r.id
                )));
            }
        }
        out.push(file);
    }
    Ok(out)
}

/// Read every `*.toml` of `dir` as a market file.
pub fn load_markets_dir(dir: &Path) -> Result<Vec<MarketFile>, RulesError> {
    let read_err = |message: String| RulesError::Read {
        path: dir.display().to_string(),
        message,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| read_err(e.to_string()))? {
        let path = entry.map_err(|e| read_err(e.to_string()))?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).map_err(|e| RulesError::Read {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        files.push((path.display().to_string(), text));
    }
    files.sort();
    parse_markets(files.iter().map(|(p, t)| (p.as_str(), t.as_str())))
}

/// A compiled rule.
#[derive(Clone, Debug)]
struct Rule {
    market: usize,
    id: String,
    label: String,
    severity: Severity,
    comments: bool,
    listings: bool,
}

/// Who owns a pattern of the automaton.
#[derive(Clone, Debug)]
struct Owner {
    rule: usize,
    /// The term must stand as a word in the source.
    word: bool,
}

/// The verdict on one text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub severity: Severity,
    /// The most severe rule hit (the first such, by market then rule order).
    pub rule: Option<RuleRef>,
}

impl Verdict {
    pub fn green() -> Verdict {
        Verdict {
            severity: Severity::Green,
            rule: None,
        }
    }
}

/// A set of markets, resolved once for many checks ([`Moderator::market_set`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MarketSet {
    bits: Vec<u64>,
}

impl MarketSet {
    #[inline]
    fn contains(&self, market: usize) -> bool {
        self.bits
            .get(market / 64)
            .is_some_and(|w| w & (1 << (market % 64)) != 0)
    }

    pub fn is_empty(&self) -> bool {
        self.bits.iter().all(|w| *w == 0)
    }
}

/// Every market's rules, compiled.
#[derive(Debug)]
pub struct Moderator {
    markets: Vec<String>,
    market_index: HashMap<String, usize>,
    rules: Vec<Rule>,
    terms: Option<Terms>,
    /// Per pattern of `terms`: the rules that own it.
    owners: Vec<Vec<Owner>>,
    excepts: Option<AhoCorasick>,
    /// Per pattern of `excepts`: the rules it masks.
    except_rules: Vec<Vec<usize>>,
    /// Per rule: whether it has exception phrases.
    has_except: Vec<bool>,
}

/// Every term of every market as one automaton (standard semantics: each state knows every
/// term ending there, so one pass sees overlapping hits). Driven directly through the
/// [`Automaton`] trait: one table step per folded byte, no iterator or per-call search setup.
#[derive(Debug)]
enum Terms {
    /// A full DFA: fastest, the usual case.
    Dfa(dfa::DFA),
    /// When the DFA would exceed its size limit: a little slower, much smaller.
    Nfa(nfa::contiguous::NFA),
}

thread_local! {
    static SCRATCH: RefCell<Folded> = RefCell::new(Folded::default());
}

impl Moderator {
    /// Compile `markets`.
    pub fn new(markets: &[MarketFile]) -> Result<Moderator, RulesError> {
        Self::build(markets, true)
    }

    /// [`Self::new`]; `dfa: false` takes the NFA fallback at once (so tests cover it).
    fn build(markets: &[MarketFile], dfa: bool) -> Result<Moderator, RulesError> {
        let mut names = Vec::new();
        let mut market_index = HashMap::new();
        let mut rules = Vec::new();
        let mut patterns: Vec<String> = Vec::new();
        let mut pattern_index: HashMap<String, usize> = HashMap::new();
        let mut owners: Vec<Vec<Owner>> = Vec::new();
        let mut except_patterns: Vec<String> = Vec::new();
        let mut except_index: HashMap<String, usize> = HashMap::new();
        let mut except_rules: Vec<Vec<usize>> = Vec::new();
        for m in markets {
            let mi = names.len();
            names.push(m.market.clone());
            market_index.insert(m.market.clone(), mi);
            for spec in &m.rules {
                let ri = rules.len();
                rules.push(Rule {
                    market: mi,
                    id: spec.id.clone(),
                    label: spec.label.clone(),
                    severity: spec.severity,
                    comments: spec.applies.contains(&Usage::Comments),
                    listings: spec.applies.contains(&Usage::Listings),
                });
                for term in &spec.terms {
                    let folded = Folded::of(term).text();
                    if folded.is_empty() {
                        continue;
                    }
                    let word = term
                        .trim()
                        .chars()
                        .all(|c| c.is_ascii_alphabetic() || c == ' ');
                    let pi = *pattern_index.entry(folded.clone()).or_insert_with(|| {
                        patterns.push(folded);
                        owners.push(Vec::new());
                        patterns.len() - 1
                    });
                    owners[pi].push(Owner { rule: ri, word });
                }
                for phrase in &spec.except {
                    let folded = Folded::of(phrase).text();
                    if folded.is_empty() {
                        continue;
                    }
                    let pi = *except_index.entry(folded.clone()).or_insert_with(|| {
                        except_patterns.push(folded);
                        except_rules.push(Vec::new());
                        except_patterns.len() - 1
                    });
                    except_rules[pi].push(ri);
                }
            }
        }
        let invalid = |e: aho_corasick::BuildError| RulesError::Invalid {
            path: "<rules>".into(),
            message: e.to_string(),
        };
        let terms = if patterns.is_empty() {
            None
        } else {
            let built = if dfa {
                dfa::DFA::builder()
                    .match_kind(MatchKind::Standard)
                    .build(&patterns)
                    .ok()
            } else {
                None
            };
            Some(match built {
                Some(d) => Terms::Dfa(d),
                None => Terms::Nfa(
                    nfa::contiguous::NFA::builder()
                        .match_kind(MatchKind::Standard)
                        .build(&patterns)
                        .map_err(invalid)?,
                ),
            })
        };
        let excepts = if except_patterns.is_empty() {
            None
        } else {
            Some(
                AhoCorasickBuilder::new()
                    .match_kind(MatchKind::Standard)
                    .build(&except_patterns)
                    .map_err(invalid)?,
            )
        };
        let mut has_except = vec![false; rules.len()];
        for rs in &except_rules {
            for r in rs {
                has_except[*r] = true;
            }
        }
        Ok(Moderator {
            has_except,
            terms,
            excepts,
            markets: names,
            market_index,
            rules,
            owners,
            except_rules,
        })
    }

    /// The markets that have rule sets.
    pub fn markets(&self) -> &[String] {
        &self.markets
    }

    /// Number of compiled rules.
    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    /// Resolve market codes (unknown ones have no rules) into a set for [`Self::check_set`].
    pub fn market_set<'a>(&self, markets: impl IntoIterator<Item = &'a str>) -> MarketSet {
        let mut bits = vec![0u64; self.markets.len().div_ceil(64)];
        for m in markets {
            if let Some(&i) = self.market_index.get(m) {
                bits[i / 64] |= 1 << (i % 64);
            }
        }
        MarketSet { bits }
    }

    /// Check `text` as `usage` against the rules of `markets` (unknown markets have no rules).
    pub fn check<'a>(
        &self,
        text: &str,
        markets: impl IntoIterator<Item = &'a str>,
        usage: Usage,
    ) -> Verdict {
        self.check_set(text, &self.market_set(markets), usage)
    }

    /// [`Self::check`] with the markets already resolved.
    pub fn check_set(&self, text: &str, markets: &MarketSet, usage: Usage) -> Verdict {
        let Some(terms) = self.terms.as_ref().filter(|_| !markets.is_empty()) else {
            return Verdict::green();
        };
        SCRATCH.with(|cell| {
            let mut folded = cell.borrow_mut();
            folded.fold_into(text);
            let best = match terms {
                Terms::Dfa(a) => self.scan(a, &folded, markets, usage),
                Terms::Nfa(a) => self.scan(a, &folded, markets, usage),
            };
            match best {
                None => Verdict::green(),
                Some(ri) => {
                    let r = &self.rules[ri];
                    Verdict {
                        severity: r.severity,
                        rule: Some(RuleRef {
                            market: self.markets[r.market].clone(),
                            rule: r.id.clone(),
                            severity: r.severity,
                            label: r.label.clone(),
                        }),
                    }
                }
            }
        })
    }

    /// One pass of `aut` over the folded text: the most severe rule hit (stopping at the
    /// first red). A state that is not a match state costs one table step; only at a match
    /// are the term's owners, word boundaries and exceptions looked at.
    #[inline]
    fn scan<A: Automaton>(
        &self,
        aut: &A,
        folded: &Folded,
        markets: &MarketSet,
        usage: Usage,
    ) -> Option<usize> {
        let ftext = folded.bytes();
        // An unanchored start state exists for every automaton built here (the builders'
        // default start kind is unanchored); without one there is nothing to find.
        let mut sid = aut.start_state(Anchored::No).ok()?;
        let mut best: Option<usize> = None;
        let mut masks: Option<Vec<(usize, usize, usize)>> = None;
        for (at, &byte) in ftext.iter().enumerate() {
            sid = aut.next_state(Anchored::No, sid, byte);
            if !aut.is_special(sid) || !aut.is_match(sid) {
                continue;
            }
            let end = at + 1;
            for k in 0..aut.match_len(sid) {
                let pattern = aut.match_pattern(sid, k);
                let start = end - aut.pattern_len(pattern);
                for owner in &self.owners[pattern.as_usize()] {
                    let rule = &self.rules[owner.rule];
                    let applies = match usage {
                        Usage::Comments => rule.comments,
                        Usage::Listings => rule.listings,
                    };
                    if !applies || !markets.contains(rule.market) {
                        continue;
                    }
                    if best.is_some_and(|b| self.rules[b].severity >= rule.severity) {
                        continue;
                    }
                    if owner.word && !folded.is_word_at(start, end) {
                        continue;
                    }
                    let masked = self.has_except[owner.rule] && {
                        let masks = masks.get_or_insert_with(|| self.except_spans(ftext));
                        masks
                            .iter()
                            .any(|&(s, e, r)| r == owner.rule && s <= start && end <= e)
                    };
                    if !masked {
                        best = Some(owner.rule);
                        if rule.severity == Severity::Red {
                            // Nothing is more severe: stop scanning.
                            return best;
                        }
                    }
                }
            }
        }
        best
    }

    /// `(start, end, rule)` of every exception phrase in the folded text.
    fn except_spans(&self, folded: &[u8]) -> Vec<(usize, usize, usize)> {
        let Some(ac) = &self.excepts else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for m in ac.find_overlapping_iter(folded) {
            for &r in &self.except_rules[m.pattern().as_usize()] {
                out.push((m.start(), m.end(), r));
            }
        }
        out
    }

    /// Every market's verdict on `text` as `usage` (markets without hits are green).
    pub fn check_each(&self, text: &str, usage: Usage) -> BTreeMap<String, Verdict> {
        self.markets
            .iter()
            .map(|m| (m.clone(), self.check(text, [m.as_str()], usage)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped() -> Moderator {
        let files = parse_markets(BUILTIN_MARKETS.iter().copied()).expect("shipped rules parse");
        Moderator::new(&files).expect("compile")
    }

    fn severity(m: &Moderator, text: &str, market: &str) -> Severity {
        m.check(text, [market], Usage::Comments).severity
    }

    #[test]
    fn shipped_rule_sets_cover_the_markets() {
        let m = shipped();
        for market in ["ae", "sa", "us", "hk", "mo"] {
            assert!(m.markets().iter().any(|x| x == market), "{market}");
        }
    }

    #[test]
    fn middle_east_blocks_pork_and_alcohol_in_every_disguise() {
        let m = shipped();
        for text in [
            "Is this pork?",
            "PORK belly please",
            "ｐｏｒｋ",
            "p o r k",
            "P.o.R.k",
            "poooork",
            "豬肉",
            "猪肉干",
            "猪 肉",
            "bacon",
            "b a c o n",
            "we love wine",
            "Ｗｉｎｅ",
            "w-i-n-e",
            "啤酒",
            "葡萄酒",
            "紅酒",
            "ビール",
            "cerveza fría",
        ] {
            let v = m.check(text, ["ae"], Usage::Comments);
            assert_eq!(v.severity, Severity::Red, "{text}");
            assert_eq!(v.rule.as_ref().map(|r| r.market.as_str()), Some("ae"));
            assert_eq!(severity(&m, text, "us"), Severity::Green, "{text} in us");
        }
    }

    #[test]
    fn words_inside_other_words_and_exceptions_pass() {
        let m = shipped();
        for text in [
            "we begin at nine",
            "login to order",
            "the hamster toy",
            "酒店 delivery address",
            "twine basket",
            "how much is the rattan basket?",
            "藤编篮多少钱",
        ] {
            assert_eq!(severity(&m, text, "ae"), Severity::Green, "{text}");
        }
    }

    #[test]
    fn yellow_terms_hold_and_the_most_severe_rule_wins() {
        let m = shipped();
        let v = m.check("any lottery tickets?", ["ae"], Usage::Comments);
        assert_eq!(v.severity, Severity::Yellow);
        let v = m.check("lottery and beer", ["ae"], Usage::Comments);
        assert_eq!(v.severity, Severity::Red);
        assert_eq!(v.rule.map(|r| r.rule), Some("alcohol".into()));
        // Several markets: the strictest applies.
        let v = m.check("beer", ["us", "ae"], Usage::Comments);
        assert_eq!(v.severity, Severity::Red);
    }

    /// The automaton scan against brute force: for random texts and a rule set with many
    /// short, overlapping terms, the verdict's severity equals the most severe rule any of
    /// whose terms occurs (folded) at an allowed place.
    #[test]
    fn the_scan_finds_what_brute_force_finds() {
        let mut rng = fold::tests::Rng(0x9E37_79B9_7F4A_7C15);
        let letters: Vec<char> = "abcdeo猪肉酒店".chars().collect();
        let mut text = String::from("market = \"xx\"\n");
        let mut specs: Vec<(Severity, Vec<String>, Vec<String>)> = Vec::new();
        for i in 0..60 {
            let term: String = (0..2 + rng.below(2))
                .map(|_| letters[rng.below(letters.len())])
                .collect();
            let except: Vec<String> = if i % 7 == 0 {
                vec![format!("{term}{}", letters[rng.below(letters.len())])]
            } else {
                Vec::new()
            };
            let severity = if i % 3 == 0 {
                Severity::Red
            } else {
                Severity::Yellow
            };
            text.push_str(&format!(
                "[[rules]]\nid = \"r{i}\"\nseverity = \"{}\"\nterms = [\"{term}\"]\nexcept = {except:?}\n",
                if severity == Severity::Red { "red" } else { "yellow" },
            ));
            specs.push((severity, vec![term], except));
        }
        let files = parse_markets([("xx.toml", text.as_str())]).expect("parses");
        // The DFA (the usual case) and the NFA fallback (rule sets too big for a DFA).
        let automata = [
            Moderator::new(&files).expect("compiles"),
            Moderator::build(&files, false).expect("compiles as an NFA"),
        ];
        assert!(matches!(automata[0].terms, Some(Terms::Dfa(_))));
        assert!(matches!(automata[1].terms, Some(Terms::Nfa(_))));
        let noise = [" ", ".", "-", "Ｏ", "A", "B", "0", "x", "y"];
        for _ in 0..3000 {
            let t: String = (0..1 + rng.below(12))
                .map(|_| {
                    if rng.below(3) == 0 {
                        noise[rng.below(noise.len())].to_string()
                    } else {
                        letters[rng.below(letters.len())].to_string()
                    }
                })
                .collect();
            let f = Folded::of(&t);
            let ftext = f.bytes();
            let mut expected = Severity::Green;
            for (severity, terms, except) in &specs {
                for term in terms {
                    let ft = Folded::of(term);
                    let needle = ft.bytes();
                    let word = term.chars().all(|c| c.is_ascii_alphabetic());
                    let excepts: Vec<(usize, usize)> = except
                        .iter()
                        .flat_map(|e| {
                            let fe = Folded::of(e);
                            let e = fe.bytes().to_vec();
                            (0..=ftext.len().saturating_sub(e.len()))
                                .filter(|&s| ftext[s..].starts_with(&e))
                                .map(|s| (s, s + e.len()))
                                .collect::<Vec<_>>()
                        })
                        .collect();
                    for start in 0..=ftext.len().saturating_sub(needle.len()) {
                        let end = start + needle.len();
                        if !ftext[start..].starts_with(needle)
                            || (word && !f.is_word_at(start, end))
                            || excepts.iter().any(|&(s, e)| s <= start && end <= e)
                        {
                            continue;
                        }
                        expected = expected.max(*severity);
                    }
                }
            }
            for m in &automata {
                assert_eq!(
                    m.check(&t, ["xx"], Usage::Comments).severity,
                    expected,
                    "{t:?} folded {:?}",
                    f.text()
                );
            }
        }
    }

    #[test]
    fn listings_and_comments_use_their_rules() {
        let files = parse_markets([(
            "x.toml",
            r#"
market = "xx"
[[rules]]
id = "only-listings"
severity = "red"
applies = ["listings"]
terms = ["widget"]
"#,
        )])
        .expect("parses");
        let m = Moderator::new(&files).expect("compiles");
        assert_eq!(
            m.check("widget", ["xx"], Usage::Comments).severity,
            Severity::Green
        );
        assert_eq!(
            m.check("widget", ["xx"], Usage::Listings).severity,
            Severity::Red
        );
    }

    #[test]
    fn bad_rule_files_are_named() {
        let err = parse_markets([(
            "bad.toml",
            "market = \"ae\"\n[[rules]]\nid=\"x\"\nseverity=\"green\"\nterms=[\"a\"]",
        )])
        .expect_err("green is not a rule");
        assert!(err.to_string().contains("bad.toml"), "{err}");
        let err = parse_markets([("u.toml", "market = \"ae\"\nnope = 1")]).expect_err("unknown");
        assert!(err.to_string().contains("nope"), "{err}");
    }
}
