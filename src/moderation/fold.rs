//! Folding text for rule matching, sans-IO: the same fold is applied to rule terms and to the
//! text being checked, so obfuscated spellings meet their term. Steps, per character:
//!
//! 1. Unicode NFKC (only when the text is not pure ASCII): full-width letters, circled and
//!    mathematical letters, ligatures and compatibility forms become their plain form.
//! 2. Lowercase.
//! 3. Traditional → simplified Chinese through a small table of common characters.
//! 4. "Leet" digits and symbols read as letters: `0→o 1→i 3→e 4→a 5→s 7→t @→a $→s`.
//! 5. Noise is dropped: anything that is not a letter or digit (spaces, punctuation, symbols,
//!    emoji, zero-width characters), so `p.o r-k` reads `pork`.
//! 6. Runs of one repeated character collapse to one (`poooork` → `pork`, and the term
//!    `beer` folds to `ber` the same way).
//!
//! A match can be checked for word boundaries in the source ([`Folded::is_word_at`]): folded
//! bytes carry bits saying whether a letter or digit stands right before and right after
//! their character's source characters. Texts made only of characters NFKC leaves alone
//! (ASCII, CJK, kana, Hangul, Arabic letters, accented Latin, full-width ASCII, emoji and
//! common symbols — nearly all chat) skip the normalizer and are folded in one pass over
//! their bytes, with the same result as through it (tests check every such character).

use std::sync::OnceLock;

/// A folded text, with what word-boundary checks need: whether the source character right
/// before a folded character's first source character is a letter or digit (on each of its
/// bytes), and whether the one right after its last source character (a collapsed run ends
/// at its last repeat) is (on its last byte).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Folded {
    /// The folded text (UTF-8).
    bytes: Vec<u8>,
    /// Per folded byte: bit 0 = a word character precedes its character in the source; bit 1
    /// (last byte of a character only) = one follows it.
    flags: Vec<u8>,
}

const PREV_WORD: u8 = 1;
const NEXT_WORD: u8 = 2;

/// ASCII fold table: 0 = noise.
const ASCII: [u8; 128] = {
    let mut t = [0u8; 128];
    let mut i = 0;
    while i < 128 {
        let b = i as u8;
        t[i] = match b {
            b'A'..=b'Z' => b + 32,
            b'a'..=b'z' => b,
            b'0' => b'o',
            b'1' => b'i',
            b'3' => b'e',
            b'4' | b'@' => b'a',
            b'5' | b'$' => b's',
            b'7' => b't',
            b'2' | b'6' | b'8' | b'9' => b,
            _ => 0,
        };
        i += 1;
    }
    t
};

/// The folding state machine, fed source characters one by one.
struct Folder<'a> {
    bytes: &'a mut Vec<u8>,
    flags: &'a mut Vec<u8>,
    /// The last folded character (to collapse repeats).
    last: u32,
    /// The previous source character belonged to the last folded character's run.
    run_open: bool,
    /// The previous source character was a word character.
    prev_word: bool,
}

