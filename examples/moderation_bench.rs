//! Moderation throughput on a 10,000-rule set, one core: MB of text per second checked by
//! `Moderator::check_set` (fold: NFKC, case, width, noise, repeats, traditional Chinese; one
//! automaton pass over every market's terms; word-boundary and exception checks on hits),
//! against baselines measured in the same run on the same texts: the fold alone, and raw
//! Aho-Corasick scans of the *unfolded* text with the same patterns and the same DFA
//! (`find_overlapping_iter`, the semantics a check needs, and `find_iter`) — no obfuscation
//! handling at all.
//!
//! ```text
//! cargo run --release --example moderation_bench -- [RULES] [MEGABYTES]
//! ```
//!
//! The rule set: the shipped market files plus RULES generated rules spread over 20 markets,
//! each with one term — Latin words of 4–10 letters and Chinese terms of 2–4 characters
//! from the common range — half red, half yellow. Every market applies (a room watched from
//! all of them: the worst case). Two inputs of MEGABYTES each, built from fragments of real
//! livestream talk in Chinese, English, Spanish and Japanese (a few containing a shipped
//! term, some obfuscated):
//!
//! - **chat**: comments of 20–200 bytes, one to five fragments, mixed languages;
//! - **descriptions**: product descriptions of 1–3 KB.
//!
//! Each figure is given per second of wall time and per second of this thread's CPU time
//! (`/proc/thread-self/schedstat`): on a shared machine the second is the stable one. The
//! ratio to the raw scan is the figure to compare between runs.

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, AhoCorasickKind, MatchKind};
use ferry::moderation::fold::Folded;
use ferry::moderation::{
    parse_markets, MarketFile, MarketSet, Moderator, RuleSpec, Usage, BUILTIN_MARKETS,
};
use ferry_client::protocol::translation::Severity;
use std::time::Instant;

/// Chat fragments: comments and parts of comments as viewers write them.
const CHAT: &[&str] = &[
    "How much is the rattan basket?",
    "Do you ship to Texas?",
    "这个藤编篮多少钱？",
    "能寄到美国吗",
    "¿Cuánto cuesta la cesta?",
    "¿Hay envío a México?",
    "いくらですか？",
    "アメリカに発送できますか",
    "love the colour!!",
    "is there a bigger size",
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
    "主播 can you show the back side 谢谢",
    "已下单 order #20931 when does it ship",
    "哈哈哈哈 this is so good",
    "紫砂壶 is it handmade? 手工的吗",
    "first time here 👋 from Houston",
    "老板 discount for 3 pcs?",
    "質量怎麼樣？會不會褪色",
    "waiting for the flash sale ⏰⏰",
];

/// Description sentences: how merchants write listings.
const DESCRIPTION: &[&str] = &[
    "Handwoven from natural rattan by artisans in Anji, Zhejiang; every basket is unique.",
    "纯手工藤编，选用天然藤条，经过蒸煮、晾晒、编织等十二道工序制作而成。",
    "Dimensions: 32 × 24 × 18 cm. Weight: 650 g. Load capacity up to 8 kg.",
    "尺寸：32×24×18厘米，重量650克，承重8公斤。",
    "Care: wipe with a damp cloth, keep away from direct sunlight and heat.",
    "保养方法：用湿布擦拭，避免阳光直射和高温。",
    "Ships within 48 hours from our Hangzhou warehouse; tracked delivery worldwide.",
    "杭州仓库48小时内发货，全球物流可追踪。",
    "Perfect as a picnic basket, a storage solution for the living room, or a gift.",
    "适合野餐、客厅收纳，也是送礼佳品。",
    "Each piece may vary slightly in colour and size because it is made by hand.",
    "因手工制作，每件产品颜色和尺寸略有差异，敬请谅解。",
    "30-day returns. Questions? Message us during the live stream or any time.",
    "支持30天退换货，有问题请在直播间或私信联系我们。",
    "Set includes: 1 large basket, 1 lid, 2 cotton liners (beige and grey).",
    "套装包含：大号篮子1个、盖子1个、棉布内衬2个（米色和灰色）。",
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

/// Texts of `min..=max` bytes joined from `pool`, until `total` bytes.
fn texts(pool: &[&str], min: usize, max: usize, total: usize, rng: &mut Rng) -> Vec<String> {
    let mut out = Vec::new();
    let mut bytes = 0;
    while bytes < total {
        let target = min + rng.below((max - min + 1) as u64) as usize;
        let mut t = String::new();
        while t.len() < target {
            let f = pool[rng.below(pool.len() as u64) as usize];
            if !t.is_empty() && t.len() + 1 + f.len() > max {
                break;
            }
            if !t.is_empty() {
                t.push(' ');
            }
            t.push_str(f);
        }
        bytes += t.len();
        out.push(t);
    }
    out
}

/// This thread's CPU time so far, in seconds (0 where the kernel does not say).
fn cpu_seconds() -> f64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0.0, |ns| ns as f64 / 1e9)
}

