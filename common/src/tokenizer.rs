//! WordPiece tokenization from a checkpoint's `tokenizer.json`, with truncation to a max length
//! and dynamic padding per batch.
use tch::{Device, Tensor};
use tokenizers::{PaddingParams, TruncationDirection, TruncationParams, TruncationStrategy};

/// Default maximum sequence length in tokens (special tokens included).
pub const DEFAULT_MAX_LENGTH: usize = 128;

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("invalid tokenizer.json: {0}")]
    Load(String),
    #[error("tokenization failed: {0}")]
    Encode(String),
}

/// One tokenized text.
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    pub ids: Vec<i64>,
    /// The text had more tokens than the max length and was cut.
    pub truncated: bool,
}

/// A tokenized text with what explaining it needs: which tokens are special, the word each token
/// belongs to, and each token's span in the text.
#[derive(Debug, Clone, PartialEq)]
pub struct Explainable {
    pub encoded: Encoded,
    /// [CLS], [SEP] and other tokens the tokenizer added.
    pub special: Vec<bool>,
    /// The tokenizer's word (pre-tokenizer split: whitespace and punctuation) of each token.
    pub word_ids: Vec<Option<u32>>,
    /// Each token's span in the text in characters (Unicode scalar values), end exclusive.
    pub offsets: Vec<(usize, usize)>,
}

impl Explainable {
    /// The text's ids with every token but the special ones replaced by `pad_id`.
    pub fn baseline_ids(&self, pad_id: i64) -> Vec<i64> {
        self.encoded
            .ids
            .iter()
            .zip(&self.special)
            .map(|(&id, &special)| if special { id } else { pad_id })
            .collect()
    }
}

/// A padded batch ready for the model.
pub struct Batch {
    pub input_ids: Tensor,
    pub attention_mask: Tensor,
}

pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    max_length: usize,
    pad_id: i64,
}

