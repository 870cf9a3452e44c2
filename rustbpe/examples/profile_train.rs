//! Times the phases of training on a text file (documents separated by NUL bytes), without Python:
//!     cargo run --release --example profile_train -- corpus.txt 32768
use std::time::Instant;

use rustbpe::count::{count_batch, into_words, ChunkCounts};
use rustbpe::split::Splitter;
use rustbpe::train::train;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let text = std::fs::read_to_string(&args[1]).expect("readable UTF-8 file");
    let vocab: usize = args.get(2).map(|v| v.parse().unwrap()).unwrap_or(32768);
    let pattern = rustbpe::GPT4_PATTERN.replace("{1,3}", "{1,2}");
    let docs: Vec<String> = text.split('\0').map(str::to_owned).collect();
    let splitter = Splitter::new(&pattern).unwrap();

    let t = Instant::now();
    let mut n = 0usize;
    for d in &docs {
        splitter.for_each(d, |_| n += 1).unwrap();
    }
    println!("split only (1 thread): {n} chunks in {:.3}s", t.elapsed().as_secs_f64());

    let t = Instant::now();
    let mut counts = ChunkCounts::default();
    count_batch(&splitter, &docs, &mut counts).unwrap();
    println!("split + count (rayon): {} distinct in {:.3}s", counts.len(), t.elapsed().as_secs_f64());

    let t = Instant::now();
    let (words, weights) = into_words(counts);
    println!("into_words: {:.3}s", t.elapsed().as_secs_f64());

    let t = Instant::now();
    let trained = train(words, weights, vocab);
    println!("train to {}: {} merges in {:.3}s", vocab, trained.merges.len(), t.elapsed().as_secs_f64());
}
