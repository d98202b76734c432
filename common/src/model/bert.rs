//! The BERT encoder and classification head. Variable names follow Hugging Face's
//! `BertForSequenceClassification` (`bert.embeddings.*`, `bert.encoder.layer.N.*`, `bert.pooler.*`,
//! `classifier.*`), so its `model.safetensors` loads and saves directly.
use std::collections::{BTreeSet, HashMap};

use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

use super::config::{BertConfig, ProblemType};
use super::dropout::dropout;
use super::precision::Precision;
use crate::calibration::Scaling;
use crate::safetensors_io::{self, SafetensorsError};

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("invalid config.json: {0}")]
    Config(#[from] super::config::ConfigError),
    #[error(
        "calibration: {found} temperatures and {shifts} shifts for {labels} labels; one temperature \
         per label, finite and positive, and one finite shift per label (or none)"
    )]
    Scaling {
        found: usize,
        shifts: usize,
        labels: usize,
    },
    #[error("calibration: shifts need a classifier head with a bias")]
    NoBias,
    #[error("a classifier needs at least one label")]
    NoLabels,
    #[error(transparent)]
    Safetensors(#[from] SafetensorsError),
    #[error("model.safetensors lacks encoder tensor(s): {0}")]
    Missing(String),
    #[error(
        "config.json says num_hidden_layers {config}, but model.safetensors holds {weights} layers"
    )]
    LayerCount { config: i64, weights: usize },
    #[error("tensor {name}: checkpoint shape {found:?}, model expects {expected:?}")]
    Shape {
        name: String,
        found: Vec<i64>,
        expected: Vec<i64>,
    },
    #[error("torch error: {0}")]
    Torch(#[from] tch::TchError),
}

/// How token states become one vector for the head.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    /// Mask-aware mean over tokens (what sentence encoders such as all-MiniLM-L6-v2 are trained for).
    Mean,
    /// Hugging Face's pooler: tanh(dense(h[CLS])).
    Cls,
}

impl Pooling {
    pub fn as_str(self) -> &'static str {
        match self {
            Pooling::Mean => "mean",
            Pooling::Cls => "cls",
        }
    }
}

impl std::fmt::Display for Pooling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Pooling {
    type Err = crate::ParseEnumError;
    fn from_str(s: &str) -> Result<Self, crate::ParseEnumError> {
        match s {
            "mean" => Ok(Pooling::Mean),
            "cls" => Ok(Pooling::Cls),
            other => Err(crate::ParseEnumError {
                what: "pooling",
                value: other.into(),
                expected: "mean or cls",
            }),
        }
    }
}

/// Which attention kernel runs and how padding is hidden from it. All give the same scores.
///
/// On an H100 (2026-11-26) libtorch's dispatcher sends bf16 attention to cuDNN, which builds a plan
/// for every new (batch, length) shape: 100–150 ms each, paid again and again by length-bucketed
/// batches, against 0.5 ms per call for the memory-efficient kernel (`scripts/gpu/sdpa_overhead.py`).
/// `Auto` therefore calls the memory-efficient kernel directly where it applies (CUDA, bf16, head
/// size a multiple of 8) and leaves the choice to the dispatcher elsewhere. Training on the CPU
/// with attention dropout, and any bf16 backward pass on the CPU (attributions), run the
/// written-out math form (`attention_with_dropout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Attention {
    #[default]
    Auto,
    /// The dispatcher (`scaled_dot_product_attention`) with a boolean key mask.
    Sdpa,
    /// The dispatcher with an additive (0 / -inf) key mask in the compute dtype, as transformers builds it.
    SdpaAdditive,
    /// The memory-efficient kernel called directly (CUDA only; the dispatcher elsewhere).
    Efficient,
}

/// What loading a checkpoint found.
#[derive(Debug, Default, Clone)]
pub struct LoadReport {
    /// Model tensors the checkpoint did not have (freshly initialised), e.g. a new classifier head.
    pub initialised: Vec<String>,
    /// Checkpoint tensors the model does not use (e.g. a masked-LM head).
    pub unused: Vec<String>,
}

pub struct ModelOutput {
    pub last_hidden_state: Tensor,
    pub logits: Tensor,
}

struct SelfAttention {
    query: nn::Linear,
    key: nn::Linear,
    value: nn::Linear,
    output: nn::Linear,
    norm: nn::LayerNorm,
}

struct EncoderLayer {
    attention: SelfAttention,
    intermediate: nn::Linear,
    output: nn::Linear,
    norm: nn::LayerNorm,
}

struct Embeddings {
    word: nn::Embedding,
    position: nn::Embedding,
    token_type: nn::Embedding,
    norm: nn::LayerNorm,
}

pub struct BertClassifier {
    vs: nn::VarStore,
    config: BertConfig,
    pooling: Pooling,
    precision: Precision,
    attention: Attention,
    num_labels: i64,
    embeddings: Embeddings,
    layers: Vec<EncoderLayer>,
    pooler: nn::Linear,
    classifier: nn::Linear,
    /// Set by `store_weights_for_inference`: per layer, the query, key and value projections as
    /// one `[3h, h]` weight (and `[3h]` bias) in the compute dtype. Every forward pass runs the
    /// three as one product; without these it concatenates the weights per call (training).
    fused_qkv: Option<Vec<(Tensor, Option<Tensor>)>>,
}

