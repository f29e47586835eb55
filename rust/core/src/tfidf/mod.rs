//! TF-IDF of short texts, equal to scikit-learn's `TfidfVectorizer` with the same settings.
//!
//! Tokenizer: the text is lowercased as Python's `str.lower` does (full case mapping, final
//! sigma), then split into tokens as the regex `(?u)\b\w\w+\b`: maximal runs of at least two
//! characters that Python's `re` calls word characters. Both come from tables generated from
//! the Python that runs the pipeline (`gen_unicode_tables.py`), so the split is the same on
//! non-ASCII text too.
//!
//! Vocabulary: terms sorted by code point; pruned by document frequency (`min_df`, `max_df`,
//! counts or proportions) and then to the `max_features` most frequent terms (ties at the cut go
//! to the earlier term; scikit-learn breaks them with an unstable sort).
//! Weights: `tf * idf`, `idf = ln((1 + n) / (1 + df)) + 1` (smooth) or `ln(n / df) + 1`, optional
//! `1 + ln(tf)`, rows l2 (or l1) normalized, all in f64 as scikit-learn does.
//!
//! Fitting and transforming run in parallel over blocks of documents (rayon).

mod unicode_tables;

use rayon::prelude::*;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use crate::sparse::Csr;
use crate::{Error, Result};

pub use unicode_tables::UNICODE_VERSION;

/// Documents per parallel block.
const BLOCK: usize = 2048;

#[inline]
fn in_ranges(table: &[(u32, u32)], c: u32) -> bool {
    table
        .binary_search_by(|&(a, b)| {
            if b < c {
                std::cmp::Ordering::Less
            } else if a > c {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        })
        .is_ok()
}

/// Python's `re` `\w` (Unicode): `str.isalnum()` or `_`.
#[inline]
pub fn is_word_char(c: char) -> bool {
    if c.is_ascii() {
        c.is_ascii_alphanumeric() || c == '_'
    } else {
        in_ranges(&unicode_tables::WORD, c as u32)
    }
}

fn is_cased(c: char) -> bool {
    if c.is_ascii() {
        c.is_ascii_alphabetic()
    } else {
        in_ranges(&unicode_tables::CASED, c as u32)
    }
}

fn is_case_ignorable(c: char) -> bool {
    if c.is_ascii() {
        unicode_tables::ASCII_CASE_IGNORABLE.contains(&(c as u8))
    } else {
        in_ranges(&unicode_tables::CASE_IGNORABLE, c as u32)
    }
}

/// CPython's final-sigma rule for the capital sigma at byte `i` of `s`.
fn final_sigma(s: &str, i: usize) -> bool {
    let before = s[..i].chars().rev().find(|&c| !is_case_ignorable(c));
    if !before.is_some_and(is_cased) {
        return false;
    }
    let after = s[i + 'Σ'.len_utf8()..]
        .chars()
        .find(|&c| !is_case_ignorable(c));
    !after.is_some_and(is_cased)
}

/// Appends Python's `s.lower()` to `out`.
pub fn lowercase_into(s: &str, out: &mut String) {
    if s.is_ascii() {
        out.extend(s.bytes().map(|b| b.to_ascii_lowercase() as char));
        return;
    }
    for (i, c) in s.char_indices() {
        if c.is_ascii() {
            out.push(c.to_ascii_lowercase());
        } else if c == 'Σ' {
            out.push(if final_sigma(s, i) { 'ς' } else { 'σ' });
        } else {
            match unicode_tables::LOWER.binary_search_by_key(&(c as u32), |&(k, _)| k) {
                Ok(p) => out.push_str(unicode_tables::LOWER[p].1),
                Err(_) => out.push(c),
            }
        }
    }
}

/// Calls `f` on every token of `text` (already lowercased if wanted): maximal runs of >= 2 word
/// characters.
pub fn for_each_token<'a>(text: &'a str, mut f: impl FnMut(&'a str)) {
    if text.is_ascii() {
        let b = text.as_bytes();
        let mut start = None;
        for (i, &c) in b.iter().enumerate() {
            let w = c.is_ascii_alphanumeric() || c == b'_';
            match (w, start) {
                (true, None) => start = Some(i),
                (false, Some(s)) => {
                    if i - s >= 2 {
                        f(&text[s..i]);
                    }
                    start = None;
                }
                _ => {}
            }
        }
        if let Some(s) = start {
            if b.len() - s >= 2 {
                f(&text[s..]);
            }
        }
        return;
    }
    let mut start: Option<(usize, usize)> = None; // (byte offset, chars so far)
    for (i, c) in text.char_indices() {
        let w = is_word_char(c);
        match (w, start.as_mut()) {
            (true, None) => start = Some((i, 1)),
            (true, Some(run)) => run.1 += 1,
            (false, Some(&mut (s, n))) => {
                if n >= 2 {
                    f(&text[s..i]);
                }
                start = None;
            }
            (false, None) => {}
        }
    }
    if let Some((s, n)) = start {
        if n >= 2 {
            f(&text[s..]);
        }
    }
}

/// The tokens of a document, as scikit-learn's analyzer returns them.
pub fn tokenize(text: &str, lowercase: bool) -> Vec<String> {
    let mut buf = String::new();
    let t = if lowercase {
        lowercase_into(text, &mut buf);
        buf.as_str()
    } else {
        text
    };
    let mut out = Vec::new();
    for_each_token(t, |tok| out.push(tok.to_string()));
    out
}

/// A document-frequency bound: an absolute count of documents or a proportion of them.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DocFreq {
    Count(usize),
    Proportion(f64),
}

