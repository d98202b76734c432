//! Integrated gradients (Sundararajan et al., 2017): which words of a text drove a label.
//!
//! A label's attribution to token t is `(x_t − x'_t) · ∫₀¹ ∂f(x' + α(x − x'))/∂x_t dα`, where `f`
//! is the label's logit, `x` the text's word embeddings and `x'` the baseline's: the same
//! sequence with every token but the special ones ([CLS], [SEP]) replaced by [PAD]. Special
//! tokens equal their baseline, so they get nothing, and the attributions add up to
//! `f(x) − f(x')` (completeness) up to the integration error, which the result states.
//!
//! The integral is Gauss–Legendre quadrature over `steps` points (Captum's default method), all
//! points of one text as one batch unless the caller cuts them (a token budget, other work
//! waiting); one backward pass per label and batch, with respect to the embeddings only: the
//! weights are never written.
use std::panic::{catch_unwind, AssertUnwindSafe};

use tch::{Kind, Tensor};

use crate::inference::panic_message;
use crate::model::BertClassifier;
use crate::tokenizer::Explainable;

/// Integration points when the caller does not say (Captum's default).
pub const DEFAULT_STEPS: usize = 50;

/// Points per batch that keep a batch within `max_batch_tokens` for a text of `tokens` tokens.
pub fn points_within(max_batch_tokens: usize, tokens: usize) -> usize {
    (max_batch_tokens / tokens.max(1)).max(1)
}

/// The quadrature used, as stated in answers.
pub const METHOD: &str = "integrated_gradients/gauss_legendre";

/// What the baseline is, as stated in answers.
pub const BASELINE: &str = "pad_embeddings_keep_special_tokens";

#[derive(Debug, Clone, thiserror::Error)]
pub enum ExplainError {
    #[error("explaining failed in the model: {0}")]
    Forward(String),
    #[error("the model produced non-finite logits or gradients (NaN or infinite) for this text")]
    NonFinite,
    #[error("steps must be at least 1")]
    NoSteps,
    #[error("label id {label} is out of range: the model has {labels} labels")]
    Label { label: usize, labels: usize },
    #[error("stopped after {done} of {steps} points: nobody waits for the answer any more")]
    Abandoned { done: usize, steps: usize },
}

/// One label's attributions, per token of the encoded text (special tokens included, at 0).
#[derive(Debug, Clone, PartialEq)]
pub struct LabelAttributions {
    pub label: usize,
    pub tokens: Vec<f64>,
}

impl LabelAttributions {
    pub fn total(&self) -> f64 {
        self.tokens.iter().sum()
    }
}

/// Integrated gradients of some labels for one text.
#[derive(Debug, Clone, PartialEq)]
pub struct Attributions {
    /// Every label's logit at the text.
    pub logits: Vec<f32>,
    /// Every label's logit at the baseline.
    pub baseline_logits: Vec<f32>,
    /// The labels explained, in the order chosen.
    pub labels: Vec<LabelAttributions>,
    pub steps: usize,
    /// Forward (and backward) batches the integration points took.
    pub batches: usize,
}

impl Attributions {
    /// Sum of a label's attributions minus `logit(text) − logit(baseline)`: the integration error.
    pub fn convergence_delta(&self, explained: &LabelAttributions) -> f64 {
        let l = explained.label;
        explained.total() - (f64::from(self.logits[l]) - f64::from(self.baseline_logits[l]))
    }
}

/// Nodes and weights of `n`-point Gauss–Legendre quadrature on [0, 1] (nodes ascending,
/// weights summing to 1): exact for polynomials of degree up to 2n − 1.
pub fn gauss_legendre(n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut nodes = vec![0.0; n];
    let mut weights = vec![0.0; n];
    for i in 0..n {
        // Newton's method on P_n from the classic first guess for the i-th root (descending).
        let mut x = (std::f64::consts::PI * (i as f64 + 0.75) / (n as f64 + 0.5)).cos();
        let mut derivative = 1.0;
        for _ in 0..100 {
            let (p, dp) = legendre(n, x);
            derivative = dp;
            let step = p / dp;
            x -= step;
            if step.abs() < 1e-15 {
                break;
            }
        }
        let (_, dp) = legendre(n, x);
        if dp.is_finite() {
            derivative = dp;
        }
        // Root i of n counted from +1; store ascending on [0, 1].
        let slot = n - 1 - i;
        nodes[slot] = 0.5 * (1.0 + x);
        weights[slot] = 1.0 / ((1.0 - x * x) * derivative * derivative);
    }
    (nodes, weights)
}

