//! The one explain path, protocol-neutral: limits, labels by name, tokenizing with word offsets,
//! queue room (one place per integration point) and the batcher's workers, then the tokens'
//! attributions merged into words. Front ends turn `ExplainAsked` in and `Explained` out.
use std::sync::Arc;

use common::explain::{self, Attributions, Word};

use crate::classify::{Classifier, ClassifyError};
use crate::engine::{self, ExplainWork, LabelPick, ServingModel};

/// What a caller asked to explain, before it is checked against the served model.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct ExplainAsked {
    pub text: String,
    /// Label names; empty: the predicted ones.
    pub labels: Vec<String>,
    /// Integration points; 0 means the default.
    pub steps: u32,
    /// One threshold for every label instead of the per-label ones.
    pub threshold: Option<f32>,
}

/// One label's explanation.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ExplainedLabel {
    pub id: usize,
    pub score: f32,
    pub predicted: bool,
    /// Per word, in `Explained::words` order.
    pub attributions: Vec<f64>,
    pub logit: f32,
    pub baseline_logit: f32,
    pub convergence_delta: f64,
}

/// A whole explanation.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Explained {
    pub words: Vec<Word>,
    pub labels: Vec<ExplainedLabel>,
    pub steps: usize,
    pub truncated: bool,
    pub num_tokens: usize,
}

impl Classifier {
    /// One explanation, start to finish, by `model`, the snapshot of the served version the
    /// caller checked (a hot reload meanwhile does not change which version answers): every
    /// field checked before any work, then the integration points on an inference worker.
    pub(crate) async fn explain(
        &self,
        model: Arc<ServingModel>,
        asked: &ExplainAsked,
    ) -> Result<(Explained, Arc<ServingModel>), ClassifyError> {
        let limits = &self.limits;
        self.check_text(&asked.text, || "text".into())?;
        if asked.text.trim().is_empty() {
            return Err(ClassifyError::BadRequest(
                "text is empty: there is nothing to explain".into(),
            ));
        }
        let steps = match asked.steps as usize {
            0 => explain::DEFAULT_STEPS.min(limits.max_explain_steps),
            n if n > limits.max_explain_steps => {
                return Err(ClassifyError::BadRequest(format!(
                    "steps is {n}; the limit is {} (--max-explain-steps)",
                    limits.max_explain_steps
                )))
            }
            n => n,
        };
        engine::check_threshold(asked.threshold)?;
        if asked.labels.len() > limits.max_explain_labels {
            return Err(ClassifyError::BadRequest(format!(
                "{} labels asked for; the limit is {} per request (--max-explain-labels)",
                asked.labels.len(),
                limits.max_explain_labels
            )));
        }
        let names = &model.manifest.labels;
        let mut ids = Vec::with_capacity(asked.labels.len());
        for (i, name) in asked.labels.iter().enumerate() {
            let id = names.iter().position(|n| n == name).ok_or_else(|| {
                ClassifyError::BadRequest(format!(
                    "labels[{i}]: the served model has no label {name:?} (GetModelInfo lists its {} labels)",
                    names.len()
                ))
            })?;
            if ids.contains(&id) {
                return Err(ClassifyError::BadRequest(format!(
                    "labels[{i}]: {name:?} is asked for twice"
                )));
            }
            ids.push(id);
        }
        let text = model.tokenizer.encode_explainable(&asked.text)?;
        let work = ExplainWork {
            steps,
            labels: if ids.is_empty() {
                LabelPick::Predicted {
                    max: limits.max_explain_labels,
                }
            } else {
                LabelPick::Given(ids)
            },
            threshold: asked.threshold,
            text,
        };
        // The text and the baseline besides the points: about that many texts of work.
        let cost = (steps + 2).min(self.batcher.capacity());
        let room = self.batcher.reserve(cost, Some(limits.queue_wait)).await?;
        let rx = self
            .batcher
            .submit_explanation(room, model.clone(), work.clone())?;
        let attributions = rx.await.map_err(|_| ClassifyError::WorkerStopped)??;
        Ok((explained(&model, &work, &asked.text, attributions), model))
    }
}

/// Tokens' attributions merged into the text's words, with each label's score and decision.
fn explained(
    model: &ServingModel,
    work: &ExplainWork,
    original: &str,
    a: Attributions,
) -> Explained {
    let words = explain::words(&work.text, original);
    let labelled = model.label_logits(&a.logits, &work.text, work.threshold);
    let (scores, predicted) = (labelled.scores, labelled.labels);
    let labels = a
        .labels
        .iter()
        .map(|l| ExplainedLabel {
            id: l.label,
            score: scores[l.label],
            predicted: predicted.iter().any(|s| s.id == l.label),
            attributions: words
                .iter()
                .map(|(_, tokens)| tokens.iter().map(|&t| l.tokens[t]).sum())
                .collect(),
            logit: a.logits[l.label],
            baseline_logit: a.baseline_logits[l.label],
            convergence_delta: a.convergence_delta(l),
        })
        .collect();
    Explained {
        words: words.into_iter().map(|(w, _)| w).collect(),
        labels,
        steps: a.steps,
        truncated: work.text.encoded.truncated,
        num_tokens: work.text.encoded.ids.len(),
    }
}