impl Folder<'_> {
    /// One source character: its fold (`None` for noise) and whether it is a word character.
    #[inline]
    fn feed(&mut self, folded: Option<char>, word: bool) {
        match folded {
            Some(f) if f as u32 == self.last => {
                // A repeat (noise in between or not): the run goes on.
                self.run_open = true;
            }
            Some(f) => {
                self.close_run(word);
                self.last = f as u32;
                let mut buf = [0u8; 4];
                let enc = f.encode_utf8(&mut buf).as_bytes();
                self.bytes.extend_from_slice(enc);
                let flag = if self.prev_word { PREV_WORD } else { 0 };
                self.flags.extend(std::iter::repeat_n(flag, enc.len()));
                self.run_open = true;
            }
            None => self.close_run(word),
        }
        self.prev_word = word;
    }

    /// An ASCII source character folded to `folded` (not noise).
    #[inline]
    fn push_ascii(&mut self, folded: u8, word: bool) {
        if u32::from(folded) == self.last {
            self.run_open = true;
        } else {
            self.close_run(word);
            self.last = u32::from(folded);
            self.bytes.push(folded);
            self.flags.push(if self.prev_word { PREV_WORD } else { 0 });
            self.run_open = true;
        }
        self.prev_word = word;
    }

    /// A word character that folds to itself, `code`, whose UTF-8 is `utf8`.
    #[inline]
    fn push_utf8(&mut self, code: u32, utf8: &[u8]) {
        if code == self.last {
            self.run_open = true;
        } else {
            self.close_run(true);
            self.last = code;
            self.bytes.extend_from_slice(utf8);
            let flag = if self.prev_word { PREV_WORD } else { 0 };
            self.flags.extend(utf8.iter().map(|_| flag));
            self.run_open = true;
        }
        self.prev_word = true;
    }

    /// The run of the last folded character ends; `next_word` says what follows it.
    #[inline]
    fn close_run(&mut self, next_word: bool) {
        if self.run_open {
            if next_word {
                // The last folded character ends the buffer; a match ends on its last byte,
                // the only one whose bit is read ([`Folded::is_word_at`]).
                if let Some(f) = self.flags.last_mut() {
                    *f |= NEXT_WORD;
                }
            }
            self.run_open = false;
        }
    }
}

impl Folded {
    /// Fold `input` (reusing this value's buffers): one pass over the bytes when every
    /// character is one NFKC leaves alone (nearly all chat), else [`Self::fold_nfkc_into`].
    /// Both give the same result (tested exhaustively per character and on random mixed
    /// texts).
    pub fn fold_into(&mut self, input: &str) {
        if !self.fold_fast(input) {
            self.fold_nfkc_into(input);
        }
    }

    /// The reference fold: Unicode NFKC of the whole text, then each character of the normal
    /// form folded ([`fold_char`]). Always right, about 3× slower than the fast path.
    pub fn fold_nfkc_into(&mut self, input: &str) {
        self.bytes.clear();
        self.flags.clear();
        let nfkc = icu_normalizer::ComposingNormalizerBorrowed::new_nfkc().normalize(input);
        let mut f = self.folder();
        for c in nfkc.chars() {
            let folded = fold_char(c);
            f.feed(folded, folded.is_some() && !matches!(c, '@' | '$'));
        }
        f.close_run(false);
    }

