//! Moderation throughput on a 10,000-rule set, one core: MB of chat text per second checked
//! by `Moderator::check` (fold: NFKC, case, width, noise, repeats, traditional Chinese; one
//! Aho-Corasick scan over every market's terms; word-boundary and exception checks on hits),
//! against two baselines measured in the same run on the same text: the fold alone, and a
//! raw Aho-Corasick scan of the unfolded text with the same patterns (no obfuscation
//! handling at all).
//!
//! ```text
//! cargo run --release --example moderation_bench -- [RULES] [MEGABYTES]
//! ```
//!
//! The rule set: the shipped market files plus RULES generated rules spread over 20 markets,
//! each with one term — Latin words of 4–10 letters and Chinese terms of 2–4 characters
//! from the common range — half red, half yellow. The text: realistic livestream comments in
//! English, Chinese, Spanish and Japanese (a few percent containing a shipped term, some
//! obfuscated), repeated to MEGABYTES.

use aho_corasick::{AhoCorasickBuilder, AhoCorasickKind, MatchKind};
use ferry::moderation::fold::Folded;
use ferry::moderation::{parse_markets, MarketFile, Moderator, RuleSpec, Usage, BUILTIN_MARKETS};
use ferry_client::protocol::translation::Severity;
use std::time::Instant;

const COMMENTS: &[&str] = &[
    "How much is the rattan basket? Do you ship to Texas?",
    "这个藤编篮多少钱？能寄到美国吗",
    "¿Cuánto cuesta la cesta? ¿Hay envío a México?",
    "いくらですか？アメリカに発送できますか",
    "love the colour!! is there a bigger size",
    "主播这个颜色好好看，有没有大号的",
    "link please 🙏🙏",
    "what material is it made of? real leather?",
    "我买了两个，什么时候发货",
    "so cute 😍 my daughter would love it",
    "P O R K buns next??",
    "有没有猪肉干",
    "¿tienes en rojo? talla M por favor",
    "ｗｉｎｅ glasses set?",
    "the hamster toy is adorable, begin the sale!",
    "在庫ありますか？色違いはありますか",
];

