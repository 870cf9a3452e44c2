//! rustbpe: byte-level BPE training that is fast enough to use on billions of characters.
//!
//! Design choices (each module holds one of them):
//! - `split`: text is cut into chunks by the GPT-4 style regex before BPE sees it; the default patterns
//!   run through a hand-written scanner (`fastsplit`) that is tested equal to the regex, any other
//!   pattern through `fancy-regex` (it needs look-ahead and possessive quantifiers).
//! - `count`: identical chunks are counted once (a dictionary chunk -> count), in parallel with rayon.
//! - `train`: merges update pair counts incrementally (only the words that contain the merged pair are
//!   touched) and pick the next pair from a lazy-deletion max-heap, never a full recount per merge.
//! - Tie rule, shared exactly with the Python reference `nanochat/bpe.py`: among pairs with the same
//!   count, the lexicographically smallest pair of token ids `(a, b)` wins.
//! - Byte strings stay unique: if a merged pair spells a byte string that is already a token, the pair
//!   merges into that token instead of minting a duplicate id, so the vocabulary is a bijection
//!   bytes <-> id that `tiktoken` can load as mergeable ranks.
//! - `encode`: the tiktoken rule (repeatedly merge the adjacent pair whose concatenation has the lowest
//!   rank, leftmost first), so our ids equal tiktoken's for the same ranks.
//! - `py`: the Python class `rustbpe.Tokenizer` (pyo3, abi3), releasing the GIL for all heavy work.

pub mod count;
pub mod encode;
pub mod fastsplit;
pub mod split;
pub mod train;

#[cfg(feature = "python")]
mod py;

/// The GPT-4 (cl100k_base) split pattern.
pub const GPT4_PATTERN: &str = r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+";