    fn folder(&mut self) -> Folder<'_> {
        Folder {
            bytes: &mut self.bytes,
            flags: &mut self.flags,
            last: u32::MAX,
            run_open: false,
            prev_word: false,
        }
    }

    /// One pass over the bytes when every character is one NFKC leaves alone; `false` when
    /// one is not (the caller starts over with the normal form). Three paths by byte: ASCII
    /// through a table; the common CJK block (three-byte UTF-8 led by `E4`–`E9`) decoded in
    /// place, its bytes copied unless the traditional-character bitmap says to look it up;
    /// anything else decoded as a `char`.
    #[inline]
    fn fold_fast(&mut self, input: &str) -> bool {
        self.bytes.clear();
        self.flags.clear();
        self.bytes.reserve(input.len());
        self.flags.reserve(input.len());
        let src = input.as_bytes();
        let trad = trad_bitmap();
        let mut f = self.folder();
        let mut i = 0;
        while i < src.len() {
            let b = src[i];
            if b < 0x80 {
                i += 1;
                let folded = ASCII[b as usize];
                if folded == 0 {
                    // ASCII noise is never a letter or digit.
                    f.close_run(false);
                    f.prev_word = false;
                } else {
                    f.push_ascii(folded, b.is_ascii_alphanumeric());
                }
                continue;
            }
            // A multi-byte character: decode it in place (the input is valid UTF-8).
            let (code, len) = match (b, src.get(i + 1..)) {
                (0xC0..=0xDF, Some(&[b1, ..])) => {
                    ((u32::from(b & 0x1F) << 6) | u32::from(b1 & 0x3F), 2)
                }
                (0xE0..=0xEF, Some(&[b1, b2, ..])) => (
                    (u32::from(b & 0x0F) << 12)
                        | (u32::from(b1 & 0x3F) << 6)
                        | u32::from(b2 & 0x3F),
                    3,
                ),
                (_, Some(&[b1, b2, b3, ..])) => (
                    (u32::from(b & 0x07) << 18)
                        | (u32::from(b1 & 0x3F) << 12)
                        | (u32::from(b2 & 0x3F) << 6)
                        | u32::from(b3 & 0x3F),
                    4,
                ),
                _ => return false,
            };
            let utf8 = src.get(i..i + len).unwrap_or_default();
            match code {
                0x4E00..=0x9FFF => {
                    let k = (code - 0x4E00) as usize;
                    if trad.get(k / 64).is_some_and(|w| w & (1 << (k % 64)) != 0) {
                        f.feed(char::from_u32(code).map(simplified), true);
                    } else {
                        f.push_utf8(code, utf8);
                    }
                }
                // Letters without case that fold to themselves: kana, Hangul, Arabic.
                0x3041..=0x3096
                | 0x30A1..=0x30FA
                | 0x30FC
                | 0xAC00..=0xD7A3
                | 0x0621..=0x063A
                | 0x0641..=0x064A => f.push_utf8(code, utf8),
                // Full-width ASCII: as the ASCII character NFKC makes of it.
                0xFF01..=0xFF5E => {
                    let a = (code - 0xFEE0) as u8;
                    match ASCII.get(usize::from(a)).copied().unwrap_or(0) {
                        0 => {
                            f.close_run(false);
                            f.prev_word = false;
                        }
                        folded => f.push_ascii(folded, a.is_ascii_alphanumeric()),
                    }
                }
                // Noise NFKC leaves alone (or turns into other noise): ideographic space and
                // punctuation, general punctuation, zero-width characters, variation
                // selectors, emoji.
                0x3000..=0x3002
                | 0x2010..=0x2023
                | 0x2027
                | 0x200B..=0x200D
                | 0xFE00..=0xFE0F
                | 0x1F300..=0x1FAFF => {
                    f.close_run(false);
                    f.prev_word = false;
                }
                _ => {
                    let Some(c) = char::from_u32(code) else {
                        return false;
                    };
                    if !nfkc_stable(c) {
                        return false;
                    }
                    let folded = fold_char(c);
                    // Full-width `＠` and `＄` read as letters but are not word characters,
                    // as their NFKC forms `@` and `$` are not.
                    f.feed(folded, folded.is_some() && !matches!(c, '＠' | '＄'));
                }
            }
            i += len;
        }
        f.close_run(false);
        true
    }

    /// Fold a rule term (or any text) into a new value.
    pub fn of(input: &str) -> Folded {
        let mut f = Folded::default();
        f.fold_into(input);
        f
    }

    /// The folded bytes (UTF-8).
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The folded text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }

    /// Whether the folded match `start..end` stands as a word in the source: the characters
    /// right before and right after it are not letters or digits. Noise *inside* the match is
    /// allowed (`p o r k` is the word `pork`); `begin` does not contain the word `gin`.
    pub fn is_word_at(&self, start: usize, end: usize) -> bool {
        let before = self.flags.get(start).is_some_and(|f| f & PREV_WORD != 0);
        let after = end
            .checked_sub(1)
            .and_then(|i| self.flags.get(i))
            .is_some_and(|f| f & NEXT_WORD != 0);
        !before && !after
    }
}

