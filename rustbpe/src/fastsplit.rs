//! A hand-written scanner for the GPT-4 split pattern (and nanochat's variant with `\p{N}{1,2}`).
//!
//! The pattern, alternative by alternative, tried in order at each position (leftmost-first semantics):
//!
//! 1. `'(?i:[sdmt]|ll|ve|re)`        an English contraction suffix
//! 2. `[^\r\n\p{L}\p{N}]?+\p{L}+`    a letter run, optionally led by one non-letter/digit/newline (" the", "(x")
//! 3. `\p{N}{1,K}`                   up to K digits
//! 4. ` ?[^\s\p{L}\p{N}]++[\r\n]*`   punctuation run, optionally led by a space, plus trailing newlines
//! 5. `\s*[\r\n]`                    whitespace up to and including its last newline
//! 6. `\s+(?!\S)`                    whitespace, leaving the last space to lead the next word
//! 7. `\s+`                          whatever whitespace is left
//!
//! The regex engine needs backtracking for 5 and 6 (and look-ahead for 6); here each alternative is a
//! direct scan, which is several times faster. Character classes (`\p{L}`, `\p{N}`, `\s`, the case-folded
//! letters of 1) come from `regex-syntax`, the same Unicode tables fancy-regex uses, and the scanner is
//! tested equal to fancy-regex on random and real text.

use regex_syntax::hir::{Class, HirKind};

const L: u8 = 1;
const N: u8 = 2;
const WS: u8 = 4;

/// Which digit-run length a known pattern uses, or None if `pattern` is not one we scan by hand.
fn known_pattern_digits(pattern: &str) -> Option<usize> {
    (1..=9).find(|k| pattern == crate::GPT4_PATTERN.replace("{1,3}", &format!("{{1,{k}}}")))
}

fn class_ranges(re: &str) -> Vec<(u32, u32)> {
    let hir = regex_syntax::parse(re).expect("class parses");
    match hir.kind() {
        HirKind::Class(Class::Unicode(c)) => c.ranges().iter().map(|r| (r.start() as u32, r.end() as u32)).collect(),
        HirKind::Literal(lit) => {
            let c = std::str::from_utf8(&lit.0).unwrap().chars().next().unwrap() as u32;
            vec![(c, c)]
        }
        other => panic!("unexpected HIR for {re}: {other:?}"),
    }
}

pub struct FastSplitter {
    max_digits: usize,
    bmp: Vec<u8>,                  // flags for U+0000..U+FFFF
    astral: Vec<(u32, u32, u8)>,   // sorted disjoint ranges above U+FFFF with their flags
    fold: [Vec<char>; 8],          // case-insensitive variants of s d m t l v e r
}

const FOLD_LETTERS: [char; 8] = ['s', 'd', 'm', 't', 'l', 'v', 'e', 'r'];

impl FastSplitter {
    pub fn for_pattern(pattern: &str) -> Option<Self> {
        known_pattern_digits(pattern).map(Self::with_max_digits)
    }

    pub fn with_max_digits(max_digits: usize) -> Self {
        let mut bmp = vec![0u8; 0x10000];
        let mut astral_marks: Vec<(u32, u32, u8)> = Vec::new();
        for (re, flag) in [(r"\p{L}", L), (r"\p{N}", N), (r"\s", WS)] {
            for (lo, hi) in class_ranges(re) {
                for c in lo..=hi.min(0xFFFF) {
                    bmp[c as usize] |= flag;
                }
                if hi > 0xFFFF {
                    astral_marks.push((lo.max(0x10000), hi, flag));
                }
            }
        }
        // Flatten overlapping astral ranges into disjoint ones with OR-ed flags.
        let mut cuts: Vec<u32> = astral_marks.iter().flat_map(|&(lo, hi, _)| [lo, hi + 1]).collect();
        cuts.sort_unstable();
        cuts.dedup();
        let mut astral = Vec::new();
        for w in cuts.windows(2) {
            let f = astral_marks.iter().filter(|&&(lo, hi, _)| lo <= w[0] && w[0] <= hi).fold(0, |a, m| a | m.2);
            if f != 0 {
                astral.push((w[0], w[1] - 1, f));
            }
        }
        let fold = FOLD_LETTERS.map(|c| {
            class_ranges(&format!("(?i:{c})")).into_iter().flat_map(|(lo, hi)| lo..=hi).filter_map(char::from_u32).collect()
        });
        FastSplitter { max_digits, bmp, astral, fold }
    }

