//! The BPE training loop: incremental pair counts + a lazy-deletion max-heap.
//!
//! State: every unique chunk is a `Word` (its current token ids) with a count. `pair_counts[p]` is the
//! number of times pair `p` occurs in the corpus (overlaps included, weighted by word counts), exactly
//! what a full recount would give. `where_[p]` lists (with repeats) a superset of the words that contain `p`
//! (stale entries are harmless: merging a word without the pair changes nothing; repeats are removed when
//! the list is used). Appending to a list is much cheaper than inserting into a hash set.
//!
//! One merge: pop the best pair from the heap (skipping entries whose count went stale), rewrite only
//! the words in `where_[p]`, and apply the exact count changes each rewrite reports. A pair whose count
//! grew is pushed again; a pair whose count shrank keeps its old heap entry, which is re-pushed with
//! the right count when it surfaces. So the top valid entry is always the true best pair.

use std::cmp::Ordering;

use ahash::AHashMap;
use dary_heap::OctonaryHeap;

pub type Pair = (u32, u32);

/// One learned merge: occurrences of `pair` become token `id`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Merge {
    pub pair: Pair,
    pub id: u32,
}

/// What training produces: the merges in order and the byte string of every token id.
#[derive(Clone, Debug, Default)]
pub struct Trained {
    pub merges: Vec<Merge>,
    pub vocab: Vec<Vec<u8>>,
}

/// A heap entry; the max-heap's top is the highest count, and among equal counts the smallest pair.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Entry {
    count: i64,
    pair: Pair,
}

impl Ord for Entry {
    fn cmp(&self, other: &Self) -> Ordering {
        self.count.cmp(&other.count).then_with(|| other.pair.cmp(&self.pair))
    }
}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Rewrites every non-overlapping occurrence of `(a, b)`, scanning left to right, into `new`, in place.
/// Reports each change to the multiset of adjacent pairs through `delta(pair, +1 | -1)`.
/// Returns whether anything changed.
pub fn merge_word(ids: &mut Vec<u32>, a: u32, b: u32, new: u32, mut delta: impl FnMut(Pair, i64)) -> bool {
    let n = ids.len();
    if n < 2 {
        return false;
    }
    // `ids[..w]` is the output so far; reading position `i` is never behind writing position `w`.
    let (mut i, mut w) = (0usize, 0usize);
    let mut changed = false;
    while i < n {
        if i + 1 < n && ids[i] == a && ids[i + 1] == b {
            if w > 0 {
                let prev = ids[w - 1];
                delta((prev, a), -1);
                delta((prev, new), 1);
            }
            delta((a, b), -1);
            if i + 2 < n {
                let next = ids[i + 2];
                delta((b, next), -1);
                delta((new, next), 1);
            }
            ids[w] = new;
            i += 2;
            changed = true;
        } else {
            ids[w] = ids[i];
            i += 1;
        }
        w += 1;
    }
    ids.truncate(w);
    changed
}