fn layer_norm(p: nn::Path, c: &BertConfig) -> nn::LayerNorm {
    nn::layer_norm(
        p,
        vec![c.hidden_size],
        nn::LayerNormConfig {
            eps: c.layer_norm_eps,
            ..Default::default()
        },
    )
}

/// Hugging Face's initialisation for new weights: N(0, 0.02), zero bias.
fn hf_linear(p: nn::Path, input: i64, output: i64) -> nn::Linear {
    let config = nn::LinearConfig {
        ws_init: nn::Init::Randn {
            mean: 0.0,
            stdev: 0.02,
        },
        bs_init: Some(nn::Init::Const(0.0)),
        bias: true,
    };
    nn::linear(p, input, output, config)
}

/// A layer's query, key and value projections as one `[3h, h]` weight and `[3h]` bias.
fn fused_qkv(layer: &EncoderLayer) -> (Tensor, Option<Tensor>) {
    let a = &layer.attention;
    let weight = Tensor::cat(&[&a.query.ws, &a.key.ws, &a.value.ws], 0);
    let bias = match (&a.query.bs, &a.key.bs, &a.value.bs) {
        (Some(q), Some(k), Some(v)) => Some(Tensor::cat(&[q, k, v], 0)),
        _ => None,
    };
    (weight, bias)
}

/// 0 for the keys `valid` keeps and -inf for padding, in `kind`, shaped like `valid`.
fn additive_mask(valid: &Tensor, kind: Kind) -> Tensor {
    Tensor::zeros(valid.size().as_slice(), (kind, valid.device()))
        .masked_fill(&valid.logical_not(), f64::NEG_INFINITY)
}

/// Scaled dot-product attention over `[batch, heads, seq, head_dim]` with an additive key mask,
/// softmax in fp32 and dropout `p` on the attention weights: the steps of libtorch's math path.
fn attention_with_dropout(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor, p: f64) -> Tensor {
    let scale = 1.0 / (q.size()[3] as f64).sqrt();
    let weights = ((q * scale).matmul(&k.transpose(-2, -1)) + mask)
        .softmax(-1, Kind::Float)
        .to_kind(v.kind());
    dropout(&weights, p, true).matmul(v)
}

impl BertClassifier {
    /// A freshly initialised model with `num_labels` outputs.
    pub fn new(
        config: BertConfig,
        num_labels: usize,
        pooling: Pooling,
        device: Device,
    ) -> Result<Self, ModelError> {
        config.validate()?;
        if num_labels == 0 {
            return Err(ModelError::NoLabels);
        }
        let c = &config;
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let bert = &root / "bert";
        let emb = &bert / "embeddings";
        let h = c.hidden_size;
        let embeddings = Embeddings {
            word: nn::embedding(
                &emb / "word_embeddings",
                c.vocab_size,
                h,
                Default::default(),
            ),
            position: nn::embedding(
                &emb / "position_embeddings",
                c.max_position_embeddings,
                h,
                Default::default(),
            ),
            token_type: nn::embedding(
                &emb / "token_type_embeddings",
                c.type_vocab_size,
                h,
                Default::default(),
            ),
            norm: layer_norm(&emb / "LayerNorm", c),
        };
        let layers = (0..c.num_hidden_layers)
            .map(|i| {
                let l = &bert / "encoder" / "layer" / i;
                let att = &l / "attention";
                EncoderLayer {
                    attention: SelfAttention {
                        query: hf_linear(&att / "self" / "query", h, h),
                        key: hf_linear(&att / "self" / "key", h, h),
                        value: hf_linear(&att / "self" / "value", h, h),
                        output: hf_linear(&att / "output" / "dense", h, h),
                        norm: layer_norm(&att / "output" / "LayerNorm", c),
                    },
                    intermediate: hf_linear(&l / "intermediate" / "dense", h, c.intermediate_size),
                    output: hf_linear(&l / "output" / "dense", c.intermediate_size, h),
                    norm: layer_norm(&l / "output" / "LayerNorm", c),
                }
            })
            .collect();
        let pooler = hf_linear(&bert / "pooler" / "dense", h, h);
        let classifier = hf_linear(&root / "classifier", h, num_labels as i64);
        Ok(Self {
            vs,
            config,
            pooling,
            precision: Precision::Fp32,
            attention: Attention::Auto,
            num_labels: num_labels as i64,
            embeddings,
            layers,
            pooler,
            classifier,
            fused_qkv: None,
        })
    }

    /// Builds the model from a `config.json` and a `model.safetensors` (a bare encoder such as
    /// `BertModel`, or a full `BertForSequenceClassification`). Encoder tensors must all be present;
    /// a missing head or pooler is freshly initialised and listed in the report.
    pub fn load(
        config_json: &[u8],
        weights: &[u8],
        num_labels: usize,
        pooling: Pooling,
        device: Device,
    ) -> Result<(Self, LoadReport), ModelError> {
        let config = BertConfig::from_json(config_json).map_err(|e| {
            ModelError::Config(super::config::ConfigError {
                field: "config.json",
                message: e.to_string(),
            })
        })?;
        let model = Self::new(config, num_labels, pooling, device)?;
        let tensors = safetensors_io::decode(weights)?;
        let report = model.assign(tensors)?;
        Ok((model, report))
    }