    #[inline]
    fn flags(&self, c: char) -> u8 {
        let u = c as u32;
        if u < 0x10000 {
            return self.bmp[u as usize];
        }
        match self.astral.binary_search_by(|&(lo, hi, _)| {
            if hi < u {
                std::cmp::Ordering::Less
            } else if lo > u {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        }) {
            Ok(i) => self.astral[i].2,
            Err(_) => 0,
        }
    }

    #[inline]
    fn folds(&self, c: char, letter: usize) -> bool {
        self.fold[letter].contains(&c)
    }

    /// Calls `f` on each chunk of `text` in order.
    pub fn for_each<'t>(&self, text: &'t str, mut f: impl FnMut(&'t str)) {
        let mut i = 0;
        while i < text.len() {
            let end = self.next_end(text, i);
            debug_assert!(end > i);
            f(&text[i..end]);
            i = end;
        }
    }

    /// The end (byte offset) of the chunk that starts at `i`.
    fn next_end(&self, text: &str, i: usize) -> usize {
        let rest = &text[i..];
        let mut it = rest.char_indices();
        let (_, c0) = it.next().unwrap();
        let f0 = self.flags(c0);
        let at = |k: usize| rest[k..].chars().next();
        let len0 = c0.len_utf8();

        // 1. contractions
        if c0 == '\'' {
            if let Some(c1) = at(1) {
                let l1 = c1.len_utf8();
                if (0..4).any(|k| self.folds(c1, k)) {
                    return i + 1 + l1;
                }
                if let Some(c2) = at(1 + l1) {
                    let two = |x: usize, y: usize| self.folds(c1, x) && self.folds(c2, y);
                    if two(4, 4) || two(5, 6) || two(7, 6) {
                        return i + 1 + l1 + c2.len_utf8();
                    }
                }
            }
        }
        // 2. letters, optionally led by one char that is not a letter, digit or newline
        if f0 & L != 0 {
            return i + self.run(rest, 0, L);
        }
        if f0 & N == 0 && c0 != '\r' && c0 != '\n' {
            if let Some(c1) = at(len0) {
                if self.flags(c1) & L != 0 {
                    return i + self.run(rest, len0, L);
                }
            }
        }
        // 3. digits, at most max_digits
        if f0 & N != 0 {
            let mut end = 0;
            for (n, (k, c)) in rest.char_indices().enumerate() {
                if n == self.max_digits || self.flags(c) & N == 0 {
                    return i + k;
                }
                end = k + c.len_utf8();
            }
            return i + end;
        }
        // 4. punctuation (neither whitespace, letter nor digit), optionally led by a space
        let is_p = |c: char| self.flags(c) & (L | N | WS) == 0;
        let p_start = if is_p(c0) {
            Some(0)
        } else if c0 == ' ' && at(1).is_some_and(is_p) {
            Some(1)
        } else {
            None
        };
        if let Some(s) = p_start {
            let mut end = s;
            for c in rest[s..].chars() {
                if !is_p(c) {
                    break;
                }
                end += c.len_utf8();
            }
            while end < rest.len() && matches!(rest.as_bytes()[end], b'\r' | b'\n') {
                end += 1;
            }
            return i + end;
        }
        // Only whitespace is left (every char is a letter, digit, whitespace or punctuation).
        let ws_end = self.run(rest, 0, WS);
        // 5. whitespace through its last newline
        if let Some(k) = rest[..ws_end].rfind(['\r', '\n']) {
            return i + k + 1;
        }
        // 6. whitespace not followed by a non-space: all of it at the end of text, else all but its last char
        if ws_end == rest.len() {
            return i + ws_end;
        }
        let last = rest[..ws_end].chars().next_back().unwrap();
        if ws_end > last.len_utf8() {
            return i + ws_end - last.len_utf8();
        }
        // 7. a single whitespace char before a non-space
        i + ws_end
    }

    /// Byte length of the run of chars with `flag` in `s` starting at byte `from` (returned as an end offset).
    #[inline]
    fn run(&self, s: &str, from: usize, flag: u8) -> usize {
        let mut end = from;
        for c in s[from..].chars() {
            if self.flags(c) & flag == 0 {
                break;
            }
            end += c.len_utf8();
        }
        end
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::split::Splitter;
    use crate::GPT4_PATTERN;

    fn pair(pattern: &str) -> (Splitter, Splitter) {
        let fast = Splitter::new(pattern).unwrap();
        assert!(fast.is_fast());
        (fast, Splitter::regex(pattern).unwrap())
    }

    fn check(sp: &(Splitter, Splitter), text: &str) {
        assert_eq!(sp.0.split(text).unwrap(), sp.1.split(text).unwrap(), "text {text:?}");
    }

    #[test]
    fn recognizes_patterns() {
        assert!(FastSplitter::for_pattern(GPT4_PATTERN).is_some());
        assert!(FastSplitter::for_pattern(&GPT4_PATTERN.replace("{1,3}", "{1,2}")).is_some());
        assert!(FastSplitter::for_pattern(r"\w+|\s+").is_none());
    }

    #[test]
    fn handpicked() {
        let cases = [
            "Hello world", "I'm you're we'll they've he'd it's IT'S 'ſ", "don't'x ' 'l 'll'LL", "1234567 x12y",
            "  leading\n\n  trailing  ", "a\r\n\r\nb", "tabs\t\tand\u{a0}nbsp", "(paren) [x] {y}!!!\n\n\n",
            " ?! ...\n", "안녕하세요, 세계! 나노챗 2025년", "emoji 😀😀 👍🏽 x", "\u{2028}line\u{2029}sep\u{85}",
            "math: ∑_{i=1}^n x_i² ≤ ½", "   ", "\n", " ", "x", "a  b   c    ", "\u{1d400}\u{1d7ce}\u{10400}",
        ];
        for k in [1, 2, 3] {
            let sp = pair(&GPT4_PATTERN.replace("{1,3}", &format!("{{1,{k}}}")));
            for t in cases {
                check(&sp, t);
            }
        }
    }

    #[test]
    fn random_text() {
        let alphabet: Vec<char> = " \t\n\r\u{a0}\u{3000}'sSdlLvVeErRxX09٣½.,!?()-_😀안녕\u{301}\u{1d400}\u{1d7ce}\u{85}\u{b}ſK"
            .chars()
            .collect();
        let (sp3, sp2) = (pair(GPT4_PATTERN), pair(&GPT4_PATTERN.replace("{1,3}", "{1,2}")));
        let mut s = 7u64;
        for _ in 0..3000 {
            let mut t = String::new();
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let len = (s >> 59) as usize + 1;
            for _ in 0..len * 3 {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                t.push(alphabet[(s >> 33) as usize % alphabet.len()]);
            }
            check(&sp3, &t);
            check(&sp2, &t);
        }
    }
}
