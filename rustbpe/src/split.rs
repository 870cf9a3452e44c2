//! Cutting text into chunks with the split pattern. BPE never merges across chunk boundaries.

use crate::fastsplit::FastSplitter;

/// A compiled split pattern: the hand-written scanner when the pattern is one it knows, else fancy-regex.
pub enum Splitter {
    Fast(FastSplitter),
    Regex(fancy_regex::Regex),
}

impl Splitter {
    pub fn new(pattern: &str) -> Result<Self, String> {
        if let Some(fast) = FastSplitter::for_pattern(pattern) {
            return Ok(Splitter::Fast(fast));
        }
        Self::regex(pattern)
    }

    /// Always the regex engine (used by tests and benchmarks to check the scanner against it).
    pub fn regex(pattern: &str) -> Result<Self, String> {
        fancy_regex::Regex::new(pattern)
            .map(Splitter::Regex)
            .map_err(|e| format!("invalid split pattern: {e}"))
    }

    pub fn is_fast(&self) -> bool {
        matches!(self, Splitter::Fast(_))
    }

    /// Calls `f` on every chunk of `text`, in order. Chunks tile the text exactly.
    pub fn for_each<'t>(&self, text: &'t str, mut f: impl FnMut(&'t str)) -> Result<(), String> {
        match self {
            Splitter::Fast(s) => {
                s.for_each(text, f);
                Ok(())
            }
            Splitter::Regex(re) => {
                for m in re.find_iter(text) {
                    let m = m.map_err(|e| format!("regex error while splitting: {e}"))?;
                    f(m.as_str());
                }
                Ok(())
            }
        }
    }

    pub fn split<'t>(&self, text: &'t str) -> Result<Vec<&'t str>, String> {
        let mut out = Vec::new();
        self.for_each(text, |c| out.push(c))?;
        Ok(out)
    }
}
