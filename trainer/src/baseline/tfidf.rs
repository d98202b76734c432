//! TF-IDF features: lowercase, tokens of 2+ word characters, scikit-learn's English stop words
//! removed, vocabulary = the `max_features` terms most frequent in the corpus, smoothed idf
//! (`ln((1+n)/(1+df)) + 1`), raw term counts × idf, rows L2-normalised.
use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

/// A sparse row: (feature index, value), sorted by index.
pub type SparseRow = Vec<(u32, f32)>;

fn stop_words() -> &'static HashSet<&'static str> {
    static WORDS: OnceLock<HashSet<&'static str>> = OnceLock::new();
    // scikit-learn's ENGLISH_STOP_WORDS (the Glasgow Information Retrieval Group list).
    WORDS.get_or_init(|| {
        include_str!("stop_words_en.txt")
            .lines()
            .filter(|w| !w.is_empty())
            .collect()
    })
}

/// Lowercased tokens of two or more word characters (letters, digits, underscore), stop words kept.
pub fn tokens(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .filter(|t| t.chars().nth(1).is_some())
        .map(str::to_lowercase)
}

pub struct TfidfVectorizer {
    vocabulary: HashMap<String, u32>,
    idf: Vec<f32>,
}

impl TfidfVectorizer {
    pub fn fit(texts: &[&str], max_features: usize) -> Self {
        let stop = stop_words();
        let mut term_freq: HashMap<String, u64> = HashMap::new();
        let mut doc_freq: HashMap<String, u64> = HashMap::new();
        for text in texts {
            let mut seen = HashSet::new();
            for t in tokens(text).filter(|t| !stop.contains(t.as_str())) {
                *term_freq.entry(t.clone()).or_default() += 1;
                if seen.insert(t.clone()) {
                    *doc_freq.entry(t).or_default() += 1;
                }
            }
        }
        let mut terms: Vec<(String, u64)> = term_freq.into_iter().collect();
        // Most frequent first; ties alphabetically, for a deterministic vocabulary.
        terms.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        terms.truncate(max_features);
        terms.sort_by(|a, b| a.0.cmp(&b.0));
        let n = texts.len() as f64;
        let idf = terms
            .iter()
            .map(|(t, _)| (((1.0 + n) / (1.0 + doc_freq[t] as f64)).ln() + 1.0) as f32)
            .collect();
        let vocabulary = terms
            .into_iter()
            .enumerate()
            .map(|(i, (t, _))| (t, i as u32))
            .collect();
        Self { vocabulary, idf }
    }

    pub fn num_features(&self) -> usize {
        self.idf.len()
    }

    pub fn transform(&self, texts: &[&str]) -> Vec<SparseRow> {
        texts
            .iter()
            .map(|text| {
                let mut counts: HashMap<u32, f32> = HashMap::new();
                for t in tokens(text) {
                    if let Some(&i) = self.vocabulary.get(&t) {
                        *counts.entry(i).or_default() += 1.0;
                    }
                }
                let mut row: SparseRow = counts
                    .into_iter()
                    .map(|(i, c)| (i, c * self.idf[i as usize]))
                    .collect();
                row.sort_by_key(|&(i, _)| i);
                let norm = row.iter().map(|&(_, v)| v * v).sum::<f32>().sqrt();
                if norm > 0.0 {
                    for (_, v) in &mut row {
                        *v /= norm;
                    }
                }
                row
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenizes_like_sklearn_default_pattern() {
        let t: Vec<String> = tokens("I'm SO happy—it's a 2nd try_again!").collect();
        assert_eq!(t, vec!["so", "happy", "it", "2nd", "try_again"]);
    }

    #[test]
    fn tfidf_drops_stop_words_limits_vocabulary_and_normalises() {
        let texts = ["the cat sat", "the cat ran", "a dog ran far", "cat cat"];
        let v = TfidfVectorizer::fit(&texts, 3);
        // "the" is a stop word; counts: cat 4, ran 2, sat 1, dog 1, far 1 → top 3 = cat, ran, dog (tie by name).
        let mut vocab: Vec<&String> = v.vocabulary.keys().collect();
        vocab.sort();
        assert_eq!(vocab, vec!["cat", "dog", "ran"]);
        let rows = v.transform(&["cat ran", "nothing here"]);
        let norm: f32 = rows[0].iter().map(|(_, x)| x * x).sum();
        assert!((norm - 1.0).abs() < 1e-6);
        assert!(rows[1].is_empty());
        // idf(cat) = ln(5/4)+1 < idf(ran) = ln(5/3)+1, so "ran" weighs more in "cat ran".
        let cat = rows[0]
            .iter()
            .find(|(i, _)| *i == v.vocabulary["cat"])
            .unwrap()
            .1;
        let ran = rows[0]
            .iter()
            .find(|(i, _)| *i == v.vocabulary["ran"])
            .unwrap()
            .1;
        assert!(ran > cat);
    }
}