impl TextTokenizer {
    /// Builds from the bytes of a `tokenizer.json`; its stored padding and truncation are replaced
    /// by truncation to `max_length` and no padding (batches are padded dynamically).
    pub fn from_bytes(json: &[u8], max_length: usize) -> Result<Self, TokenizerError> {
        let mut inner = tokenizers::Tokenizer::from_bytes(json)
            .map_err(|e| TokenizerError::Load(e.to_string()))?;
        let pad_id = inner
            .get_padding()
            .map(|p| p.pad_id as i64)
            .or_else(|| inner.token_to_id("[PAD]").map(i64::from))
            .unwrap_or(0);
        inner.with_padding(None::<PaddingParams>);
        inner
            .with_truncation(Some(TruncationParams {
                max_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(|e| TokenizerError::Load(e.to_string()))?;
        Ok(Self {
            inner,
            max_length,
            pad_id,
        })
    }

    /// Number of token ids the tokenizer can produce (added tokens included).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn max_length(&self) -> usize {
        self.max_length
    }

    pub fn pad_id(&self) -> i64 {
        self.pad_id
    }

    pub fn encode(&self, text: &str) -> Result<Encoded, TokenizerError> {
        let enc = self
            .inner
            .encode(text, true)
            .map_err(|e| TokenizerError::Encode(e.to_string()))?;
        Ok(encoded(&enc))
    }

    /// Encodes a text with its tokens' words and character offsets (truncated like `encode`).
    pub fn encode_explainable(&self, text: &str) -> Result<Explainable, TokenizerError> {
        let enc = self
            .inner
            .encode_char_offsets(text, true)
            .map_err(|e| TokenizerError::Encode(e.to_string()))?;
        Ok(Explainable {
            encoded: encoded(&enc),
            special: enc
                .get_special_tokens_mask()
                .iter()
                .map(|&m| m != 0)
                .collect(),
            word_ids: enc.get_word_ids().to_vec(),
            offsets: enc.get_offsets().to_vec(),
        })
    }

    /// Encodes many texts (in parallel where the tokenizers crate does).
    pub fn encode_all<S: AsRef<str> + Sync>(
        &self,
        texts: &[S],
    ) -> Result<Vec<Encoded>, TokenizerError> {
        let inputs: Vec<&str> = texts.iter().map(|t| t.as_ref()).collect();
        let encodings = self
            .inner
            .encode_batch(inputs, true)
            .map_err(|e| TokenizerError::Encode(e.to_string()))?;
        Ok(encodings.iter().map(encoded).collect())
    }

    /// Pads a batch to its longest member (training: the least padding).
    pub fn batch(&self, items: &[&Encoded], device: Device) -> Batch {
        pad_batch(items, self.pad_id, device)
    }

    /// Pads a batch for scoring to the length bucket of its longest member
    /// ([`length_bucket`]). Batches whose texts share a bucket give each text the padded length
    /// it would have alone.
    pub fn inference_batch(&self, items: &[&Encoded], device: Device) -> Batch {
        let longest = items.iter().map(|e| e.ids.len()).max().unwrap_or(0);
        pad_batch_to_multiple(
            items,
            self.pad_id,
            device,
            length_bucket(longest, self.max_length),
        )
    }

    /// The padded length a text of `tokens` tokens is scored at.
    pub fn bucket(&self, tokens: usize) -> usize {
        length_bucket(tokens, self.max_length)
    }
}

/// A tokenizers encoding's ids, and whether it was truncated.
fn encoded(enc: &tokenizers::Encoding) -> Encoded {
    Encoded {
        ids: enc.get_ids().iter().map(|&i| i64::from(i)).collect(),
        truncated: !enc.get_overflowing().is_empty(),
    }
}

/// The padded length a text of `tokens` tokens is scored at: 16 for up to 16 tokens, then the
/// next multiple of 8 up to 64, of 16 up to 128, of 64 beyond; never above `max_length` (texts
/// are truncated to it). Scoring pads every text to its own bucket, so a text's padded length —
/// and with it every reduction over its positions — never depends on its batch-mates (padding
/// alone moves fp32 scores by about 1e-7), and the model sees a bounded set of shapes.
pub fn length_bucket(tokens: usize, max_length: usize) -> usize {
    let bucket = match tokens {
        0..=16 => 16,
        17..=64 => tokens.div_ceil(8) * 8,
        65..=128 => tokens.div_ceil(16) * 16,
        _ => tokens.div_ceil(64) * 64,
    };
    bucket.min(max_length.max(tokens)).max(1)
}

/// Right-pads `items` to the longest one: `input_ids` and `attention_mask` of shape `[n, longest]`.
pub fn pad_batch(items: &[&Encoded], pad_id: i64, device: Device) -> Batch {
    pad_batch_to_multiple(items, pad_id, device, 1)
}

/// Like [`pad_batch`], with the length rounded up to a multiple of `multiple` (fewer distinct
/// shapes for kernels that plan per shape, at the cost of more padding).
pub fn pad_batch_to_multiple(
    items: &[&Encoded],
    pad_id: i64,
    device: Device,
    multiple: usize,
) -> Batch {
    let longest = items.iter().map(|e| e.ids.len()).max().unwrap_or(0).max(1);
    let longest = longest.div_ceil(multiple.max(1)) * multiple.max(1);
    let mut ids = Vec::with_capacity(items.len() * longest);
    let mut mask = Vec::with_capacity(items.len() * longest);
    for e in items {
        ids.extend_from_slice(&e.ids);
        mask.extend(std::iter::repeat_n(1i64, e.ids.len()));
        let pad = longest - e.ids.len();
        ids.extend(std::iter::repeat_n(pad_id, pad));
        mask.extend(std::iter::repeat_n(0i64, pad));
    }
    let shape = [items.len() as i64, longest as i64];
    Batch {
        input_ids: Tensor::from_slice(&ids).view(shape).to_device(device),
        attention_mask: Tensor::from_slice(&mask).view(shape).to_device(device),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pads_to_longest_with_mask() {
        let a = Encoded {
            ids: vec![101, 7, 102],
            truncated: false,
        };
        let b = Encoded {
            ids: vec![101, 102],
            truncated: false,
        };
        let batch = pad_batch(&[&a, &b], 0, Device::Cpu);
        assert_eq!(batch.input_ids.size(), vec![2, 3]);
        let ids: Vec<i64> = Vec::try_from(batch.input_ids.flatten(0, -1)).unwrap();
        let mask: Vec<i64> = Vec::try_from(batch.attention_mask.flatten(0, -1)).unwrap();
        assert_eq!(ids, vec![101, 7, 102, 101, 102, 0]);
        assert_eq!(mask, vec![1, 1, 1, 1, 1, 0]);
    }

    #[test]
    fn length_buckets_are_few_and_never_beyond_the_max_length() {
        assert_eq!(length_bucket(0, 128), 16);
        assert_eq!(length_bucket(5, 128), 16);
        assert_eq!(length_bucket(16, 128), 16);
        assert_eq!(length_bucket(17, 128), 24);
        assert_eq!(length_bucket(64, 128), 64);
        assert_eq!(length_bucket(65, 128), 80);
        assert_eq!(length_bucket(128, 128), 128);
        assert_eq!(length_bucket(97, 100), 100);
        assert_eq!(length_bucket(5, 8), 8);
        assert_eq!(length_bucket(300, 512), 320);
        let buckets: std::collections::BTreeSet<usize> =
            (0..=128).map(|n| length_bucket(n, 128)).collect();
        assert_eq!(buckets.len(), 11, "{buckets:?}");
        assert!((0..=512).all(|n| length_bucket(n, 512) >= n));
    }

    #[test]
    fn pads_up_to_a_multiple() {
        let a = Encoded {
            ids: vec![101, 7, 8, 102],
            truncated: false,
        };
        let batch = pad_batch_to_multiple(&[&a], 0, Device::Cpu, 8);
        assert_eq!(batch.input_ids.size(), vec![1, 8]);
        let mask: Vec<i64> = Vec::try_from(batch.attention_mask.flatten(0, -1)).unwrap();
        assert_eq!(mask, vec![1, 1, 1, 1, 0, 0, 0, 0]);
    }
}
