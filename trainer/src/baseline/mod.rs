//! The classic baseline: TF-IDF over the 5,000 most frequent terms (English stop words removed)
//! and one-vs-rest L2 logistic regression, as in scikit-learn's `TfidfVectorizer` +
//! `OneVsRestClassifier(LogisticRegression())`.
pub mod logreg;
pub mod tfidf;

use common::data::Example;

pub use logreg::{LogisticRegression, OneVsRest};
pub use tfidf::TfidfVectorizer;

/// A fitted baseline.
pub struct Baseline {
    pub vectorizer: TfidfVectorizer,
    pub classifier: OneVsRest,
}

impl Baseline {
    pub fn fit(train: &[Example], num_labels: usize, max_features: usize, c: f64) -> Self {
        let texts: Vec<&str> = train.iter().map(|e| e.text.as_str()).collect();
        let vectorizer = TfidfVectorizer::fit(&texts, max_features);
        let x = vectorizer.transform(&texts);
        let y: Vec<Vec<bool>> = (0..num_labels)
            .map(|j| {
                train
                    .iter()
                    .map(|e| e.labels.contains(&(j as u32)))
                    .collect()
            })
            .collect();
        let classifier = OneVsRest::fit(&x, vectorizer.num_features(), &y, c);
        Self {
            vectorizer,
            classifier,
        }
    }

    /// Probabilities, row-major `[examples × labels]`.
    pub fn predict_proba(&self, examples: &[Example]) -> Vec<f32> {
        let texts: Vec<&str> = examples.iter().map(|e| e.text.as_str()).collect();
        self.classifier
            .predict_proba(&self.vectorizer.transform(&texts))
    }
}