/// A deterministic pseudo-random generator (xorshift), so runs are comparable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn generated_rules(count: usize) -> Vec<MarketFile> {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut markets: Vec<MarketFile> = (0..20)
        .map(|i| MarketFile {
            market: format!("g{}", (b'a' + i as u8) as char),
            name: String::new(),
            rules: Vec::new(),
        })
        .collect();
    for i in 0..count {
        let term: String = if i % 2 == 0 {
            let len = 4 + rng.below(7) as usize;
            (0..len)
                .map(|_| (b'a' + rng.below(26) as u8) as char)
                .collect()
        } else {
            let len = 2 + rng.below(3) as usize;
            (0..len)
                .map(|_| char::from_u32(0x4E00 + rng.below(0x51A5) as u32).unwrap_or('一'))
                .collect()
        };
        let m = i % markets.len();
        markets[m].rules.push(RuleSpec {
            id: format!("r{i}"),
            label: String::new(),
            severity: if i % 2 == 0 {
                Severity::Red
            } else {
                Severity::Yellow
            },
            applies: vec![Usage::Comments, Usage::Listings],
            terms: vec![term],
            except: Vec::new(),
        });
    }
    markets
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rules: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let megabytes: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(64);

    let mut markets = parse_markets(BUILTIN_MARKETS.iter().copied()).expect("shipped rules");
    markets.extend(generated_rules(rules));
    let started = Instant::now();
    let moderator = Moderator::new(&markets).expect("compile");
    let build = started.elapsed();
    let all_markets: Vec<String> = moderator.markets().to_vec();
    let total_rules = moderator.rule_count();

    let mut messages: Vec<&str> = Vec::new();
    let mut bytes = 0usize;
    while bytes < megabytes << 20 {
        for c in COMMENTS {
            messages.push(c);
            bytes += c.len();
        }
    }
    let mb = bytes as f64 / (1 << 20) as f64;

    // Ferry's check, every market's rules applying (the worst case: a room watched by all).
    // (A room resolves its markets once per change of audience, not per comment.)
    let set = moderator.market_set(all_markets.iter().map(String::as_str));
    let started = Instant::now();
    let mut red = 0usize;
    let mut yellow = 0usize;
    for m in &messages {
        let v = moderator.check_set(m, &set, Usage::Comments);
        match v.severity {
            Severity::Red => red += 1,
            Severity::Yellow => yellow += 1,
            Severity::Green => {}
        }
    }
    let check_s = started.elapsed().as_secs_f64();

    // Baseline 1: the fold alone.
    let started = Instant::now();
    let mut f = Folded::default();
    let mut folded_bytes = 0usize;
    for m in &messages {
        f.fold_into(m);
        folded_bytes += f.bytes().len();
    }
    let fold_s = started.elapsed().as_secs_f64();
    std::hint::black_box(folded_bytes);

    // Baseline 2: raw Aho-Corasick over the unfolded text, same patterns, same kind.
    let patterns: Vec<String> = markets
        .iter()
        .flat_map(|m| m.rules.iter().flat_map(|r| r.terms.iter().cloned()))
        .collect();
    let raw = AhoCorasickBuilder::new()
        .match_kind(MatchKind::Standard)
        .kind(Some(AhoCorasickKind::DFA))
        .build(&patterns)
        .expect("raw automaton");
    let started = Instant::now();
    let mut raw_hits = 0usize;
    for m in &messages {
        raw_hits += raw.find_overlapping_iter(m).count();
    }
    let raw_s = started.elapsed().as_secs_f64();
    std::hint::black_box(raw_hits);

    // The same text as product descriptions (~500 bytes each): per-call costs amortized.
    let mut long: Vec<String> = Vec::new();
    let mut cur = String::new();
    for m in &messages {
        cur.push_str(m);
        cur.push(' ');
        if cur.len() >= 500 {
            long.push(std::mem::take(&mut cur));
        }
    }
    let long_bytes: usize = long.iter().map(String::len).sum();
    let long_mb = long_bytes as f64 / (1 << 20) as f64;
    let started = Instant::now();
    let mut long_red = 0usize;
    for t in &long {
        if moderator.check_set(t, &set, Usage::Listings).severity == Severity::Red {
            long_red += 1;
        }
    }
    let long_s = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let mut long_hits = 0usize;
    for t in &long {
        long_hits += raw.find_overlapping_iter(t.as_str()).count();
    }
    let long_raw_s = started.elapsed().as_secs_f64();
    std::hint::black_box((long_red, long_hits));

    println!(
        "rules: {total_rules} ({rules} generated + shipped) in {} markets; automaton built in {:.0} ms",
        all_markets.len(),
        build.as_secs_f64() * 1000.0
    );
    println!(
        "text: {mb:.1} MiB in {} messages (avg {:.0} bytes); verdicts: {red} red, {yellow} yellow",
        messages.len(),
        bytes as f64 / messages.len() as f64
    );
    println!(
        "Moderator::check_set  {:8.1} MiB/s  ({:.2} µs/message)",
        mb / check_s,
        check_s * 1e6 / messages.len() as f64
    );
    println!(
        "baseline: fold only   {:8.1} MiB/s  (check is {:.2}x its time)",
        mb / fold_s,
        check_s / fold_s
    );
    println!(
        "baseline: raw AC scan {:8.1} MiB/s  (check is {:.2}x its time; no obfuscation handling)",
        mb / raw_s,
        check_s / raw_s
    );
    println!(
        "~500-byte texts ({} of them): check_set {:8.1} MiB/s; raw AC scan {:8.1} MiB/s (check is {:.2}x its time)",
        long.len(),
        long_mb / long_s,
        long_mb / long_raw_s,
        long_s / long_raw_s
    );
}