/// Learns merges until the vocabulary has `vocab_size` tokens (or no pair is left to merge).
/// `words[i]` holds byte values (0..=255) of unique chunk i, `counts[i]` how often it occurs.
pub fn train(mut words: Vec<Vec<u32>>, counts: Vec<i64>, vocab_size: usize) -> Trained {
    assert_eq!(words.len(), counts.len());
    let mut vocab: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
    let mut by_bytes: AHashMap<Vec<u8>, u32> = vocab.iter().enumerate().map(|(i, v)| (v.clone(), i as u32)).collect();
    let mut merges = Vec::new();

    let mut pair_counts: AHashMap<Pair, i64> = AHashMap::new();
    let mut where_: AHashMap<Pair, Vec<u32>> = AHashMap::new();
    for (wi, (w, &c)) in words.iter().zip(&counts).enumerate() {
        for p in w.windows(2) {
            let pair = (p[0], p[1]);
            *pair_counts.entry(pair).or_insert(0) += c;
            where_.entry(pair).or_default().push(wi as u32);
        }
    }
    let mut heap: OctonaryHeap<Entry> =
        pair_counts.iter().filter(|(_, &c)| c > 0).map(|(&pair, &count)| Entry { count, pair }).collect();

    let mut deltas: AHashMap<Pair, i64> = AHashMap::new();
    let mut grown: Vec<(Pair, u32)> = Vec::new();
    while vocab.len() < vocab_size {
        let Some(top) = heap.pop() else { break };
        let current = pair_counts.get(&top.pair).copied().unwrap_or(0);
        if current != top.count {
            if current > 0 {
                heap.push(Entry { count: current, pair: top.pair });
            }
            continue;
        }
        let (a, b) = top.pair;
        let mut bytes = vocab[a as usize].clone();
        bytes.extend_from_slice(&vocab[b as usize]);
        let id = match by_bytes.get(&bytes) {
            Some(&existing) => existing,
            None => {
                let id = vocab.len() as u32;
                by_bytes.insert(bytes.clone(), id);
                vocab.push(bytes);
                id
            }
        };
        merges.push(Merge { pair: top.pair, id });

        // Rewrite the words that (may) contain the pair; collect the exact count changes.
        let mut touched: Vec<u32> = where_.remove(&top.pair).unwrap_or_default();
        touched.sort_unstable();
        touched.dedup();
        deltas.clear();
        grown.clear();
        for wi in touched {
            let c = counts[wi as usize];
            merge_word(&mut words[wi as usize], a, b, id, |p, d| {
                *deltas.entry(p).or_insert(0) += d * c;
                if d > 0 {
                    grown.push((p, wi));
                }
            });
        }
        for &(p, wi) in &grown {
            where_.entry(p).or_default().push(wi);
        }
        for (&p, &d) in &deltas {
            if d == 0 {
                continue;
            }
            let c = pair_counts.entry(p).or_insert(0);
            *c += d;
            if d > 0 {
                heap.push(Entry { count: *c, pair: p });
            }
        }
    }
    Trained { merges, vocab }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ahash::AHashSet;

    fn recount(words: &[Vec<u32>]) -> AHashMap<Pair, i64> {
        let mut m = AHashMap::new();
        for w in words {
            for p in w.windows(2) {
                *m.entry((p[0], p[1])).or_insert(0) += 1;
            }
        }
        m
    }

    #[test]
    fn merge_word_deltas_match_recount() {
        let cases: Vec<Vec<u32>> = vec![
            vec![1, 2, 1, 2],
            vec![1, 1, 1],
            vec![1, 1, 1, 1],
            vec![3, 1, 2, 2, 1, 2, 1],
            vec![1, 2],
            vec![2, 1],
        ];
        for (a, b) in [(1, 2), (1, 1), (2, 1)] {
            for case in &cases {
                let before = recount(&[case.clone()]);
                let mut w = case.clone();
                let mut d: AHashMap<Pair, i64> = AHashMap::new();
                merge_word(&mut w, a, b, 9, |p, x| *d.entry(p).or_insert(0) += x);
                let after = recount(&[w.clone()]);
                let mut keys: AHashSet<Pair> = before.keys().copied().collect();
                keys.extend(after.keys().copied());
                for k in keys {
                    let want = after.get(&k).unwrap_or(&0) - before.get(&k).unwrap_or(&0);
                    assert_eq!(*d.get(&k).unwrap_or(&0), want, "case {case:?} pair {k:?}");
                }
            }
        }
    }

    #[test]
    fn merge_word_left_to_right() {
        let mut w = vec![1, 1, 1];
        merge_word(&mut w, 1, 1, 7, |_, _| {});
        assert_eq!(w, vec![7, 1]);
    }

    /// The slow, obvious trainer: full recount each merge, same tie rule and same dedup rule.
    fn train_naive(mut words: Vec<Vec<u32>>, counts: Vec<i64>, vocab_size: usize) -> Trained {
        let mut vocab: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
        let mut merges = Vec::new();
        while vocab.len() < vocab_size {
            let mut m: AHashMap<Pair, i64> = AHashMap::new();
            for (w, &c) in words.iter().zip(&counts) {
                for p in w.windows(2) {
                    *m.entry((p[0], p[1])).or_insert(0) += c;
                }
            }
            let Some((&pair, _)) = m.iter().max_by(|x, y| x.1.cmp(y.1).then_with(|| y.0.cmp(x.0))) else { break };
            let mut bytes = vocab[pair.0 as usize].clone();
            bytes.extend_from_slice(&vocab[pair.1 as usize]);
            let id = match vocab.iter().position(|v| *v == bytes) {
                Some(i) => i as u32,
                None => {
                    vocab.push(bytes);
                    (vocab.len() - 1) as u32
                }
            };
            merges.push(Merge { pair, id });
            for w in words.iter_mut() {
                merge_word(w, pair.0, pair.1, id, |_, _| {});
            }
        }
        Trained { merges, vocab }
    }

    fn lcg_words(seed: u64, n: usize) -> (Vec<Vec<u32>>, Vec<i64>) {
        let mut s = seed;
        let mut next = move || {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (s >> 33) as u32
        };
        let mut words = Vec::new();
        let mut counts = Vec::new();
        for _ in 0..n {
            let len = 1 + next() % 12;
            words.push((0..len).map(|_| 97 + next() % 4).collect());
            counts.push(1 + (next() % 5) as i64);
        }
        (words, counts)
    }

    #[test]
    fn incremental_equals_naive() {
        for seed in 0..20 {
            let (w, c) = lcg_words(seed, 60);
            let fast = train(w.clone(), c.clone(), 330);
            let slow = train_naive(w, c, 330);
            assert_eq!(fast.merges, slow.merges, "seed {seed}");
            assert_eq!(fast.vocab, slow.vocab);
        }
    }

    #[test]
    fn tie_break_smallest_pair() {
        // "ab" and "cd" both occur once: (97, 98) < (99, 100) wins.
        let t = train(vec![vec![99, 100], vec![97, 98]], vec![1, 1], 257);
        assert_eq!(t.merges[0].pair, (97, 98));
        assert_eq!(t.vocab[256], b"ab".to_vec());
    }

    #[test]
    fn vocab_is_a_bijection() {
        for seed in 0..20 {
            let (w, c) = lcg_words(seed + 100, 80);
            let t = train(w, c, 400);
            let uniq: AHashSet<&Vec<u8>> = t.vocab.iter().collect();
            assert_eq!(uniq.len(), t.vocab.len());
        }
    }
}