/// P_n(x) and P_n'(x) by the three-term recurrence.
fn legendre(n: usize, x: f64) -> (f64, f64) {
    let (mut p0, mut p1) = (1.0, x);
    if n == 0 {
        return (1.0, 0.0);
    }
    for k in 2..=n {
        let k = k as f64;
        let p2 = ((2.0 * k - 1.0) * x * p1 - (k - 1.0) * p0) / k;
        p0 = p1;
        p1 = p2;
    }
    let n = n as f64;
    (p1, n * (x * p1 - p0) / (x * x - 1.0))
}

/// Integrated gradients for `text` with `steps` points. Before each batch of points,
/// `next_batch(remaining)` says how many of the remaining points to evaluate together (clamped
/// to 1..=remaining; all of them is one batch), or `None` to stop (`Abandoned`) — the caller's
/// token budget, and its chance to do other work in between. `choose` gets every label's logit at the text and returns the labels
/// to explain. Panics inside libtorch become errors.
pub fn integrated_gradients(
    model: &BertClassifier,
    text: &Explainable,
    pad_id: i64,
    steps: usize,
    next_batch: impl FnMut(usize) -> Option<usize>,
    choose: impl FnOnce(&[f32]) -> Result<Vec<usize>, ExplainError>,
) -> Result<Attributions, ExplainError> {
    if steps == 0 {
        return Err(ExplainError::NoSteps);
    }
    let run = move || explain_text(model, text, pad_id, steps, next_batch, choose);
    match catch_unwind(AssertUnwindSafe(run)) {
        Ok(result) => result,
        Err(panic) => Err(ExplainError::Forward(panic_message(&panic))),
    }
}

fn explain_text(
    model: &BertClassifier,
    text: &Explainable,
    pad_id: i64,
    steps: usize,
    mut next_batch: impl FnMut(usize) -> Option<usize>,
    choose: impl FnOnce(&[f32]) -> Result<Vec<usize>, ExplainError>,
) -> Result<Attributions, ExplainError> {
    let device = model.device();
    let n = text.encoded.ids.len() as i64;
    let ids = Tensor::from_slice(&text.encoded.ids)
        .view([1, n])
        .to_device(device);
    let baseline_ids = Tensor::from_slice(&text.baseline_ids(pad_id))
        .view([1, n])
        .to_device(device);
    let (input, baseline) = tch::no_grad(|| {
        (
            model.word_embeddings(&ids).to_kind(Kind::Float),
            model.word_embeddings(&baseline_ids).to_kind(Kind::Float),
        )
    });
    let mask = Tensor::ones([1, n], (Kind::Int64, device));
    let ends = tch::no_grad(|| {
        model
            .forward_from_word_embeddings(
                &Tensor::cat(&[&input, &baseline], 0),
                &mask.expand([2, n], false),
                false,
            )
            .logits
            .to_device(tch::Device::Cpu)
            .to_kind(Kind::Float)
    });
    let logits = row(&ends, 0)?;
    let baseline_logits = row(&ends, 1)?;
    if logits
        .iter()
        .chain(&baseline_logits)
        .any(|v| !v.is_finite())
    {
        return Err(ExplainError::NonFinite);
    }
    let labels = choose(&logits)?;
    if let Some(&label) = labels.iter().find(|&&l| l >= logits.len()) {
        return Err(ExplainError::Label {
            label,
            labels: logits.len(),
        });
    }

    let (alphas, weights) = gauss_legendre(steps);
    let difference = &input - &baseline;
    let mut sums: Vec<Tensor> = labels.iter().map(|_| input.zeros_like()).collect();
    let mut batches = 0;
    let mut done = 0;
    while done < steps {
        let take = next_batch(steps - done)
            .ok_or(ExplainError::Abandoned { done, steps })?
            .clamp(1, steps - done);
        let (alpha, weight) = (&alphas[done..done + take], &weights[done..done + take]);
        done += take;
        let k = alpha.len() as i64;
        let alpha = Tensor::from_slice(alpha)
            .to_kind(Kind::Float)
            .view([k, 1, 1])
            .to_device(device);
        let weight = Tensor::from_slice(weight)
            .to_kind(Kind::Float)
            .to_device(device);
        let points = (&baseline + alpha * &difference)
            .detach()
            .set_requires_grad(true);
        let out = model
            .forward_from_word_embeddings(&points, &mask.expand([k, n], false), false)
            .logits;
        for (j, &label) in labels.iter().enumerate() {
            let objective = (out.select(1, label as i64) * &weight).sum(Kind::Float);
            let keep_graph = j + 1 < labels.len();
            let gradient = Tensor::run_backward(&[objective], &[&points], keep_graph, false)
                .pop()
                .ok_or_else(|| ExplainError::Forward("no gradient".into()))?;
            sums[j] = &sums[j] + gradient.sum_dim_intlist(0, true, Kind::Float);
        }
        batches += 1;
    }
    let mut explained = Vec::with_capacity(labels.len());
    for (label, sum) in labels.into_iter().zip(sums) {
        let per_token = (sum * &difference)
            .sum_dim_intlist(-1, false, Kind::Float)
            .to_device(tch::Device::Cpu)
            .to_kind(Kind::Double)
            .flatten(0, -1);
        let tokens =
            Vec::<f64>::try_from(per_token).map_err(|e| ExplainError::Forward(e.to_string()))?;
        if tokens.iter().any(|v| !v.is_finite()) {
            return Err(ExplainError::NonFinite);
        }
        explained.push(LabelAttributions { label, tokens });
    }
    Ok(Attributions {
        logits,
        baseline_logits,
        labels: explained,
        steps,
        batches,
    })
}