/// Characters NFKC leaves alone and [`fold_char`] handles by itself.
#[inline]
fn nfkc_stable(c: char) -> bool {
    matches!(c,
        '\u{0}'..='\u{7F}'
        | '\u{C0}'..='\u{FF}'
        | '\u{100}'..='\u{17F}'
        | '\u{A1}' | '\u{A9}' | '\u{AB}' | '\u{AE}' | '\u{B0}' | '\u{B7}' | '\u{BB}' | '\u{BF}'
        | '\u{200B}'..='\u{200D}'
        | '\u{2010}'..='\u{2027}'
        | '\u{2190}'..='\u{23FF}'
        | '\u{2500}'..='\u{27BF}'
        | '\u{2B00}'..='\u{2BFF}'
        | '\u{FE00}'..='\u{FE0F}'
        // Emoji and pictographs, but not the enclosed letters and squared words of
        // U+1F100–U+1F2FF (`🄿🄾🅁🄺` is `PORK` to NFKC); regional indicators are fine.
        | '\u{1F000}'..='\u{1F0FF}'
        | '\u{1F1E6}'..='\u{1F1FF}'
        | '\u{1F300}'..='\u{1FAFF}'
        | '\u{3000}'..='\u{3002}'
        | '\u{3041}'..='\u{3096}'
        | '\u{30A1}'..='\u{30FA}'
        | '\u{30FC}'
        | '\u{4E00}'..='\u{9FFF}'
        | '\u{AC00}'..='\u{D7A3}'
        | '\u{0621}'..='\u{064A}'
        | '\u{FF01}'..='\u{FF5E}')
        // Latin Extended-A compatibility characters (ligatures, long s).
        && !matches!(c, '\u{2024}' | '\u{2025}' | '\u{2026}' | '\u{132}' | '\u{133}' | '\u{13F}' | '\u{140}' | '\u{149}' | '\u{17F}')
}

/// One character's fold, `None` for noise.
#[inline]
fn fold_char(c: char) -> Option<char> {
    if c.is_ascii() {
        let b = c as u8;
        return match b {
            b'A'..=b'Z' => Some((b + 32) as char),
            b'a'..=b'z' => Some(c),
            b'0' => Some('o'),
            b'1' => Some('i'),
            b'3' => Some('e'),
            b'4' | b'@' => Some('a'),
            b'5' | b'$' => Some('s'),
            b'7' => Some('t'),
            b'2' | b'6' | b'8' | b'9' => Some(c),
            _ => None,
        };
    }
    if ('\u{4E00}'..='\u{9FFF}').contains(&c) {
        return Some(simplified(c));
    }
    if ('\u{FF01}'..='\u{FF5E}').contains(&c) {
        // Full-width ASCII (when NFKC was skipped).
        return char::from_u32(c as u32 - 0xFEE0).and_then(fold_char);
    }
    if !c.is_alphanumeric() {
        return None;
    }
    if ('\u{3400}'..='\u{4DBF}').contains(&c) || ('\u{F900}'..='\u{FAFF}').contains(&c) {
        return Some(simplified(c));
    }
    let mut lower = c.to_lowercase();
    Some(lower.next().unwrap_or(c))
}

/// Simplified form of a traditional Chinese character (itself when not in the table).
#[inline]
pub fn simplified(c: char) -> char {
    // Most characters are not in the table: a bitmap over the common range says so at once.
    let code = c as u32;
    if (0x4E00..=0x9FFF).contains(&code) {
        let i = (code - 0x4E00) as usize;
        if trad_bitmap()[i / 64] & (1 << (i % 64)) == 0 {
            return c;
        }
    }
    let table = trad_table();
    match table.binary_search_by_key(&c, |&(t, _)| t) {
        Ok(i) => table[i].1,
        Err(_) => c,
    }
}

fn trad_bitmap() -> &'static [u64] {
    static BITS: OnceLock<Vec<u64>> = OnceLock::new();
    BITS.get_or_init(|| {
        let mut bits = vec![0u64; (0x9FFF - 0x4E00) / 64 + 1];
        for (t, _) in trad_table() {
            let code = *t as u32;
            if (0x4E00..=0x9FFF).contains(&code) {
                let i = (code - 0x4E00) as usize;
                bits[i / 64] |= 1 << (i % 64);
            }
        }
        bits
    })
}

