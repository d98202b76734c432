//! Scoring tokenized texts with a classifier: pad a batch, run the forward pass without gradients,
//! sigmoid, back to the CPU. The one path both the trainer's evaluation and the predictor's
//! batcher take, so the scores they report can never drift apart.
//!
//! A text's scores do not depend on what it is batched with: batches hold texts of one length
//! bucket (`tokenizer::length_bucket`), padded to that bucket, and the model's per-text
//! products do not depend on the number of rows (see `BertClassifier::forward`).
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::model::BertClassifier;
use crate::tokenizer::{length_bucket, Encoded, TextTokenizer};

#[derive(Debug, Clone, thiserror::Error)]
pub enum InferenceError {
    #[error("forward pass failed: {0}")]
    Forward(String),
    #[error("the model produced {count} non-finite scores (NaN or infinite) for this batch; refusing to answer them")]
    NonFinite { count: usize },
    #[error("scores have {found} values for {texts} texts × {labels} labels")]
    Shape {
        found: usize,
        texts: usize,
        labels: usize,
    },
}

/// Sigmoid scores of one batch, row-major `[items × labels]`. A libtorch error (a panic inside
/// tch) becomes an error instead of unwinding into the caller.
pub fn predict_batch(
    model: &BertClassifier,
    tokenizer: &TextTokenizer,
    items: &[&Encoded],
) -> Result<Vec<f32>, InferenceError> {
    if items.is_empty() {
        return Ok(Vec::new());
    }
    // Rows up to the batch-size bucket repeat the last text; their scores are dropped.
    let rows = batch_bucket(items.len());
    let mut padded: Vec<&Encoded> = items.to_vec();
    padded.resize(rows, items[items.len() - 1]);
    let run = || {
        let batch = tokenizer.inference_batch(&padded, model.device());
        let probs = model.predict_proba(&batch.input_ids, &batch.attention_mask);
        let mut flat = Vec::<f32>::try_from(probs.flatten(0, -1)).map_err(|e| e.to_string())?;
        flat.truncate(items.len() * model.num_labels());
        Ok::<_, String>(flat)
    };
    let flat = match catch_unwind(AssertUnwindSafe(run)) {
        Ok(Ok(flat)) => flat,
        Ok(Err(message)) => return Err(InferenceError::Forward(message)),
        Err(panic) => return Err(InferenceError::Forward(panic_message(&panic))),
    };
    let labels = model.num_labels();
    if flat.len() != items.len() * labels {
        return Err(InferenceError::Shape {
            found: flat.len(),
            texts: items.len(),
            labels,
        });
    }
    let non_finite = flat.iter().filter(|v| !v.is_finite()).count();
    if non_finite > 0 {
        return Err(InferenceError::NonFinite { count: non_finite });
    }
    Ok(flat)
}

/// The number of rows a batch of `n` texts is scored as: 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48,
/// 64, then multiples of 32. With the length buckets this bounds the shapes the model ever sees
/// (kernel and allocator caches keyed by shape stay bounded however varied the traffic), at
/// most 1.5× the rows of the batch itself.
pub fn batch_bucket(n: usize) -> usize {
    const SIZES: [usize; 12] = [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64];
    SIZES
        .iter()
        .copied()
        .find(|&s| s >= n)
        .unwrap_or_else(|| n.div_ceil(32) * 32)
}

/// Indices in ascending length order cut into batches of at most `batch_size` texts that share
/// a length bucket (`max_length` is the tokenizer's): little padding, each text at its own
/// bucket's length, and order does not matter for inference.
pub fn sorted_batches(lengths: &[usize], batch_size: usize, max_length: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&i| lengths[i]);
    let mut batches: Vec<Vec<usize>> = Vec::new();
    let mut bucket = None;
    for i in order {
        let b = length_bucket(lengths[i], max_length);
        match batches.last_mut() {
            Some(last) if bucket == Some(b) && last.len() < batch_size.max(1) => last.push(i),
            _ => batches.push(vec![i]),
        }
        bucket = Some(b);
    }
    batches
}

