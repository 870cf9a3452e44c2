//! The Python face of the crate: `rustbpe.Tokenizer`.

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};
use rayon::prelude::*;

use crate::count::{count_batch, into_words, ChunkCounts};
use crate::encode::Vocab;
use crate::split::Splitter;
use crate::train::{train, Merge};
use crate::GPT4_PATTERN;

/// A str from Python as Rust UTF-8. Lone surrogates cannot be UTF-8: like tiktoken, each becomes U+FFFD.
fn to_rust_string(obj: &Bound<'_, PyAny>) -> PyResult<String> {
    let s = obj
        .cast::<PyString>()
        .map_err(|_| PyTypeError::new_err(format!("expected str, got {}", obj.get_type().name().map(|n| n.to_string()).unwrap_or_default())))?;
    match s.to_str() {
        Ok(t) => Ok(t.to_owned()),
        Err(_) => {
            let fixed = s.call_method1("encode", ("utf-16", "surrogatepass"))?.call_method1("decode", ("utf-16", "replace"))?;
            Ok(fixed.cast::<PyString>()?.to_str()?.to_owned())
        }
    }
}

fn split_err(e: String) -> PyErr {
    PyValueError::new_err(e)
}

/// Byte-level BPE: train on an iterator of str, then encode/decode and export tiktoken ranks.
#[pyclass(module = "rustbpe")]
pub struct Tokenizer {
    pattern: String,
    splitter: Splitter,
    merges: Vec<Merge>,
    vocab: Vocab,
}

#[pymethods]
impl Tokenizer {
    #[new]
    fn new() -> Self {
        Tokenizer {
            pattern: GPT4_PATTERN.to_string(),
            splitter: Splitter::new(GPT4_PATTERN).expect("the GPT-4 pattern compiles"),
            merges: Vec::new(),
            vocab: Vocab::bytes_only(),
        }
    }

    /// Learns merges from an iterator of str until the vocabulary has `vocab_size` tokens.
    /// Texts are pulled `buffer_size` at a time; each batch is split and counted in parallel with the
    /// GIL released. If the iterator raises, the error propagates and the tokenizer is unchanged.
    #[pyo3(signature = (iterator, vocab_size, buffer_size = 8192, pattern = None))]
    fn train_from_iterator(
        &mut self,
        py: Python<'_>,
        iterator: &Bound<'_, PyAny>,
        vocab_size: usize,
        buffer_size: usize,
        pattern: Option<String>,
    ) -> PyResult<()> {
        if vocab_size < 256 {
            return Err(PyValueError::new_err(format!("vocab_size must be at least 256 (one token per byte), got {vocab_size}")));
        }
        let pattern = pattern.unwrap_or_else(|| GPT4_PATTERN.to_string());
        let splitter = Splitter::new(&pattern).map_err(split_err)?;
        let buffer_size = buffer_size.max(1);
        let mut counts = ChunkCounts::default();
        let mut buffer: Vec<String> = Vec::with_capacity(buffer_size);
        let mut it = iterator.try_iter()?;
        let mut exhausted = false;
        while !exhausted {
            buffer.clear();
            while buffer.len() < buffer_size {
                match it.next() {
                    Some(item) => buffer.push(to_rust_string(&item?)?),
                    None => {
                        exhausted = true;
                        break;
                    }
                }
            }
            let (sp, buf, cnt) = (&splitter, &buffer, &mut counts);
            py.detach(move || count_batch(sp, buf, cnt)).map_err(split_err)?;
        }
        let trained = py.detach(move || {
            let (words, weights) = into_words(counts);
            train(words, weights, vocab_size)
        });
        self.pattern = pattern;
        self.splitter = splitter;
        self.merges = trained.merges;
        self.vocab = Vocab::from_tokens(trained.vocab);
        Ok(())
    }

    /// Number of tokens (256 before training).
    #[getter]
    fn vocab_size(&self) -> usize {
        self.vocab.tokens.len()
    }

    fn get_pattern(&self) -> String {
        self.pattern.clone()
    }

    /// `[(token_bytes, rank), ...]` in rank order: the `mergeable_ranks` of a tiktoken Encoding.
    fn get_mergeable_ranks<'py>(&self, py: Python<'py>) -> Vec<(Bound<'py, PyBytes>, u32)> {
        self.vocab.tokens.iter().enumerate().map(|(i, t)| (PyBytes::new(py, t), i as u32)).collect()
    }

    /// `[((a, b), id), ...]` in the order they were learned.
    fn get_merges(&self) -> Vec<((u32, u32), u32)> {
        self.merges.iter().map(|m| (m.pair, m.id)).collect()
    }

    /// The chunks the split pattern cuts `text` into.
    fn split(&self, py: Python<'_>, text: &Bound<'_, PyAny>) -> PyResult<Vec<String>> {
        let text = to_rust_string(text)?;
        let sp = &self.splitter;
        let pieces = py.detach(|| sp.split(&text).map(|v| v.into_iter().map(str::to_owned).collect::<Vec<_>>()));
        pieces.map_err(split_err)
    }

    /// Whether the split pattern runs through the hand-written scanner (else fancy-regex).
    fn uses_fast_split(&self) -> bool {
        self.splitter.is_fast()
    }

    fn encode(&self, py: Python<'_>, text: &Bound<'_, PyAny>) -> PyResult<Vec<u32>> {
        let text = to_rust_string(text)?;
        let (sp, v) = (&self.splitter, &self.vocab);
        py.detach(|| v.encode(sp, &text)).map_err(split_err)
    }

    /// Encodes many texts in parallel (rayon), GIL released.
    fn batch_encode(&self, py: Python<'_>, texts: &Bound<'_, PyAny>) -> PyResult<Vec<Vec<u32>>> {
        let texts: Vec<String> = texts.try_iter()?.map(|t| to_rust_string(&t?)).collect::<PyResult<_>>()?;
        let (sp, v) = (&self.splitter, &self.vocab);
        py.detach(|| texts.par_iter().map(|t| v.encode(sp, t)).collect::<Result<Vec<_>, _>>()).map_err(split_err)
    }

    /// Ids back to text; byte sequences that are not valid UTF-8 become U+FFFD, never an error.
    fn decode(&self, ids: Vec<i64>) -> PyResult<String> {
        let n = self.vocab.tokens.len() as i64;
        if let Some(&bad) = ids.iter().find(|&&i| i < 0 || i >= n) {
            return Err(PyValueError::new_err(format!("unknown token id {bad} (vocab size {n})")));
        }
        let ids: Vec<u32> = ids.into_iter().map(|i| i as u32).collect();
        let bytes = self.vocab.decode_bytes(&ids).map_err(|id| PyValueError::new_err(format!("unknown token id {id}")))?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    fn __repr__(&self) -> String {
        format!("rustbpe.Tokenizer(vocab_size={}, merges={})", self.vocab.tokens.len(), self.merges.len())
    }
}

#[pymodule]
fn rustbpe(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Tokenizer>()?;
    m.add("GPT4_PATTERN", GPT4_PATTERN)?;
    Ok(())
}