    /// Copies checkpoint tensors into the model's variables, mapping older or prefix-less names.
    fn assign(&self, tensors: Vec<(String, Tensor)>) -> Result<LoadReport, ModelError> {
        let mut by_name: HashMap<String, Tensor> = HashMap::new();
        let mut unused = Vec::new();
        for (name, tensor) in tensors {
            let canonical = canonical_name(&name);
            match canonical {
                Some(n) => {
                    by_name.insert(n, tensor);
                }
                None => unused.push(name),
            }
        }
        let variables = self.vs.variables();
        let mut initialised = Vec::new();
        let mut missing = Vec::new();
        let mut names: Vec<&String> = variables.keys().collect();
        names.sort();
        for name in names {
            let var = &variables[name];
            match by_name.remove(name) {
                Some(src) => {
                    if src.size() != var.size() {
                        return Err(ModelError::Shape {
                            name: name.clone(),
                            found: src.size(),
                            expected: var.size(),
                        });
                    }
                    tch::no_grad(|| var.shallow_clone().f_copy_(&src.to_kind(var.kind())))?;
                }
                None if name.starts_with("classifier.") || name.starts_with("bert.pooler.") => {
                    initialised.push(name.clone())
                }
                None => missing.push(name.clone()),
            }
        }
        if !missing.is_empty() {
            return Err(ModelError::Missing(missing.join(", ")));
        }
        // Encoder layers beyond the config's count would be dropped silently, giving unrelated scores.
        let layers_in_weights = by_name
            .keys()
            .filter_map(|n| n.strip_prefix("bert.encoder.layer."))
            .filter_map(|rest| rest.split('.').next()?.parse::<usize>().ok())
            .map(|i| i + 1)
            .max();
        if let Some(n) = layers_in_weights {
            return Err(ModelError::LayerCount {
                config: self.config.num_hidden_layers,
                weights: n,
            });
        }
        unused.extend(by_name.into_keys());
        unused.sort();
        Ok(LoadReport {
            initialised,
            unused,
        })
    }

    pub fn config(&self) -> &BertConfig {
        &self.config
    }

    /// The config written with the checkpoint (label names, pooling, ...).
    pub fn config_mut(&mut self) -> &mut BertConfig {
        &mut self.config
    }