fn trad_table() -> &'static [(char, char)] {
    static TABLE: OnceLock<Vec<(char, char)>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut v: Vec<(char, char)> = TRAD_SIMP
            .chars()
            .collect::<Vec<_>>()
            .chunks(2)
            .filter_map(|p| match p {
                [t, s] => Some((*t, *s)),
                _ => None,
            })
            .collect();
        v.sort_unstable();
        v.dedup_by_key(|p| p.0);
        v
    })
}

/// Traditional → simplified pairs of common characters (traditional first), enough for the
/// shipped rule terms and everyday commerce chat. Extend freely; pairs are sorted at start.
const TRAD_SIMP: &str = "豬猪雞鸡鴨鸭魚鱼鵝鹅腸肠臘腊醃腌燒烧滷卤醬酱麵面飯饭湯汤餃饺\
釀酿飲饮麥麦紅红綠绿藍蓝黃黄顏颜賣卖買买價价錢钱貨货運运費费發发號号碼码\
藥药醫医療疗劑剂槍枪彈弹賭赌煙烟菸烟販贩銷销減减體体們们這这個个來来說说\
會会時时與与為为從从對对問问題题點点麼么還还現现實实開开關关門门東东車车\
長长見见覺觉讓让給给話话認认識识語语網网紙纸線线條条無无愛爱寫写學学習习\
書书電电動动國国際际臺台灣湾風风飛飞馬马鳥鸟龍龙歲岁萬万億亿隻只幾几氣气\
樣样應应該该將将變变親亲戲戏歡欢樂乐聽听邊边後后裡里裏里髮发鬆松緊紧質质\
權权舊旧鐵铁鋼钢銀银錶表鐘钟鏈链鑽钻籃篮編编織织絲丝綢绸緞缎褲裤襪袜衛卫\
極极廣广場场島岛嶺岭陽阳陰阴雙双單单傳传統统藝艺術术聖圣經经廟庙齋斋禮礼\
節节豐丰獸兽屍尸殺杀險险戰战軍军黨党選选舉举嗎吗嘗尝濃浓壺壶罈坛瓶瓶盃杯\
蘭兰櫻樱葉叶類类裝装儲储鮮鲜熱热涼凉燈灯寶宝貝贝鑰钥鎖锁針针鞋鞋帶带厭厌\
歐欧亞亚韓韩麗丽員员機机視视頻频貼贴頁页盤盘標标準准邊边確确種种優优惠惠\
專专業业務务產产廠厂進进還还發发貨货郵邮遞递灑洒淨净漿浆鹹咸甜甜濕湿";

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn obfuscations_fold_to_the_plain_term() {
        for variant in [
            "pork",
            "PORK",
            "Pork",
            "ｐｏｒｋ",
            "ＰＯＲＫ",
            "p o r k",
            "p.o.r.k",
            "p-o_r*k",
            "poooork",
            "p.o.o.o.r.k",
            "p\u{200B}ork",
            "p0rk",
            "ⓟⓞⓡⓚ",
            "🄿🄾🅁🄺",
            "𝐩𝐨𝐫𝐤",
            "ｐ　ｏ　ｒ　ｋ",
        ] {
            assert_eq!(Folded::of(variant).text(), "pork", "{variant}");
        }
        assert_eq!(Folded::of("豬肉").text(), Folded::of("猪肉").text());
        assert_eq!(Folded::of("猪 肉").text(), "猪肉");
        assert_eq!(Folded::of("beer").text(), Folded::of("BEEEER").text());
    }

    #[test]
    fn word_boundaries_are_judged_in_the_source() {
        for (text, word) in [
            ("we begin at nine", false),
            ("a g i n tonic!", true),
            ("ginnnn!", true),
            ("ginger", false),
            ("ｇｉｎ!", true),
            ("ⓖⓘⓝ and tonic", true),
            ("𝐛𝐞𝐠𝐢𝐧", false),
        ] {
            let f = Folded::of(text);
            let at = f.text().find("gin").expect("folded contains gin");
            assert_eq!(f.is_word_at(at, at + 3), word, "{text}");
        }
    }

    fn slow(text: &str) -> Folded {
        let mut f = Folded::default();
        f.fold_nfkc_into(text);
        f
    }

    /// Every character the fast path claims NFKC leaves alone folds exactly as through
    /// NFKC, alone and between word characters, noise and repeats (so its word bits too).
    #[test]
    fn the_fast_path_folds_every_stable_character_like_nfkc() {
        let mut fast_chars = 0;
        let mut f = Folded::default();
        for code in 0..=0x10FFFFu32 {
            let Some(c) = char::from_u32(code) else {
                continue;
            };
            if !nfkc_stable(c) {
                continue;
            }
            fast_chars += 1;
            for text in [
                format!("{c}"),
                format!("a{c}b"),
                format!(" {c} "),
                format!("{c}{c}x{c}"),
                format!("猪{c}肉"),
            ] {
                assert!(f.fold_fast(&text), "U+{code:04X} should take the fast path");
                assert_eq!(f, slow(&text), "U+{code:04X} in {text:?}");
            }
        }
        assert!(fast_chars > 35_000, "{fast_chars}");
    }

    /// A small deterministic generator (xorshift), so failures reproduce.
    pub(crate) struct Rng(pub(crate) u64);

    impl Rng {
        pub(crate) fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n as u64) as usize
        }
    }

    /// Random texts mixing ASCII (letters, leet digits, noise), full-width forms, CJK
    /// (simplified and traditional), kana, Hangul, Arabic, accented Latin, emoji, zero-width
    /// and ideographic spaces, plus characters NFKC changes (which send the whole text down
    /// the slow path): `fold_into` always equals the NFKC reference, bytes and word bits.
    #[test]
    fn fast_and_reference_folds_agree_on_random_mixed_texts() {
        let pools: &[&str] = &[
            "abcxyzABCXYZ",
            "0134567@$2689",
            " .,!?-_*'\"()/\\:;#%&+=~`^|<>[]{}",
            "ｐｏｒｋＰＯＲＫｗｉｎｅ０１＠＄！？　",
            "猪肉啤酒酒店藤编篮多少钱好看色",
            "豬肉紅酒鐵價錢貨運發號說這",
            "いくらですかビールアメリカー",
            "가격얼마한국",
            "خمرلحمخنزير",
            "éÉàÀñÑüÜçÇßøØłŁőŐ",
            "🙏😍🍺🐷👍🏻❤\u{FE0F}✨",
            "\u{200B}\u{200C}\u{200D}\u{2010}\u{2019}\u{201C}\u{3001}\u{3002}¿¡«»°·",
            // NFKC changes these.
            "ⓟⓞ𝐩𝐨ﬁ\u{0301}\u{3099}ｶﾞ①㎏ℌ\u{2024}ŉſ🄰🅿",
        ];
        let pools: Vec<Vec<char>> = pools.iter().map(|p| p.chars().collect()).collect();
        let mut rng = Rng(0x2545_F491_4F6C_DD1D);
        let mut f = Folded::default();
        let mut fast = 0;
        for round in 0..20_000 {
            let len = 1 + rng.below(24);
            // Most texts avoid the last pool, so most take the fast path.
            let n_pools = if round % 4 == 0 {
                pools.len()
            } else {
                pools.len() - 1
            };
            let text: String = (0..len)
                .map(|_| {
                    let pool = &pools[rng.below(n_pools)];
                    pool[rng.below(pool.len())]
                })
                .collect();
            let mut probe = Folded::default();
            if probe.fold_fast(&text) {
                fast += 1;
            }
            f.fold_into(&text);
            assert_eq!(f, slow(&text), "{text:?}");
        }
        assert!(fast > 10_000, "only {fast} texts took the fast path");
    }

    #[test]
    fn the_table_is_consistent() {
        let t = trad_table();
        assert!(t.len() > 150);
        assert!(t.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(simplified('豬'), '猪');
        assert_eq!(simplified('猪'), '猪');
    }
}