impl DocFreq {
    fn validate(&self, arg: &'static str) -> Result<()> {
        match *self {
            DocFreq::Proportion(p) if !(0.0..=1.0).contains(&p) => Err(Error::invalid(
                arg,
                format!("a proportion must be in [0, 1], got {p}"),
            )),
            DocFreq::Count(0) if arg == "max_df" => {
                Err(Error::invalid(arg, "a count must be >= 1"))
            }
            _ => Ok(()),
        }
    }

    fn docs(&self, n_docs: usize) -> f64 {
        match *self {
            DocFreq::Count(c) => c as f64,
            DocFreq::Proportion(p) => p * n_docs as f64,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Norm {
    L1,
    L2,
}

/// The settings of a vectorizer; the defaults are scikit-learn's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TfidfParams {
    pub min_df: DocFreq,
    pub max_df: DocFreq,
    pub max_features: Option<usize>,
    pub lowercase: bool,
    pub norm: Option<Norm>,
    pub smooth_idf: bool,
    pub sublinear_tf: bool,
}

impl Default for TfidfParams {
    fn default() -> Self {
        TfidfParams {
            min_df: DocFreq::Count(1),
            max_df: DocFreq::Proportion(1.0),
            max_features: None,
            lowercase: true,
            norm: Some(Norm::L2),
            smooth_idf: true,
            sublinear_tf: false,
        }
    }
}

impl TfidfParams {
    pub fn validate(&self) -> Result<()> {
        self.min_df.validate("min_df")?;
        self.max_df.validate("max_df")?;
        if self.max_features == Some(0) {
            return Err(Error::invalid("max_features", "must be >= 1 or None"));
        }
        Ok(())
    }
}

/// Term counts of a block of documents: per document a run of `(term id, count)` sorted by id.
struct CountBlock {
    offsets: Vec<usize>,
    entries: Vec<(u32, u32)>,
}

/// Counts the tokens of each document of a block, with term ids given by `id_of` (None drops
/// the token). `ids` is scratch space.
fn count_block(
    docs: &[&str],
    lowercase: bool,
    mut id_of: impl FnMut(&str) -> Option<u32>,
) -> CountBlock {
    let mut buf = String::new();
    let mut ids: Vec<u32> = Vec::new();
    let mut offsets = Vec::with_capacity(docs.len() + 1);
    let mut entries = Vec::new();
    offsets.push(0);
    for doc in docs {
        buf.clear();
        let text = if lowercase {
            lowercase_into(doc, &mut buf);
            buf.as_str()
        } else {
            doc
        };
        ids.clear();
        for_each_token(text, |tok| {
            if let Some(id) = id_of(tok) {
                ids.push(id);
            }
        });
        ids.sort_unstable();
        let mut i = 0;
        while i < ids.len() {
            let mut j = i + 1;
            while j < ids.len() && ids[j] == ids[i] {
                j += 1;
            }
            entries.push((ids[i], (j - i) as u32));
            i = j;
        }
        offsets.push(entries.len());
    }
    CountBlock { offsets, entries }
}

/// A fitted vectorizer: the vocabulary (column order = sorted terms) and the idf weights.
#[derive(Debug, Clone)]
pub struct TfidfModel {
    pub params: TfidfParams,
    /// Terms by column.
    pub vocabulary: Vec<String>,
    pub idf: Vec<f64>,
    index: FxHashMap<String, u32>,
}

/// The serialized form of a [`TfidfModel`].
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TfidfModelJson {
    format: String,
    params: TfidfParams,
    vocabulary: Vec<String>,
    idf: Vec<f64>,
}

const JSON_FORMAT: &str = "feedrank.tfidf/1";

impl TfidfModel {
    /// Learns the vocabulary and idf of `docs`, and returns the model with the TF-IDF matrix of
    /// `docs` (computed in the same pass, as scikit-learn's `fit_transform`).
    pub fn fit_transform(docs: &[&str], params: TfidfParams) -> Result<(TfidfModel, Csr<f64>)> {
        params.validate()?;
        let n_docs = docs.len();
        // 1. count each block with block-local term ids. Few large blocks: every block keeps
        // its own vocabulary, so smaller blocks would repeat the common terms many times.
        let block = (n_docs / (rayon::current_num_threads() * 4)).max(BLOCK);
        let blocks: Vec<(Vec<String>, CountBlock)> = docs
            .par_chunks(block)
            .map(|chunk| {
                let mut local: FxHashMap<String, u32> = FxHashMap::default();
                let counts = count_block(chunk, params.lowercase, |tok| {
                    if let Some(&id) = local.get(tok) {
                        return Some(id);
                    }
                    let id = local.len() as u32;
                    local.insert(tok.to_string(), id);
                    Some(id)
                });
                let mut terms = vec![String::new(); local.len()];
                for (t, id) in local {
                    terms[id as usize] = t;
                }
                (terms, counts)
            })
            .collect();
        // 2. merge the local vocabularies: provisional global ids in order of first appearance
        let mut global: FxHashMap<&str, u32> = FxHashMap::default();
        let mut terms: Vec<&str> = Vec::new();
        let maps: Vec<Vec<u32>> = blocks
            .iter()
            .map(|(local_terms, _)| {
                local_terms
                    .iter()
                    .map(|t| {
                        *global.entry(t.as_str()).or_insert_with(|| {
                            terms.push(t.as_str());
                            (terms.len() - 1) as u32
                        })
                    })
                    .collect()
            })
            .collect();
        if terms.is_empty() {
            return Err(Error::invalid(
                "docs",
                "empty vocabulary; perhaps the documents only contain stop words",
            ));
        }
        let n_terms = terms.len();
        let mut df = vec![0usize; n_terms];
        let mut tf = vec![0u64; n_terms];
        for ((_, block), map) in blocks.iter().zip(&maps) {
            for &(id, c) in &block.entries {
                let g = map[id as usize] as usize;
                df[g] += 1;
                tf[g] += c as u64;
            }
        }
        // 3. prune and order the vocabulary
        let high = params.max_df.docs(n_docs);
        let low = params.min_df.docs(n_docs);
        if high < low {
            return Err(Error::invalid(
                "max_df",
                "max_df corresponds to < documents than min_df",
            ));
        }
        let mut order: Vec<u32> = (0..n_terms as u32).collect();
        order.par_sort_unstable_by(|&a, &b| terms[a as usize].cmp(terms[b as usize]));
        let mut kept: Vec<u32> = order
            .into_iter()
            .filter(|&t| {
                let d = df[t as usize] as f64;
                d <= high && d >= low
            })
            .collect();
        if let Some(limit) = params.max_features {
            if kept.len() > limit {
                let mut by_tf = kept.clone();
                // stable: ties keep vocabulary order
                by_tf.sort_by(|&a, &b| tf[b as usize].cmp(&tf[a as usize]));
                by_tf.truncate(limit);
                let mut keep = vec![false; n_terms];
                for t in by_tf {
                    keep[t as usize] = true;
                }
                kept.retain(|&t| keep[t as usize]);
            }
        }
        if kept.is_empty() {
            return Err(Error::invalid(
                "min_df",
                "After pruning, no terms remain. Try a lower min_df or a higher max_df.",
            ));
        }
        let mut column = vec![u32::MAX; n_terms];
        for (col, &t) in kept.iter().enumerate() {
            column[t as usize] = col as u32;
        }
        let idf: Vec<f64> = kept
            .iter()
            .map(|&t| idf_of(n_docs, df[t as usize], params.smooth_idf))
            .collect();
        let vocabulary: Vec<String> = kept
            .iter()
            .map(|&t| terms[t as usize].to_string())
            .collect();
        // 4. the matrix, block by block
        let rows: Vec<Csr<f64>> = blocks
            .par_iter()
            .zip(maps.par_iter())
            .map(|((_, block), map)| {
                weigh_block(block, |id| column[map[id as usize] as usize], &idf, &params)
            })
            .collect();
        let x = stack(rows, vocabulary.len());
        let index = build_index(&vocabulary);
        Ok((
            TfidfModel {
                params,
                vocabulary,
                idf,
                index,
            },
            x,
        ))
    }

    /// The TF-IDF matrix of `docs` under this vocabulary and idf (unknown terms are ignored).
    pub fn transform(&self, docs: &[&str]) -> Csr<f64> {
        let rows: Vec<Csr<f64>> = docs
            .par_chunks(BLOCK)
            .map(|chunk| {
                let block = count_block(chunk, self.params.lowercase, |tok| {
                    self.index.get(tok).copied()
                });
                weigh_block(&block, |id| id, &self.idf, &self.params)
            })
            .collect();
        stack(rows, self.vocabulary.len())
    }

    /// The column of a term, if it is in the vocabulary.
    pub fn column_of(&self, term: &str) -> Option<u32> {
        self.index.get(term).copied()
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(&TfidfModelJson {
            format: JSON_FORMAT.into(),
            params: self.params.clone(),
            vocabulary: self.vocabulary.clone(),
            idf: self.idf.clone(),
        })
        .expect("a TF-IDF model always serializes")
    }

    pub fn from_json(s: &str) -> Result<TfidfModel> {
        let m: TfidfModelJson =
            serde_json::from_str(s).map_err(|e| Error::invalid("s", e.to_string()))?;
        if m.format != JSON_FORMAT {
            return Err(Error::invalid(
                "s",
                format!("format {:?}, this build reads {JSON_FORMAT:?}", m.format),
            ));
        }
        m.params.validate()?;
        if m.vocabulary.len() != m.idf.len() {
            return Err(Error::invalid("s", "vocabulary and idf differ in length"));
        }
        if m.vocabulary.windows(2).any(|w| w[0] >= w[1]) {
            return Err(Error::invalid("s", "vocabulary must be sorted and unique"));
        }
        if m.idf.iter().any(|x| !x.is_finite()) {
            return Err(Error::invalid("s", "idf values must be finite"));
        }
        let index = build_index(&m.vocabulary);
        Ok(TfidfModel {
            params: m.params,
            vocabulary: m.vocabulary,
            idf: m.idf,
            index,
        })
    }
}

fn idf_of(n_docs: usize, df: usize, smooth: bool) -> f64 {
    let s = smooth as usize;
    ((n_docs + s) as f64 / (df + s) as f64).ln() + 1.0
}

fn build_index(vocabulary: &[String]) -> FxHashMap<String, u32> {
    vocabulary
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect()
}

/// TF-IDF rows of a counted block; `column` maps the block's term ids to columns (`u32::MAX`
/// drops the term).
fn weigh_block(
    block: &CountBlock,
    column: impl Fn(u32) -> u32,
    idf: &[f64],
    params: &TfidfParams,
) -> Csr<f64> {
    let n = block.offsets.len() - 1;
    let mut indptr = Vec::with_capacity(n + 1);
    let mut indices: Vec<u32> = Vec::with_capacity(block.entries.len());
    let mut data: Vec<f64> = Vec::with_capacity(block.entries.len());
    indptr.push(0);
    let mut row: Vec<(u32, u32)> = Vec::new();
    for d in 0..n {
        row.clear();
        for &(id, c) in &block.entries[block.offsets[d]..block.offsets[d + 1]] {
            let col = column(id);
            if col != u32::MAX {
                row.push((col, c));
            }
        }
        row.sort_unstable_by_key(|e| e.0);
        let start = data.len();
        for &(col, c) in &row {
            let tf = if params.sublinear_tf {
                (c as f64).ln() + 1.0
            } else {
                c as f64
            };
            indices.push(col);
            data.push(tf * idf[col as usize]);
        }
        let vals = &mut data[start..];
        let norm = match params.norm {
            Some(Norm::L2) => vals.iter().map(|v| v * v).sum::<f64>().sqrt(),
            Some(Norm::L1) => vals.iter().map(|v| v.abs()).sum::<f64>(),
            None => 0.0,
        };
        if norm > 0.0 {
            for v in vals.iter_mut() {
                *v /= norm;
            }
        }
        indptr.push(indices.len());
    }
    Csr {
        nrows: n,
        ncols: 0,
        indptr,
        indices,
        data,
    }
}

/// Concatenates row blocks into one matrix.
fn stack(blocks: Vec<Csr<f64>>, ncols: usize) -> Csr<f64> {
    let nrows = blocks.iter().map(|b| b.nrows).sum();
    let nnz = blocks.iter().map(|b| b.indices.len()).sum();
    let mut indptr = Vec::with_capacity(nrows + 1);
    let mut indices = Vec::with_capacity(nnz);
    let mut data = Vec::with_capacity(nnz);
    indptr.push(0);
    for b in blocks {
        let base = indices.len();
        indptr.extend(b.indptr[1..].iter().map(|&p| p + base));
        indices.extend_from_slice(&b.indices);
        data.extend_from_slice(&b.data);
    }
    Csr {
        nrows,
        ncols,
        indptr,
        indices,
        data,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_runs_of_two_or_more_word_chars() {
        assert_eq!(
            tokenize("Hello, World! a bb_c 12 x-yz", true),
            vec!["hello", "world", "bb_c", "12", "yz"]
        );
        // non-ASCII: letters and digits of any script, marks split words as Python's \w does
        assert_eq!(
            tokenize("Ünïcödé ÉTÉ 東京 ٣٤", true),
            vec!["ünïcödé", "été", "東京", "٣٤"]
        );
    }

    #[test]
    fn lowercase_follows_python() {
        let mut s = String::new();
        lowercase_into("ΟΔΟΣ ΟΔΟΣ. Σ İ", &mut s);
        assert_eq!(s, "οδος οδος. σ i\u{307}");
    }

    #[test]
    fn fit_transform_hand_example() {
        let docs = ["the cat sat", "the dog", "cat cat"];
        let (m, x) = TfidfModel::fit_transform(&docs, TfidfParams::default()).unwrap();
        assert_eq!(m.vocabulary, vec!["cat", "dog", "sat", "the"]);
        // idf(cat) = ln(4/3) + 1, df(cat) = 2
        assert!((m.idf[0] - ((4.0f64 / 3.0).ln() + 1.0)).abs() < 1e-15);
        // row 2 is "cat cat" -> only cat, normalized to 1
        assert_eq!(&x.indices[x.indptr[2]..x.indptr[3]], &[0]);
        assert!((x.data[x.indptr[2]] - 1.0).abs() < 1e-15);
        let y = m.transform(&["cat unknown", ""]);
        assert_eq!(y.nrows, 2);
        assert_eq!(y.indptr, vec![0, 1, 1]);
    }

    #[test]
    fn pruning_and_errors() {
        let docs = ["aa bb", "aa cc", "aa dd"];
        let p = TfidfParams {
            max_df: DocFreq::Count(2),
            ..Default::default()
        };
        let (m, _) = TfidfModel::fit_transform(&docs, p).unwrap();
        assert_eq!(m.vocabulary, vec!["bb", "cc", "dd"]);
        let p = TfidfParams {
            min_df: DocFreq::Count(4),
            ..Default::default()
        };
        assert!(TfidfModel::fit_transform(&docs, p).is_err());
        assert!(TfidfModel::fit_transform(&["a b"], TfidfParams::default())
            .unwrap_err()
            .to_string()
            .starts_with("docs: empty vocabulary"));
    }

    #[test]
    fn json_round_trip() {
        let docs = ["one two", "two three"];
        let (m, x) = TfidfModel::fit_transform(&docs, TfidfParams::default()).unwrap();
        let back = TfidfModel::from_json(&m.to_json()).unwrap();
        assert_eq!(back.vocabulary, m.vocabulary);
        assert_eq!(back.transform(&docs), x);
        assert!(TfidfModel::from_json("{}").is_err());
    }
}
