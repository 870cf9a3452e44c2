//! Encoding with mergeable ranks, the tiktoken rule.
//!
//! A chunk starts as single bytes; repeatedly the adjacent pair whose concatenation has the lowest rank
//! (leftmost on ties) is merged, until no adjacent concatenation is a token. Short chunks use a plain
//! scan (fast for the usual 2-10 bytes); long ones a heap over a linked list, so a 10 MB chunk of one
//! repeated letter costs O(n log n) instead of O(n^2).

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use ahash::AHashMap;

use crate::split::Splitter;

/// Token ids <-> byte strings.
#[derive(Clone, Debug, Default)]
pub struct Vocab {
    pub ranks: AHashMap<Vec<u8>, u32>,
    pub tokens: Vec<Vec<u8>>,
}

const LONG_CHUNK: usize = 128;

impl Vocab {
    pub fn from_tokens(tokens: Vec<Vec<u8>>) -> Self {
        let ranks = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
        Vocab { ranks, tokens }
    }

    pub fn bytes_only() -> Self {
        Self::from_tokens((0..=255u8).map(|b| vec![b]).collect())
    }

    #[inline]
    fn rank(&self, bytes: &[u8]) -> u32 {
        self.ranks.get(bytes).copied().unwrap_or(u32::MAX)
    }

    /// Encodes one chunk, appending ids to `out`.
    pub fn encode_chunk(&self, piece: &[u8], out: &mut Vec<u32>) {
        if let Some(&r) = self.ranks.get(piece) {
            out.push(r);
        } else if piece.len() < LONG_CHUNK {
            self.merge_scan(piece, out);
        } else {
            self.merge_heap(piece, out);
        }
    }

    fn merge_scan(&self, piece: &[u8], out: &mut Vec<u32>) {
        // starts[i] is where part i begins; the last entry is piece.len().
        let mut starts: Vec<usize> = (0..=piece.len()).collect();
        let mut pair_rank: Vec<u32> = (0..piece.len().saturating_sub(1)).map(|i| self.rank(&piece[i..i + 2])).collect();
        loop {
            let mut best = (u32::MAX, usize::MAX);
            for (i, &r) in pair_rank.iter().enumerate() {
                if r < best.0 {
                    best = (r, i);
                }
            }
            if best.0 == u32::MAX {
                break;
            }
            let i = best.1;
            starts.remove(i + 1);
            pair_rank.remove(i);
            if i + 2 < starts.len() {
                pair_rank[i] = self.rank(&piece[starts[i]..starts[i + 2]]);
            }
            if i > 0 {
                pair_rank[i - 1] = self.rank(&piece[starts[i - 1]..starts[i + 1]]);
            }
        }
        for w in starts.windows(2) {
            out.push(self.ranks[&piece[w[0]..w[1]]]);
        }
    }

    fn merge_heap(&self, piece: &[u8], out: &mut Vec<u32>) {
        let n = piece.len();
        // A doubly linked list of parts; part i spans [i, end[i]). Dead parts have end[i] == 0.
        let mut end: Vec<usize> = (1..=n).collect();
        let mut prev: Vec<usize> = (0..n).map(|i| i.wrapping_sub(1)).collect();
        let mut heap: BinaryHeap<Reverse<(u32, usize, usize)>> = BinaryHeap::new(); // (rank, start, right end)
        for i in 0..n - 1 {
            let r = self.rank(&piece[i..i + 2]);
            if r != u32::MAX {
                heap.push(Reverse((r, i, i + 2)));
            }
        }
        while let Some(Reverse((r, i, stop))) = heap.pop() {
            // Valid only if part i is alive and still followed by exactly the part ending at `stop`.
            if end[i] == 0 || end[i] >= n || end[end[i]] != stop {
                continue;
            }
            let j = end[i];
            debug_assert_eq!(self.rank(&piece[i..stop]), r);
            end[i] = stop;
            end[j] = 0;
            if stop < n {
                prev[stop] = i;
                let r2 = self.rank(&piece[i..end[stop]]);
                if r2 != u32::MAX {
                    heap.push(Reverse((r2, i, end[stop])));
                }
            }
            if i > 0 {
                let p = prev[i];
                let r2 = self.rank(&piece[p..stop]);
                if r2 != u32::MAX {
                    heap.push(Reverse((r2, p, stop)));
                }
            }
        }
        let mut i = 0;
        while i < n {
            out.push(self.ranks[&piece[i..end[i]]]);
            i = end[i];
        }
    }

    pub fn encode(&self, splitter: &Splitter, text: &str) -> Result<Vec<u32>, String> {
        let mut out = Vec::with_capacity(text.len() / 3 + 1);
        splitter.for_each(text, |chunk| self.encode_chunk(chunk.as_bytes(), &mut out))?;
        Ok(out)
    }

    /// Concatenated bytes of `ids`; `Err(id)` names the first id that is not in the vocabulary.
    pub fn decode_bytes(&self, ids: &[u32]) -> Result<Vec<u8>, u32> {
        let mut out = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            match self.tokens.get(id as usize) {
                Some(t) => out.extend_from_slice(t),
                None => return Err(id),
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy() -> Vocab {
        let mut t: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
        for s in ["aa", "aaaa", "ab", "aab", "bc", "abc"] {
            t.push(s.as_bytes().to_vec());
        }
        Vocab::from_tokens(t)
    }

    #[test]
    fn scan_and_heap_agree() {
        let v = toy();
        let mut s = 12345u64;
        for len in [2usize, 3, 5, 17, 200, 1000] {
            for _ in 0..50 {
                let piece: Vec<u8> = (0..len)
                    .map(|_| {
                        s = s.wrapping_mul(6364136223846793005).wrapping_add(1);
                        b"aabc"[(s >> 40) as usize % 4]
                    })
                    .collect();
                let (mut x, mut y) = (Vec::new(), Vec::new());
                v.merge_scan(&piece, &mut x);
                v.merge_heap(&piece, &mut y);
                assert_eq!(x, y, "{:?}", String::from_utf8_lossy(&piece));
                assert_eq!(v.decode_bytes(&x).unwrap(), piece);
            }
        }
    }

    #[test]
    fn lowest_rank_first() {
        let v = toy();
        let mut out = Vec::new();
        v.encode_chunk(b"aaaab", &mut out);
        // "aa" (256) merges first at 0 and 2, then "aaaa" (257); "b" is left alone.
        assert_eq!(out, vec![257, b'b' as u32]);
    }

    #[test]
    fn decode_unknown_id() {
        assert_eq!(toy().decode_bytes(&[97, 9999]), Err(9999));
    }
}