/// Sigmoid scores of every text, row-major `[texts × labels]`, batched by length.
pub fn score_all(
    model: &BertClassifier,
    tokenizer: &TextTokenizer,
    encoded: &[Encoded],
    batch_size: usize,
) -> Result<Vec<f32>, InferenceError> {
    let l = model.num_labels();
    let mut out = vec![0f32; encoded.len() * l];
    let lengths: Vec<usize> = encoded.iter().map(|e| e.ids.len()).collect();
    for batch in sorted_batches(&lengths, batch_size, tokenizer.max_length()) {
        let items: Vec<&Encoded> = batch.iter().map(|&i| &encoded[i]).collect();
        let flat = predict_batch(model, tokenizer, &items)?;
        for (row, &i) in batch.iter().enumerate() {
            out[i * l..(i + 1) * l].copy_from_slice(&flat[row * l..(row + 1) * l]);
        }
    }
    Ok(out)
}

/// The message of a caught panic (tch panics with the libtorch error text).
pub fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .map(|m| m.lines().next().unwrap_or_default().to_string())
        .unwrap_or_else(|| "panic without a message".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{BertConfig, Pooling};
    use tch::Device;

    const TOKENIZER: &[u8] = br#"{"version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": {"[UNK]": 0, "a": 1, "b": 2, "c": 3}, "unk_token": "[UNK]"}}"#;

    #[test]
    fn non_finite_scores_are_an_error_never_an_answer() {
        let config = BertConfig::from_json(
            br#"{"vocab_size": 8, "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
                 "intermediate_size": 32, "max_position_embeddings": 32}"#,
        )
        .unwrap();
        let model = BertClassifier::new(config, 3, Pooling::Mean, Device::Cpu).unwrap();
        let tokenizer = TextTokenizer::from_bytes(TOKENIZER, 16).unwrap();
        let text = tokenizer.encode("a b c").unwrap();
        let scores = predict_batch(&model, &tokenizer, &[&text]).unwrap();
        assert_eq!(scores.len(), 3);
        assert!(model.first_non_finite_parameter().is_none());
        tch::no_grad(|| {
            for (name, t) in model.named_parameters() {
                if name == "classifier.weight" {
                    let _ = t.shallow_clone().fill_(f64::NAN);
                }
            }
        });
        assert_eq!(
            model.first_non_finite_parameter().as_deref(),
            Some("classifier.weight")
        );
        let err = predict_batch(&model, &tokenizer, &[&text, &text]).unwrap_err();
        assert!(
            matches!(err, InferenceError::NonFinite { count: 6 }),
            "{err}"
        );
    }

    #[test]
    fn batch_buckets_are_few_and_at_most_half_again_the_batch() {
        let buckets: std::collections::BTreeSet<usize> = (1..=64).map(batch_bucket).collect();
        assert_eq!(buckets.len(), 12, "{buckets:?}");
        for n in 1..=300 {
            let b = batch_bucket(n);
            assert!(
                b >= n && (b as f64) <= (n as f64 * 1.5).max(n as f64 + 31.0),
                "{n} → {b}"
            );
        }
        assert_eq!(batch_bucket(5), 6);
        assert_eq!(batch_bucket(65), 96);
    }

    #[test]
    fn sorted_batches_cover_everything_in_length_order_within_buckets() {
        let lengths = [5, 1, 9, 3, 7];
        let batches = sorted_batches(&lengths, 2, 128);
        assert_eq!(batches, vec![vec![1, 3], vec![0, 4], vec![2]]);
        assert_eq!(
            sorted_batches(&lengths, 0, 128).len(),
            5,
            "batch size 0 acts as 1"
        );
        // 16 and 17 tokens fall in different buckets (16, 24): never in one batch.
        let lengths = [17, 16, 20, 3];
        assert_eq!(
            sorted_batches(&lengths, 8, 128),
            vec![vec![3, 1], vec![0, 2]]
        );
    }
}