fn row(t: &Tensor, i: i64) -> Result<Vec<f32>, ExplainError> {
    Vec::<f32>::try_from(t.get(i).contiguous()).map_err(|e| ExplainError::Forward(e.to_string()))
}

/// A word of the text (word pieces merged) with its attribution.
#[derive(Debug, Clone, PartialEq)]
pub struct Word {
    /// Offsets in characters (Unicode scalar values) into the text, end exclusive.
    pub start: usize,
    pub end: usize,
    pub text: String,
}

/// The words of `text` as the tokenizer split it (its pre-tokenizer: whitespace and punctuation),
/// each with the indices of its tokens. Special tokens belong to no word.
pub fn words(text: &Explainable, original: &str) -> Vec<(Word, Vec<usize>)> {
    let mut out: Vec<(Word, Vec<usize>, u32)> = Vec::new();
    for (t, word) in text.word_ids.iter().enumerate() {
        let Some(word) = *word else { continue };
        if text.special[t] {
            continue;
        }
        let (start, end) = text.offsets[t];
        match out.last_mut() {
            Some((w, tokens, id)) if *id == word => {
                w.start = w.start.min(start);
                w.end = w.end.max(end);
                tokens.push(t);
            }
            _ => out.push((
                Word {
                    start,
                    end,
                    text: String::new(),
                },
                vec![t],
                word,
            )),
        }
    }
    out.into_iter()
        .map(|(mut w, tokens, _)| {
            w.text = original
                .chars()
                .skip(w.start)
                .take(w.end.saturating_sub(w.start))
                .collect();
            (w, tokens)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{BertConfig, Pooling, Precision};
    use crate::tokenizer::TextTokenizer;
    use tch::Device;

    #[test]
    fn gauss_legendre_integrates_polynomials_exactly_and_weights_sum_to_one() {
        for n in [1, 2, 5, 32, 50, 128] {
            let (x, w) = gauss_legendre(n);
            assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-12, "n={n}");
            assert!(x.windows(2).all(|p| p[0] < p[1]), "ascending, n={n}");
            assert!(x.iter().all(|&v| v > 0.0 && v < 1.0));
            // ∫₀¹ t^d dt = 1/(d+1) for d ≤ 2n − 1.
            for d in [1, 2 * n - 1] {
                let q: f64 = x.iter().zip(&w).map(|(x, w)| w * x.powi(d as i32)).sum();
                assert!(
                    (q - 1.0 / (d as f64 + 1.0)).abs() < 1e-10,
                    "n={n} d={d}: {q}"
                );
            }
        }
        // numpy.polynomial.legendre.leggauss(3) mapped to [0, 1].
        let (x, w) = gauss_legendre(3);
        let expected = [0.5 - 0.5 * 0.6f64.sqrt(), 0.5, 0.5 + 0.5 * 0.6f64.sqrt()];
        for (a, b) in x.iter().zip(expected) {
            assert!((a - b).abs() < 1e-14);
        }
        assert!((w[1] - 4.0 / 9.0).abs() < 1e-14 && (w[0] - 5.0 / 18.0).abs() < 1e-14);
    }

    const TOKENIZER: &str = r###"{"version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [{"id": 0, "content": "[PAD]", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
                         {"id": 1, "content": "[UNK]", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
                         {"id": 2, "content": "[CLS]", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
                         {"id": 3, "content": "[SEP]", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}],
        "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true, "strip_accents": null, "lowercase": true},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "[SEP]", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}, {"SpecialToken": {"id": "[SEP]", "type_id": 1}}],
            "special_tokens": {"[CLS]": {"id": "[CLS]", "ids": [2], "tokens": ["[CLS]"]}, "[SEP]": {"id": "[SEP]", "ids": [3], "tokens": ["[SEP]"]}}},
        "decoder": null,
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##", "max_input_chars_per_word": 100,
                  "vocab": {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "thank": 4, "##ful": 5, "you": 6, "so": 7, "!": 8, "sad": 9, "é": 10}}}"###;

    const TINY_CONFIG: &[u8] =
        br#"{"vocab_size": 11, "hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
        "intermediate_size": 32, "max_position_embeddings": 32}"#;

    fn tiny_model(labels: usize) -> BertClassifier {
        let config = BertConfig::from_json(TINY_CONFIG).unwrap();
        tch::manual_seed(7);
        let mut model = BertClassifier::new(config, labels, Pooling::Mean, Device::Cpu).unwrap();
        // Larger head weights than the N(0, 0.02) init, so the logits move visibly.
        tch::no_grad(|| {
            for (name, t) in model.named_parameters() {
                if name == "classifier.weight" {
                    let _ = t.shallow_clone().normal_(0.0, 1.0);
                }
            }
        });
        model.store_weights_for_inference();
        model
    }

    /// A bf16 model with `exact`'s weights, loaded from its safetensors (tests share the global
    /// generator, so a second draw from the same seed need not give the same weights).
    fn bf16_copy_of(exact: &BertClassifier, labels: usize) -> BertClassifier {
        let weights = exact.to_safetensors().unwrap();
        let (mut fast, _) =
            BertClassifier::load(TINY_CONFIG, &weights, labels, Pooling::Mean, Device::Cpu)
                .unwrap();
        fast.set_precision(Precision::Bf16);
        fast.store_weights_for_inference();
        fast
    }

    #[test]
    fn attributions_add_up_to_the_logit_difference_and_words_merge_pieces() {
        let model = tiny_model(3);
        let tokenizer = TextTokenizer::from_bytes(TOKENIZER.as_bytes(), 16).unwrap();
        let original = "Thankful, you é SO sad!";
        let text = tokenizer.encode_explainable(original).unwrap();
        let a = integrated_gradients(&model, &text, tokenizer.pad_id(), 50, Some, |_| {
            Ok(vec![2, 0])
        })
        .unwrap();
        assert_eq!(a.labels.len(), 2);
        assert_eq!(a.labels[0].label, 2);
        assert_eq!(a.batches, 1);
        for explained in &a.labels {
            let gap = f64::from(a.logits[explained.label])
                - f64::from(a.baseline_logits[explained.label]);
            assert!(gap.abs() > 1e-3, "the text moves the logit: {gap}");
            let delta = a.convergence_delta(explained);
            assert!(delta.abs() <= 0.01 * gap.abs(), "delta {delta} of {gap}");
            // [CLS] and [SEP] equal their baseline.
            assert_eq!(explained.tokens[0], 0.0);
            assert_eq!(*explained.tokens.last().unwrap(), 0.0);
        }
        // Cut into batches of a few points: the same answer up to float summation order.
        let mut asked = Vec::new();
        let per_batch = points_within(40, text.encoded.ids.len());
        let cut = integrated_gradients(
            &model,
            &text,
            tokenizer.pad_id(),
            50,
            |remaining| {
                asked.push(remaining);
                Some(per_batch)
            },
            |_| Ok(vec![2, 0]),
        )
        .unwrap();
        assert_eq!(per_batch, 4, "{} tokens", text.encoded.ids.len());
        assert_eq!(cut.batches, 13);
        assert_eq!(asked[..3], [50, 46, 42]);
        for (x, y) in a.labels[0].tokens.iter().zip(&cut.labels[0].tokens) {
            assert!((x - y).abs() < 1e-5, "{x} vs {y}");
        }
        let words: Vec<(String, usize, usize, usize)> = words(&text, original)
            .into_iter()
            .map(|(w, tokens)| (w.text, w.start, w.end, tokens.len()))
            .collect();
        assert_eq!(
            words,
            vec![
                ("Thankful".into(), 0, 8, 2),
                (",".into(), 8, 9, 1),
                ("you".into(), 10, 13, 1),
                ("é".into(), 14, 15, 1),
                ("SO".into(), 16, 18, 1),
                ("sad".into(), 19, 22, 1),
                ("!".into(), 22, 23, 1),
            ]
        );
        let err = integrated_gradients(&model, &text, 0, 8, Some, |_| Ok(vec![3])).unwrap_err();
        assert!(matches!(
            err,
            ExplainError::Label {
                label: 3,
                labels: 3
            }
        ));
        assert!(matches!(
            integrated_gradients(&model, &text, 0, 0, Some, |_| Ok(vec![0])).unwrap_err(),
            ExplainError::NoSteps
        ));
    }

    #[test]
    fn explaining_never_writes_the_weights() {
        let model = tiny_model(2);
        let tokenizer = TextTokenizer::from_bytes(TOKENIZER.as_bytes(), 16).unwrap();
        let text = tokenizer.encode_explainable("thank you").unwrap();
        let before: Vec<Tensor> = model
            .named_parameters()
            .into_iter()
            .map(|(_, t)| t.copy())
            .collect();
        integrated_gradients(&model, &text, 0, 16, Some, |_| Ok(vec![0, 1])).unwrap();
        for ((name, t), b) in model.named_parameters().into_iter().zip(before) {
            assert!(!t.requires_grad(), "{name} is frozen");
            assert!(!t.grad().defined(), "{name} got a gradient");
            assert!(t.equal(&b), "{name} changed");
        }
    }

    #[test]
    fn bf16_attributions_follow_fp32_ones() {
        // The same weights in both precisions; the bf16 backward pass on the CPU takes the
        // written-out attention. (Completeness in bf16 is measured on a trained model in
        // docs/bench: on random small weights bf16 logits alone can be off by a tenth of a gap.)
        let tokenizer = TextTokenizer::from_bytes(TOKENIZER.as_bytes(), 16).unwrap();
        let text = tokenizer
            .encode_explainable("Thankful, you é SO sad!")
            .unwrap();
        let exact_model = tiny_model(3);
        let fast_model = bf16_copy_of(&exact_model, 3);
        let explain = |model: &BertClassifier| {
            integrated_gradients(model, &text, tokenizer.pad_id(), 32, Some, |_| {
                Ok(vec![0, 2])
            })
            .unwrap()
        };
        let (exact, fast) = (explain(&exact_model), explain(&fast_model));
        for (e, f) in exact.labels.iter().zip(&fast.labels) {
            assert_eq!(e.label, f.label);
            let norm = e.tokens.iter().map(|v| v * v).sum::<f64>().sqrt();
            let worst = e
                .tokens
                .iter()
                .zip(&f.tokens)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            assert!(norm > 1e-3, "the label moves: {norm}");
            assert!(worst <= 5e-2 * norm, "label {}: {worst} of {norm}", e.label);
        }
    }
}