    pub fn pooling(&self) -> Pooling {
        self.pooling
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Maps each label's logit z to z / T + b (its temperature and shift), folded into the head
    /// (weight rows divided by T, bias divided by T plus b, in place), so every later forward pass
    /// — and the saved weights — give sigmoid(z / T + b) with no change to any scoring path.
    pub fn calibrate_logits(&self, maps: &Scaling) -> Result<(), ModelError> {
        let labels = self.num_labels();
        let (temperatures, shifts) = (&maps.temperatures, &maps.shifts);
        if temperatures.len() != labels
            || !(shifts.is_empty() || shifts.len() == labels)
            || temperatures.iter().any(|t| !(t.is_finite() && *t > 0.0))
            || shifts.iter().any(|b| !b.is_finite())
        {
            return Err(ModelError::Scaling {
                found: temperatures.len(),
                shifts: shifts.len(),
                labels,
            });
        }
        let shifted = shifts.iter().any(|&b| b != 0.0);
        if shifted && self.classifier.bs.is_none() {
            return Err(ModelError::NoBias);
        }
        let inverse: Vec<f32> = temperatures.iter().map(|t| (1.0 / t) as f32).collect();
        let device = self.classifier.ws.device();
        let kind = self.classifier.ws.kind();
        let factors = Tensor::from_slice(&inverse).to_device(device).to_kind(kind);
        tch::no_grad(|| {
            let _ = self
                .classifier
                .ws
                .shallow_clone()
                .g_mul_(&factors.unsqueeze(1));
            if let Some(bs) = &self.classifier.bs {
                let _ = bs.shallow_clone().g_mul_(&factors);
                if shifted {
                    let offsets: Vec<f32> = shifts.iter().map(|&b| b as f32).collect();
                    let offsets = Tensor::from_slice(&offsets).to_device(device).to_kind(kind);
                    let _ = bs.shallow_clone().g_add_(&offsets);
                }
            }
        });
        Ok(())
    }

    /// Sets the compute precision of later forward passes; the stored weights stay as they are.
    pub fn set_precision(&mut self, precision: Precision) {
        self.precision = precision;
    }

    pub fn set_attention(&mut self, attention: Attention) {
        self.attention = attention;
    }

    /// The kernel `Auto` resolves to for this model, device and precision.
    pub fn resolved_attention(&self, device: Device) -> Attention {
        let head_dim = self.config.hidden_size / self.config.num_attention_heads.max(1);
        match self.attention {
            Attention::Auto
                if device.is_cuda()
                    && self.precision.compute_kind() == Kind::BFloat16
                    && head_dim % 8 == 0 =>
            {
                Attention::Efficient
            }
            Attention::Auto => Attention::Sdpa,
            Attention::Efficient if !device.is_cuda() => Attention::Sdpa,
            other => other,
        }
    }

    /// For inference only: stores the weights in the compute dtype, so bf16 forward passes do
    /// not cast them on every call, and fuses each layer's query, key and value projections.
    /// From then on a bf16 model also keeps its residual stream and LayerNorms in bf16, as a
    /// model cast with `.to(torch.bfloat16)` does (the CPU LayerNorm kernel accumulates in fp32);
    /// training keeps fp32 master weights and an fp32 residual stream, and must not call this.
    /// The weights stop requiring gradients: a backward pass (attributions with respect to the
    /// inputs) then never writes into the shared weights.
    pub fn store_weights_for_inference(&mut self) {
        if self.precision == Precision::Bf16 {
            self.vs.bfloat16();
        }
        self.vs.freeze();
        let fused = tch::no_grad(|| self.layers.iter().map(fused_qkv).collect());
        self.fused_qkv = Some(fused);
    }

    pub fn num_labels(&self) -> usize {
        self.num_labels as usize
    }

    pub fn device(&self) -> Device {
        self.vs.device()
    }

    pub fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    /// The first parameter (by name) holding a NaN or an infinity, if any.
    pub fn first_non_finite_parameter(&self) -> Option<String> {
        tch::no_grad(|| {
            self.named_parameters()
                .into_iter()
                .find(|(_, t)| t.numel() > 0 && t.isfinite().all().int64_value(&[]) == 0)
                .map(|(name, _)| name)
        })
    }

    /// Trainable parameters by name, sorted by name.
    pub fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// The parameters the forward pass uses, for the optimizer: all but the pooler under mean
    /// pooling (it would never get a gradient).
    pub fn trainable_parameters(&self) -> Vec<(String, Tensor)> {
        let mut v = self.named_parameters();
        if self.pooling == Pooling::Mean {
            v.retain(|(name, _)| !name.starts_with("bert.pooler."));
        }
        v
    }

    /// The weights as a Hugging Face `model.safetensors` (fp32, CPU).
    pub fn to_safetensors(&self) -> Result<Vec<u8>, ModelError> {
        let tensors: Vec<(String, Tensor)> = self
            .named_parameters()
            .into_iter()
            .map(|(n, t)| (n, t.detach().to_kind(Kind::Float)))
            .collect();
        Ok(safetensors_io::encode(&tensors)?)
    }

    fn activation(&self, xs: &Tensor) -> Tensor {
        match self.config.hidden_act.as_str() {
            "relu" => xs.relu(),
            "gelu_new" | "gelu_pytorch_tanh" => xs.gelu("tanh"),
            _ => xs.gelu("none"),
        }
    }

    /// `x · Wᵀ + b` in the compute dtype (weights are cast per call when they are stored wider).
    fn linear(&self, layer: &nn::Linear, x: &Tensor) -> Tensor {
        let kind = self.precision.compute_kind();
        let bias = layer.bs.as_ref().map(|b| b.to_kind(kind));
        x.to_kind(kind).linear(&layer.ws.to_kind(kind), bias)
    }

    /// `x · Wᵀ + b` for `x` of shape `[rows, in]` as an elementwise product summed over `in`: the
    /// same reduction for a row whatever the number of rows (no BLAS kernel choice). For the
    /// small per-text products only (`rows × out × in` values are formed).
    fn rowwise_linear(&self, layer: &nn::Linear, x: &Tensor) -> Tensor {
        let kind = self.precision.compute_kind();
        let product = x.to_kind(kind).unsqueeze(1) * layer.ws.to_kind(kind).unsqueeze(0);
        let out = product.sum_dim_intlist(-1, false, Kind::Float);
        match &layer.bs {
            Some(b) => (out + b.to_kind(Kind::Float)).to_kind(kind),
            None => out.to_kind(kind),
        }
    }

    /// LayerNorm in the residual stream's dtype `kind` (its output is in that dtype too).
    fn norm(&self, layer: &nn::LayerNorm, x: &Tensor, kind: Kind) -> Tensor {
        let weight = layer.ws.as_ref().map(|w| w.to_kind(kind));
        let bias = layer.bs.as_ref().map(|b| b.to_kind(kind));
        x.to_kind(kind).layer_norm(
            [self.config.hidden_size],
            weight.as_ref(),
            bias.as_ref(),
            self.config.layer_norm_eps,
            false,
        )
    }

    /// Runs the encoder and head. `input_ids` and `attention_mask` are `[batch, seq]` int64;
    /// dropout is active only when `train` is set. Matrix products run in the model's precision;
    /// the residual stream and LayerNorm stay fp32 as under autocast, except in a bf16 model
    /// prepared for inference (`store_weights_for_inference`); pooling, the last hidden state and
    /// the logits come out in fp32.
    pub fn forward(&self, input_ids: &Tensor, attention_mask: &Tensor, train: bool) -> ModelOutput {
        self.forward_from_word_embeddings(&self.word_embeddings(input_ids), attention_mask, train)
    }

    /// The word-embedding rows of `input_ids` (`[batch, seq]` int64): `[batch, seq, hidden]` in
    /// the stored weights' dtype, before position and token-type embeddings are added.
    pub fn word_embeddings(&self, input_ids: &Tensor) -> Tensor {
        self.embeddings.word.forward(input_ids)
    }

    /// [`forward`](Self::forward) from word embeddings `[batch, seq, hidden]` instead of ids (what
    /// attribution methods differentiate with respect to); positions and token types are added
    /// here as for ids.
    pub fn forward_from_word_embeddings(
        &self,
        words: &Tensor,
        attention_mask: &Tensor,
        train: bool,
    ) -> ModelOutput {
        let c = &self.config;
        let (batch, seq, _) = words
            .size3()
            .expect("word embeddings are [batch, seq, hidden]");
        let device = words.device();
        let heads = c.num_attention_heads;
        let head_dim = c.hidden_size / heads;
        let hidden_p = c.hidden_dropout_prob;
        let attn_p = if train {
            c.attention_probs_dropout_prob
        } else {
            0.0
        };

        let kind = self.precision.compute_kind();
        let residual = if self.fused_qkv.is_some() {
            kind
        } else {
            Kind::Float
        };
        let positions = Tensor::arange(seq, (Kind::Int64, device)).unsqueeze(0);
        let token_types = Tensor::zeros([batch, seq], (Kind::Int64, device));
        let e = &self.embeddings;
        let embedded = words.to_kind(residual)
            + e.position.forward(&positions).to_kind(residual)
            + e.token_type.forward(&token_types).to_kind(residual);
        let mut hidden = dropout(&self.norm(&e.norm, &embedded, residual), hidden_p, train);

        let attention = self.resolved_attention(device);
        let valid = attention_mask.to_kind(Kind::Bool).view([batch, 1, 1, seq]);
        // With attention dropout on the CPU, libtorch's dispatcher runs its unfused math path
        // anyway; writing it out here lets the mask come from `dropout` (see dropout.rs). A bf16
        // backward pass on the CPU takes it too: libtorch's CPU flash-attention backward in bf16
        // costs several times its fp32 one, the written-out products' backward the least.
        let bf16_backward = kind == Kind::BFloat16 && words.requires_grad();
        let written_out_mask = ((attn_p > 0.0 || bf16_backward) && device == Device::Cpu)
            .then(|| additive_mask(&valid, Kind::Float));
        let key_mask = match attention {
            Attention::Sdpa | Attention::Auto => valid,
            Attention::SdpaAdditive => additive_mask(&valid, kind),
            Attention::Efficient => {
                // The kernel wants every stride but the last a multiple of 8 elements: allocate the
                // bias padded to such a width, use its first `seq` columns, broadcast over heads
                // and queries.
                let width = (seq + 7) / 8 * 8;
                let padded_valid = Tensor::zeros([batch, 1, 1, width - seq], (Kind::Bool, device));
                let all = Tensor::cat(&[&valid, &padded_valid], 3);
                Tensor::zeros([batch, 1, 1, width], (kind, device))
                    .masked_fill(&all.logical_not(), f64::NEG_INFINITY)
                    .narrow(3, 0, seq)
                    .expand([batch, heads, seq, seq], false)
            }
        };
        for (i, layer) in self.layers.iter().enumerate() {
            let a = &layer.attention;
            // Cast the residual stream once for the three projections.
            let input = hidden.to_kind(kind);
            // One product for the three projections: the stored fusion when prepared for
            // inference, else the weights concatenated per call (autograd splits the gradient).
            let (weight, bias) = match &self.fused_qkv {
                Some(fused) => (
                    fused[i].0.shallow_clone(),
                    fused[i].1.as_ref().map(Tensor::shallow_clone),
                ),
                None => {
                    let (weight, bias) = fused_qkv(layer);
                    (weight.to_kind(kind), bias.map(|b| b.to_kind(kind)))
                }
            };
            let qkv = input
                .linear(&weight, bias.as_ref())
                .view([batch, seq, 3, heads, head_dim])
                .permute([2, 0, 3, 1, 4]);
            let (q, k, v) = (qkv.get(0), qkv.get(1), qkv.get(2));
            let context = if let Some(mask) = &written_out_mask {
                attention_with_dropout(&q, &k, &v, mask, attn_p)
            } else if attention == Attention::Efficient {
                let needs_backward = q.requires_grad();
                Tensor::internal_scaled_dot_product_efficient_attention(
                    &q,
                    &k,
                    &v,
                    Some(&key_mask),
                    needs_backward,
                    attn_p,
                    false,
                    None,
                )
                .0
            } else {
                Tensor::scaled_dot_product_attention(
                    &q,
                    &k,
                    &v,
                    Some(&key_mask),
                    attn_p,
                    false,
                    None,
                    false,
                )
            }
            .transpose(1, 2)
            .reshape([batch, seq, c.hidden_size]);
            let projected = dropout(&self.linear(&a.output, &context), hidden_p, train);
            let attended = self.norm(&a.norm, &(projected.to_kind(residual) + &hidden), residual);
            let inner = self.activation(&self.linear(&layer.intermediate, &attended));
            let out = dropout(&self.linear(&layer.output, &inner), hidden_p, train);
            hidden = self.norm(&layer.norm, &(out.to_kind(residual) + &attended), residual);
        }
        let hidden = hidden.to_kind(Kind::Float);

        // Products with one row per text (pooler, head): written out when not training, so each
        // text's row is reduced over the hidden size alone whatever the number of texts — BLAS
        // picks other kernels for a handful of rows (1–3 rows gave other bits than 4+ in MKL).
        // The encoder's products have a row per padded token, at least 16 per text.
        let per_text = |layer: &nn::Linear, x: &Tensor| {
            if train {
                self.linear(layer, x)
            } else {
                self.rowwise_linear(layer, x)
            }
        };
        let pooled = match self.pooling {
            Pooling::Mean => {
                let m = attention_mask.unsqueeze(-1).to_kind(Kind::Float);
                (&hidden * &m).sum_dim_intlist(1, false, None)
                    / m.sum_dim_intlist(1, false, None).clamp_min(1e-9)
            }
            Pooling::Cls => per_text(&self.pooler, &hidden.select(1, 0))
                .to_kind(Kind::Float)
                .tanh(),
        };
        let p = c.classifier_dropout.unwrap_or(hidden_p);
        let logits = per_text(&self.classifier, &dropout(&pooled, p, train)).to_kind(Kind::Float);
        ModelOutput {
            last_hidden_state: hidden,
            logits,
        }
    }

    /// Probabilities `[batch, num_labels]` in fp32 on the CPU, without gradients: independent
    /// sigmoids for a multi-label model, a softmax per row for a single-label one. They are
    /// taken here, in f64 one value (or row) at a time, rather than by libtorch's vectorised
    /// kernels, whose results for the same logit differ between vector lanes and the scalar
    /// tail: a text's probabilities would then depend on its row in the batch.
    pub fn predict_proba(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Tensor {
        let logits = tch::no_grad(|| {
            self.forward(input_ids, attention_mask, false)
                .logits
                .to_device(Device::Cpu)
                .to_kind(Kind::Float)
                .contiguous()
        });
        let shape = logits.size();
        let flat = Vec::<f32>::try_from(logits.flatten(0, -1)).unwrap_or_default();
        let probs: Vec<f32> = flat
            .chunks(self.num_labels().max(1))
            .flat_map(|row| self.probabilities(row))
            .collect();
        Tensor::from_slice(&probs).view(shape.as_slice())
    }

    /// One text's probabilities from its logits, as `predict_proba` takes them.
    pub fn probabilities(&self, logits: &[f32]) -> Vec<f32> {
        match self.config().problem() {
            ProblemType::MultiLabel => logits.iter().copied().map(sigmoid).collect(),
            ProblemType::SingleLabel => softmax(logits),
        }
    }

    /// Parameter names that get no weight decay (biases and LayerNorm weights).
    pub fn no_decay_names(&self) -> BTreeSet<String> {
        self.vs
            .variables()
            .into_keys()
            .filter(|n| n.ends_with(".bias") || n.contains("LayerNorm"))
            .collect()
    }
}

/// The logistic function of one logit, computed in f64 and rounded once.
fn sigmoid(logit: f32) -> f32 {
    (1.0 / (1.0 + (-f64::from(logit)).exp())) as f32
}

/// The softmax of one row of logits, computed in f64 (shifted by the row's maximum) and rounded
/// once per value.
fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f64> = logits
        .iter()
        .map(|&l| (f64::from(l) - f64::from(max)).exp())
        .collect();
    let sum: f64 = exp.iter().sum();
    exp.into_iter().map(|e| (e / sum) as f32).collect()
}

/// Maps a checkpoint tensor name to this model's variable name; `None` for tensors it never uses.
fn canonical_name(name: &str) -> Option<String> {
    if name.ends_with("position_ids") {
        return None;
    }
    let name = name
        .replace("LayerNorm.gamma", "LayerNorm.weight")
        .replace("LayerNorm.beta", "LayerNorm.bias");
    if name.starts_with("bert.") || name.starts_with("classifier.") {
        Some(name)
    } else if name.starts_with("embeddings.")
        || name.starts_with("encoder.")
        || name.starts_with("pooler.")
    {
        Some(format!("bert.{name}"))
    } else {
        Some(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny_config() -> BertConfig {
        BertConfig::from_json(
            br#"{"vocab_size": 50, "hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 4,
                 "intermediate_size": 32, "max_position_embeddings": 64}"#,
        )
        .unwrap()
    }

    /// The written-out attention that CPU training runs must give SDPA's context (dropout off),
    /// with padded keys hidden; and with dropout on, about p of the weights must be dropped.
    #[test]
    fn written_out_attention_matches_sdpa() {
        tch::manual_seed(8);
        let opts = (Kind::Float, Device::Cpu);
        let (q, k, v) = (
            Tensor::randn([2, 3, 5, 8], opts),
            Tensor::randn([2, 3, 5, 8], opts),
            Tensor::randn([2, 3, 5, 8], opts),
        );
        let valid = Tensor::from_slice(&[1i64, 1, 1, 1, 1, 1, 1, 0, 0, 0]).view([2, 5]);
        let additive = Tensor::zeros([2, 1, 1, 5], opts)
            .masked_fill(&valid.eq(0).view([2, 1, 1, 5]), f64::NEG_INFINITY);
        let ours = attention_with_dropout(&q, &k, &v, &additive, 0.0);
        let bool_mask = valid.to_kind(Kind::Bool).view([2, 1, 1, 5]);
        let sdpa = Tensor::scaled_dot_product_attention(
            &q,
            &k,
            &v,
            Some(&bool_mask),
            0.0,
            false,
            None,
            false,
        );
        let diff = (&ours - &sdpa).abs().max().double_value(&[]);
        assert!(
            diff < 1e-5,
            "written-out attention differs from SDPA by {diff}"
        );
        // A value vector that is one-hot per key shows the weights: padded keys get none.
        let eye = Tensor::eye(5, opts)
            .view([1, 1, 5, 5])
            .expand([2, 3, 5, 5], false);
        let weights = attention_with_dropout(&q, &k, &eye.contiguous(), &additive, 0.0);
        let to_padding = weights.get(1).narrow(2, 2, 3).abs().max().double_value(&[]);
        assert_eq!(to_padding, 0.0);
        let dropped = attention_with_dropout(&q, &k, &eye.contiguous(), &additive, 0.5);
        let zeros = dropped
            .get(0)
            .eq(0.0)
            .to_kind(Kind::Float)
            .mean(Kind::Float);
        let zeros = zeros.double_value(&[]);
        assert!(zeros > 0.3 && zeros < 0.7, "dropped share {zeros}");
    }

    #[test]
    fn calibrated_logits_give_the_scaled_and_shifted_sigmoid() {
        tch::manual_seed(4);
        let m = BertClassifier::new(tiny_config(), 3, Pooling::Mean, Device::Cpu).unwrap();
        tch::no_grad(|| {
            m.var_store().variables()["classifier.bias"]
                .shallow_clone()
                .copy_(&Tensor::from_slice(&[0.5f32, -1.0, 2.0]));
        });
        let ids = Tensor::from_slice(&[1i64, 5, 7, 2]).view([1, 4]);
        let mask = Tensor::ones([1, 4], (Kind::Int64, Device::Cpu));
        let logits = |m: &BertClassifier| {
            Vec::<f32>::try_from(m.forward(&ids, &mask, false).logits.view([-1])).unwrap()
        };
        let before = logits(&m);
        let maps = |temperatures: &[f64], shifts: &[f64]| Scaling {
            temperatures: temperatures.to_vec(),
            shifts: shifts.to_vec(),
        };
        let (temperatures, shifts) = ([2.0, 0.5, 1.0], [0.25, 0.0, -3.0]);
        m.calibrate_logits(&maps(&temperatures, &shifts)).unwrap();
        let after = logits(&m);
        for j in 0..3 {
            let expect = before[j] / temperatures[j] as f32 + shifts[j] as f32;
            assert!((after[j] - expect).abs() < 1e-5, "{after:?} vs {before:?}");
        }
        assert!(m.calibrate_logits(&maps(&[1.0, 1.0], &[])).is_err());
        assert!(m.calibrate_logits(&maps(&[1.0, 0.0, 1.0], &[])).is_err());
        assert!(m.calibrate_logits(&maps(&[1.0; 3], &[0.0; 2])).is_err());
        assert!(m
            .calibrate_logits(&maps(&[1.0; 3], &[f64::NAN, 0.0, 0.0]))
            .is_err());
        // Temperatures alone (no shifts) divide the logits.
        let now = logits(&m);
        m.calibrate_logits(&maps(&[4.0, 1.0, 0.5], &[])).unwrap();
        let last = logits(&m);
        for (j, t) in [4.0f32, 1.0, 0.5].iter().enumerate() {
            assert!((last[j] - now[j] / t).abs() < 1e-5, "{last:?} vs {now:?}");
        }
    }

    #[test]
    fn hf_names_and_shapes() {
        let m = BertClassifier::new(tiny_config(), 5, Pooling::Mean, Device::Cpu).unwrap();
        let names: Vec<String> = m.named_parameters().into_iter().map(|(n, _)| n).collect();
        for expected in [
            "bert.embeddings.word_embeddings.weight",
            "bert.embeddings.LayerNorm.weight",
            "bert.encoder.layer.1.attention.self.query.weight",
            "bert.encoder.layer.0.attention.output.LayerNorm.bias",
            "bert.encoder.layer.1.output.dense.weight",
            "bert.pooler.dense.weight",
            "classifier.weight",
        ] {
            assert!(
                names.iter().any(|n| n == expected),
                "missing {expected}: {names:?}"
            );
        }
        assert_eq!(
            m.var_store().variables()["classifier.weight"].size(),
            vec![5, 16]
        );
    }

    /// The optimizer's flat update runs only when every parameter it holds gets a gradient, so
    /// `trainable_parameters` must be exactly the ones the forward pass uses.
    #[test]
    fn every_trainable_parameter_gets_a_gradient() {
        for pooling in [Pooling::Mean, Pooling::Cls] {
            tch::manual_seed(4);
            let m = BertClassifier::new(tiny_config(), 3, pooling, Device::Cpu).unwrap();
            let params = m.trainable_parameters();
            let ids = Tensor::from_slice(&[1i64, 5, 7, 2, 1, 9, 0, 0]).view([2, 4]);
            let mask = Tensor::from_slice(&[1i64, 1, 1, 1, 1, 1, 0, 0]).view([2, 4]);
            let loss = m.forward(&ids, &mask, true).logits.sum(Kind::Float);
            let tensors: Vec<Tensor> = params.iter().map(|(_, t)| t.shallow_clone()).collect();
            let grads = Tensor::run_backward(&[loss], &tensors, false, false);
            for ((name, _), g) in params.iter().zip(&grads) {
                assert!(g.defined(), "{pooling:?}: {name} gets no gradient");
            }
            let has_pooler = params.iter().any(|(n, _)| n.starts_with("bert.pooler."));
            assert_eq!(has_pooler, pooling == Pooling::Cls, "{pooling:?}");
        }
    }

    #[test]
    fn padding_does_not_change_scores() {
        tch::manual_seed(1);
        let m = BertClassifier::new(tiny_config(), 3, Pooling::Mean, Device::Cpu).unwrap();
        let ids = Tensor::from_slice(&[2i64, 7, 9, 3]).view([1, 4]);
        let mask = ids.ones_like();
        let padded_ids = Tensor::from_slice(&[2i64, 7, 9, 3, 0, 0]).view([1, 6]);
        let padded_mask = Tensor::from_slice(&[1i64, 1, 1, 1, 0, 0]).view([1, 6]);
        let a = m.predict_proba(&ids, &mask);
        let b = m.predict_proba(&padded_ids, &padded_mask);
        assert!(a.allclose(&b, 1e-5, 1e-6, false), "{a} vs {b}");
    }

    #[test]
    fn attention_variants_give_the_same_scores_on_padded_batches() {
        tch::manual_seed(3);
        let mut m = BertClassifier::new(tiny_config(), 3, Pooling::Mean, Device::Cpu).unwrap();
        let ids = Tensor::from_slice(&[2i64, 7, 9, 3, 2, 5, 0, 0]).view([2, 4]);
        let mask = Tensor::from_slice(&[1i64, 1, 1, 1, 1, 1, 0, 0]).view([2, 4]);
        let with_bool = m.predict_proba(&ids, &mask);
        m.set_attention(Attention::SdpaAdditive);
        let additive = m.predict_proba(&ids, &mask);
        assert!(
            with_bool.allclose(&additive, 1e-6, 1e-7, false),
            "{with_bool} vs {additive}"
        );
        // The short text scores as it does alone, so the additive mask really hides the padding.
        let alone = m.predict_proba(
            &ids.narrow(0, 1, 1).narrow(1, 0, 2),
            &mask.narrow(0, 1, 1).narrow(1, 0, 2),
        );
        assert!(alone.allclose(&additive.narrow(0, 1, 1), 1e-5, 1e-6, false));
    }

    /// Serving's form (fused query/key/value, and in bf16 a bf16 residual stream) scores as the
    /// training-time forward pass does: to fp32 rounding in fp32, to bf16 rounding in bf16.
    #[test]
    fn inference_prepared_model_scores_like_the_training_forward() {
        tch::manual_seed(5);
        let config = tiny_config().to_json();
        let m = BertClassifier::new(tiny_config(), 3, Pooling::Mean, Device::Cpu).unwrap();
        // Larger weights than the N(0, 0.02) initialisation, so attention is far from uniform and
        // swapped projections would show.
        tch::no_grad(|| {
            for (_, t) in m.named_parameters() {
                if t.dim() == 2 {
                    let _ = t.shallow_clone().g_mul_scalar_(25.0);
                }
            }
        });
        let bytes = m.to_safetensors().unwrap();
        let ids = Tensor::from_slice(&[2i64, 7, 9, 3, 2, 5, 0, 0]).view([2, 4]);
        let mask = Tensor::from_slice(&[1i64, 1, 1, 1, 1, 1, 0, 0]).view([2, 4]);
        let reference = m.predict_proba(&ids, &mask);
        for (precision, tolerance) in [(Precision::Fp32, 1e-5), (Precision::Bf16, 5e-2)] {
            let (mut served, _) =
                BertClassifier::load(&config, &bytes, 3, Pooling::Mean, Device::Cpu).unwrap();
            served.set_precision(precision);
            served.store_weights_for_inference();
            let scores = served.predict_proba(&ids, &mask);
            let diff = (&scores - &reference).abs().max().double_value(&[]);
            assert!(diff <= tolerance, "{precision}: {scores} vs {reference}");
            // A wrong head split or q/k/v order would move scores far more than rounding does.
            assert!(scores.kind() == Kind::Float && diff.is_finite());
        }
    }

    #[test]
    fn round_trip_through_safetensors_gives_identical_logits() {
        tch::manual_seed(2);
        let m = BertClassifier::new(tiny_config(), 3, Pooling::Cls, Device::Cpu).unwrap();
        let bytes = m.to_safetensors().unwrap();
        let config = tiny_config().to_json();
        let (back, report) =
            BertClassifier::load(&config, &bytes, 3, Pooling::Cls, Device::Cpu).unwrap();
        assert!(
            report.initialised.is_empty() && report.unused.is_empty(),
            "{report:?}"
        );
        let ids = Tensor::from_slice(&[2i64, 7, 9, 3, 4, 5]).view([2, 3]);
        let mask = ids.ones_like();
        assert!(m
            .predict_proba(&ids, &mask)
            .equal(&back.predict_proba(&ids, &mask)));
    }

    #[test]
    fn bare_encoder_gets_fresh_head_and_missing_encoder_tensor_is_an_error() {
        let m = BertClassifier::new(tiny_config(), 3, Pooling::Mean, Device::Cpu).unwrap();
        // A bare BertModel checkpoint: no "bert." prefix, no classifier.
        let bare: Vec<(String, Tensor)> = m
            .named_parameters()
            .into_iter()
            .filter(|(n, _)| !n.starts_with("classifier."))
            .map(|(n, t)| (n.trim_start_matches("bert.").to_string(), t))
            .collect();
        let bytes = safetensors_io::encode(&bare).unwrap();
        let config = tiny_config().to_json();
        let (_, report) =
            BertClassifier::load(&config, &bytes, 28, Pooling::Mean, Device::Cpu).unwrap();
        assert_eq!(
            report.initialised,
            vec!["classifier.bias", "classifier.weight"]
        );

        let partial: Vec<(String, Tensor)> = bare
            .into_iter()
            .filter(|(n, _)| !n.contains("layer.1.output.dense.weight"))
            .collect();
        let bytes = safetensors_io::encode(&partial).unwrap();
        let err = BertClassifier::load(&config, &bytes, 28, Pooling::Mean, Device::Cpu)
            .err()
            .unwrap();
        assert!(
            err.to_string()
                .contains("bert.encoder.layer.1.output.dense.weight"),
            "{err}"
        );
    }
}
