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
//! Each folded byte remembers the span of the source text it came from, so a match can be
//! checked for word boundaries in the source (see [`Folded::is_word_at`]).

use std::sync::OnceLock;

/// A folded text and, for each of its bytes, the source span of the character it came from.
#[derive(Debug, Default, Clone)]
pub struct Folded {
    /// The (NFKC-normalized) source the spans refer to.
    pub source: String,
    pub text: String,
    /// Per folded byte: `(start, end)` byte offsets in `source` of the character(s) that
    /// produced it (a collapsed run spans all its repeats).
    spans: Vec<(u32, u32)>,
}

impl Folded {
    /// Fold `input` (reusing this value's buffers).
    pub fn fold_into(&mut self, input: &str) {
        self.source.clear();
        self.text.clear();
        self.spans.clear();
        if input.is_ascii() {
            self.source.push_str(input);
        } else {
            let nfkc = icu_normalizer::ComposingNormalizerBorrowed::new_nfkc().normalize(input);
            self.source.push_str(&nfkc);
        }
        let mut last: Option<char> = None;
        let source = std::mem::take(&mut self.source);
        for (i, c) in source.char_indices() {
            let end = (i + c.len_utf8()) as u32;
            let Some(f) = fold_char(c) else {
                continue;
            };
            if last == Some(f) {
                // A repeat: extend the previous character's span instead of adding one.
                let n = f.len_utf8();
                let len = self.spans.len();
                for s in &mut self.spans[len - n..] {
                    s.1 = end;
                }
                continue;
            }
            last = Some(f);
            self.text.push(f);
            for _ in 0..f.len_utf8() {
                self.spans.push((i as u32, end));
            }
        }
        self.source = source;
    }

    /// Fold a rule term (or any text) into a new value.
    pub fn of(input: &str) -> Folded {
        let mut f = Folded::default();
        f.fold_into(input);
        f
    }

    /// Source span `(start, end)` of the folded byte range `start..end`.
    pub fn source_span(&self, start: usize, end: usize) -> (usize, usize) {
        let s = self.spans.get(start).map_or(0, |s| s.0 as usize);
        let e = end
            .checked_sub(1)
            .and_then(|i| self.spans.get(i))
            .map_or(self.source.len(), |s| s.1 as usize);
        (s, e)
    }

    /// Whether the folded match `start..end` stands as a word in the source: the source
    /// characters right before and right after it are not letters or digits. Noise *inside*
    /// the match is allowed (`p o r k` is the word `pork`); `begin` does not contain the word
    /// `gin`.
    pub fn is_word_at(&self, start: usize, end: usize) -> bool {
        let (s, e) = self.source_span(start, end);
        let before = self.source[..s].chars().next_back();
        let after = self.source[e..].chars().next();
        !before.is_some_and(is_word_char) && !after.is_some_and(is_word_char)
    }
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric()
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
    if !c.is_alphanumeric() {
        return None;
    }
    if ('\u{3400}'..='\u{9FFF}').contains(&c) || ('\u{F900}'..='\u{FAFF}').contains(&c) {
        return Some(simplified(c));
    }
    let mut lower = c.to_lowercase();
    Some(lower.next().unwrap_or(c))
}

/// Simplified form of a traditional Chinese character (itself when not in the table).
pub fn simplified(c: char) -> char {
    let table = trad_table();
    match table.binary_search_by_key(&c, |&(t, _)| t) {
        Ok(i) => table[i].1,
        Err(_) => c,
    }
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
mod tests {
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
            "p\u{200B}ork",
            "p0rk",
            "ⓟⓞⓡⓚ",
        ] {
            assert_eq!(Folded::of(variant).text, "pork", "{variant}");
        }
        assert_eq!(Folded::of("豬肉").text, Folded::of("猪肉").text);
        assert_eq!(Folded::of("猪 肉").text, "猪肉");
        assert_eq!(Folded::of("beer").text, Folded::of("BEEEER").text);
    }

    #[test]
    fn word_boundaries_are_judged_in_the_source() {
        let f = Folded::of("we begin at nine");
        let at = f.text.find("gin").expect("folded contains gin");
        assert!(!f.is_word_at(at, at + 3));
        let f = Folded::of("a g i n tonic!");
        let at = f.text.find("gin").expect("folded contains gin");
        assert!(f.is_word_at(at, at + 3));
        let f = Folded::of("ginnnn!");
        assert!(f.is_word_at(0, 3));
        let f = Folded::of("ginger");
        assert!(!f.is_word_at(0, 3));
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