/// Wall and CPU seconds of `f`.
fn timed(mut f: impl FnMut()) -> (f64, f64) {
    let cpu = cpu_seconds();
    let wall = Instant::now();
    f();
    (wall.elapsed().as_secs_f64(), cpu_seconds() - cpu)
}

/// A baseline's work on one text; returns a count so the work is not optimized away.
type Baseline<'a> = dyn FnMut(&str) -> usize + 'a;

struct Figures {
    name: &'static str,
    wall: f64,
    cpu: f64,
}

fn run(
    label: &str,
    input: &[String],
    moderator: &Moderator,
    set: &MarketSet,
    raw: &AhoCorasick,
    usage: Usage,
) {
    let bytes: usize = input.iter().map(String::len).sum();
    let mb = bytes as f64 / (1 << 20) as f64;
    let mut verdicts = [0usize; 3];
    let mut figures = Vec::new();
    // Warm up the automaton's hot states and the allocator once, unmeasured.
    for t in input.iter().take(2000) {
        std::hint::black_box(moderator.check_set(t, set, usage));
        std::hint::black_box(raw.find_overlapping_iter(t.as_str()).count());
    }
    let (wall, cpu) = timed(|| {
        for t in input {
            let v = moderator.check_set(t, set, usage);
            verdicts[v.severity as usize] += 1;
        }
    });
    figures.push(Figures {
        name: "Moderator::check_set",
        wall,
        cpu,
    });
    let mut fold = Folded::default();
    let baselines: [(&'static str, &mut Baseline); 3] = [
        ("raw AC find_overlapping_iter", &mut |t| {
            raw.find_overlapping_iter(t).count()
        }),
        ("raw AC find_iter", &mut |t| raw.find_iter(t).count()),
        ("fold alone", &mut |t| {
            fold.fold_into(t);
            fold.bytes().len()
        }),
    ];
    for (name, f) in baselines {
        let (wall, cpu) = timed(|| {
            let mut n = 0;
            for t in input {
                n += f(t);
            }
            std::hint::black_box(n);
        });
        figures.push(Figures { name, wall, cpu });
    }
    println!(
        "\n{label}: {mb:.1} MiB in {} texts (avg {:.0} bytes); verdicts: {} green, {} yellow, {} red",
        input.len(),
        bytes as f64 / input.len() as f64,
        verdicts[Severity::Green as usize],
        verdicts[Severity::Yellow as usize],
        verdicts[Severity::Red as usize],
    );
    let raw_cpu = figures[1].cpu;
    let raw_wall = figures[1].wall;
    println!(
        "  {:30} {:>12} {:>12} {:>14}",
        "", "MiB/s wall", "MiB/s CPU", "time ÷ raw AC"
    );
    for f in &figures {
        let cpu_rate = if f.cpu > 0.0 {
            format!("{:.1}", mb / f.cpu)
        } else {
            "-".into()
        };
        let ratio = if raw_cpu > 0.0 {
            f.cpu / raw_cpu
        } else {
            f.wall / raw_wall
        };
        println!(
            "  {:30} {:>12.1} {:>12} {:>13.2}×",
            f.name,
            mb / f.wall,
            cpu_rate,
            ratio
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rules: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let megabytes: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(32);

    let mut markets = parse_markets(BUILTIN_MARKETS.iter().copied()).expect("shipped rules");
    markets.extend(generated_rules(rules));
    let started = Instant::now();
    let moderator = Moderator::new(&markets).expect("compile");
    let build = started.elapsed();
    let all_markets: Vec<String> = moderator.markets().to_vec();
    let set = moderator.market_set(all_markets.iter().map(String::as_str));

    // Raw baseline: the same patterns, unfolded, in the same kind of automaton.
    let patterns: Vec<String> = markets
        .iter()
        .flat_map(|m| m.rules.iter().flat_map(|r| r.terms.iter().cloned()))
        .collect();
    let raw = AhoCorasickBuilder::new()
        .match_kind(MatchKind::Standard)
        .kind(Some(AhoCorasickKind::DFA))
        .build(&patterns)
        .expect("raw automaton");

    println!(
        "rules: {} ({rules} generated + shipped) in {} markets; automaton built in {:.0} ms",
        moderator.rule_count(),
        all_markets.len(),
        build.as_secs_f64() * 1000.0
    );
    let mut rng = Rng(0x5DEE_CE66_D1CE_4E5B);
    let chat = texts(CHAT, 20, 200, megabytes << 20, &mut rng);
    run("chat", &chat, &moderator, &set, &raw, Usage::Comments);
    let descriptions = texts(DESCRIPTION, 1000, 3000, megabytes << 20, &mut rng);
    run(
        "descriptions",
        &descriptions,
        &moderator,
        &set,
        &raw,
        Usage::Listings,
    );
}
