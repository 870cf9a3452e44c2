//! Counting chunks: a text corpus becomes a dictionary {chunk: how often it occurs}.
//!
//! Most of the corpus is repeats (" the", " of", "."), so BPE runs over the unique chunks weighted by
//! their counts. Each rayon worker counts its share of a batch into its own map; the maps are then merged.

use ahash::AHashMap;
use compact_str::CompactString;
use rayon::prelude::*;

use crate::split::Splitter;

pub type ChunkCounts = AHashMap<CompactString, i64>;

/// Counts the chunks of a batch of texts in parallel and adds them to `into`.
pub fn count_batch(splitter: &Splitter, texts: &[String], into: &mut ChunkCounts) -> Result<(), String> {
    let partial = texts
        .par_iter()
        .try_fold(ChunkCounts::default, |mut m, text| {
            splitter.for_each(text, |chunk| {
                *m.entry(CompactString::from(chunk)).or_insert(0) += 1;
            })?;
            Ok::<_, String>(m)
        })
        .try_reduce(ChunkCounts::default, |a, b| Ok(merge_counts(a, b)))?;
    if into.is_empty() {
        *into = partial;
    } else {
        for (k, v) in partial {
            *into.entry(k).or_insert(0) += v;
        }
    }
    Ok(())
}

fn merge_counts(a: ChunkCounts, b: ChunkCounts) -> ChunkCounts {
    let (mut big, small) = if a.len() >= b.len() { (a, b) } else { (b, a) };
    for (k, v) in small {
        *big.entry(k).or_insert(0) += v;
    }
    big
}

/// Turns the chunk dictionary into BPE's starting point: one byte sequence and one count per unique chunk.
/// Sorted by chunk so the result does not depend on hash order.
pub fn into_words(counts: ChunkCounts) -> (Vec<Vec<u32>>, Vec<i64>) {
    let mut items: Vec<(CompactString, i64)> = counts.into_iter().collect();
    items.sort_unstable_by(|x, y| x.0.as_bytes().cmp(y.0.as_bytes()));
    let words = items.iter().map(|(s, _)| s.as_bytes().iter().map(|&b| b as u32).collect()).collect();
    let counts = items.into_iter().map(|(_, c)| c).collect();
    (words, counts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::GPT4_PATTERN;

    #[test]
    fn counts_repeats_once() {
        let sp = Splitter::new(GPT4_PATTERN).unwrap();
        let mut m = ChunkCounts::default();
        count_batch(&sp, &["the cat the cat".to_string(), " the".to_string()], &mut m).unwrap();
        assert_eq!(m[" cat"], 2);
        assert_eq!(m[" the"], 2);
        assert_eq!(m["the"], 1);
        let (words, counts) = into_words(m);
        assert_eq!(words.len(), 3);
        assert_eq!(counts.iter().sum::<i64>(), 5);
    }
}
