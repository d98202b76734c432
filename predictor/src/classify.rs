//! The one classify path, protocol-neutral: limits, queue room, tokenizing, the batcher and
//! labelling, returning the engine's own `Labelled` results. The front ends — goemotions.v1
//! (`service`), the Open Inference Protocol over gRPC (`oip`) and over HTTP (`rest`) — are
//! siblings on top of it; each turns what its callers ask into `Asked` and the results into its
//! own messages, and maps `ClassifyError` to its own status codes.
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;
use tonic::Code;

use common::inference::InferenceError;
use common::tokenizer::{Encoded, TokenizerError};

use crate::batcher::{Batcher, Reservation, ScoreResult, SubmitError};
use crate::engine::{self, Labelled, OptionsError, OutputOptions, ServingModel};
use crate::reload::ModelSlot;
use crate::telemetry::Metrics;
use crate::Limits;

/// How long a unary call waits for queue room by default before RESOURCE_EXHAUSTED.
pub const DEFAULT_QUEUE_WAIT: Duration = Duration::from_millis(200);

/// What a caller asks for besides the labels, before it is checked against the served model.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Asked {
    /// How many best labels to list; 0 means the default.
    pub top_k: u32,
    pub all_scores: bool,
    pub threshold: Option<f32>,
    /// Groupings by name, in the order to answer them.
    pub groupings: Vec<String>,
}

/// Why a text or a call was not classified; each front end maps it to its own status.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ClassifyError {
    #[error("no model loaded yet; the predictor is starting")]
    NoModel,
    #[error("{count} texts in one request; the limit is {limit} (--max-texts-per-request): split the batch or use ClassifyStream")]
    TooManyTexts { count: usize, limit: usize },
    #[error("{what} is {bytes} bytes; the limit is {limit} bytes per text (--max-text-bytes)")]
    TextTooLong {
        what: String,
        bytes: usize,
        limit: usize,
    },
    #[error(transparent)]
    Options(#[from] OptionsError),
    #[error("cannot tokenize: {0}")]
    Tokenize(#[from] TokenizerError),
    #[error(transparent)]
    Queue(#[from] SubmitError),
    #[error("inference failed: {0}")]
    Inference(#[from] InferenceError),
    #[error(transparent)]
    Explain(#[from] common::explain::ExplainError),
    #[error("the inference worker stopped")]
    WorkerStopped,
    #[error("texts[{index}]: {source}")]
    Text {
        index: usize,
        source: Box<ClassifyError>,
    },
    #[error("the server is shutting down; items without a response were not processed: resend them to another replica")]
    Draining,
    #[error("an item exceeded the message size limit ({0}); it and every item after it were not read: resend the unanswered ids except the oversized one")]
    Oversized(String),
    /// A request whose tensors or parameters do not fit the model.
    #[error("{0}")]
    BadRequest(String),
    #[error("model {name:?} version {version:?} is not served here; this predictor serves {served:?} version {served_version:?}")]
    UnknownModel {
        name: String,
        version: String,
        served: String,
        served_version: String,
    },
}

impl ClassifyError {
    /// The gRPC code (the HTTP front end maps these once more to HTTP statuses).
    pub fn code(&self) -> Code {
        match self {
            ClassifyError::NoModel | ClassifyError::WorkerStopped | ClassifyError::Draining => {
                Code::Unavailable
            }
            ClassifyError::TooManyTexts { .. }
            | ClassifyError::TextTooLong { .. }
            | ClassifyError::Options(_)
            | ClassifyError::Tokenize(_)
            | ClassifyError::BadRequest(_) => Code::InvalidArgument,
            ClassifyError::UnknownModel { .. } => Code::NotFound,
            ClassifyError::Queue(SubmitError::Stopped) => Code::Unavailable,
            ClassifyError::Queue(_) | ClassifyError::Oversized(_) => Code::ResourceExhausted,
            ClassifyError::Inference(_) | ClassifyError::Explain(_) => Code::Internal,
            ClassifyError::Text { source, .. } => source.code(),
        }
    }
}

impl From<ClassifyError> for tonic::Status {
    fn from(e: ClassifyError) -> Self {
        tonic::Status::new(e.code(), e.to_string())
    }
}

/// A text on its way through the batcher.
pub(crate) enum Pending {
    Empty,
    Queued {
        encoded: Encoded,
        rx: oneshot::Receiver<ScoreResult>,
    },
}

/// The classify core every front end shares: the served model, the batcher, the limits, the
/// metrics and the drain signal.
#[derive(Clone)]
pub struct Classifier {
    pub slot: Arc<ModelSlot>,
    pub batcher: Batcher,
    pub limits: Limits,
    pub metrics: Metrics,
    /// Flips to true when the server starts draining: streams stop reading new texts.
    pub draining: watch::Receiver<bool>,
}

impl Classifier {
    pub(crate) fn current(&self) -> Result<Arc<ServingModel>, ClassifyError> {
        self.slot.get().ok_or(ClassifyError::NoModel)
    }

    /// The served model, if any.
    pub(crate) fn served(&self) -> Option<Arc<ServingModel>> {
        self.slot.get()
    }

    /// Whether the server takes requests: a model is loaded and it is not draining.
    pub(crate) fn ready(&self) -> bool {
        self.slot.get().is_some() && !*self.draining.borrow()
    }

    /// Checks what a caller asked against the model that will answer.
    pub(crate) fn options(
        &self,
        asked: &Asked,
        model: &ServingModel,
    ) -> Result<OutputOptions, ClassifyError> {
        Ok(OutputOptions::new(
            asked.top_k as usize,
            asked.all_scores,
            asked.threshold,
            model.num_labels(),
        )?
        .with_groupings(
            asked.groupings.iter().map(String::as_str),
            &model.manifest.groupings,
        )?)
    }

    pub(crate) fn check_text(
        &self,
        text: &str,
        what: impl FnOnce() -> String,
    ) -> Result<(), ClassifyError> {
        if text.len() > self.limits.max_text_bytes {
            return Err(ClassifyError::TextTooLong {
                what: what(),
                bytes: text.len(),
                limit: self.limits.max_text_bytes,
            });
        }
        Ok(())
    }

    /// Tokenizes and queues one text with its reserved room.
    pub(crate) fn enqueue(
        &self,
        model: &Arc<ServingModel>,
        text: &str,
        room: &mut Reservation,
        caller: Option<CancellationToken>,
    ) -> Result<Pending, ClassifyError> {
        if text.trim().is_empty() {
            return Ok(Pending::Empty);
        }
        let encoded = model.encode(text)?;
        // Room was reserved for every non-empty text before tokenizing.
        let room = room.take_one().ok_or(SubmitError::QueueFull {
            capacity: self.batcher.capacity(),
        })?;
        let rx = self
            .batcher
            .submit(room, model.clone(), encoded.clone(), caller)?;
        Ok(Pending::Queued { encoded, rx })
    }

    /// Records a call in the request metrics.
    pub(crate) fn record<T>(
        &self,
        method: &str,
        result: &Result<T, ClassifyError>,
        started: Instant,
    ) {
        let code = result
            .as_ref()
            .map(|_| Code::Ok)
            .unwrap_or_else(ClassifyError::code);
        self.metrics
            .requests
            .with_label_values(&[method, &format!("{code:?}")])
            .inc();
        self.metrics
            .request_seconds
            .with_label_values(&[method])
            .observe(started.elapsed().as_secs_f64());
    }

    /// A batch of texts, start to finish, scored by `model`, the snapshot of the served version
    /// the caller checked (a hot reload meanwhile does not change which version answers):
    /// options and limits checked for every text before any is queued, one result per text in
    /// order (an empty text: no labels, no scores, 0 tokens).
    pub(crate) async fn classify_batch(
        &self,
        model: Arc<ServingModel>,
        texts: &[String],
        asked: &Asked,
        method: &str,
    ) -> Result<(Vec<Labelled>, Arc<ServingModel>), ClassifyError> {
        if texts.len() > self.limits.max_texts_per_request {
            return Err(ClassifyError::TooManyTexts {
                count: texts.len(),
                limit: self.limits.max_texts_per_request,
            });
        }
        let opts = self.options(asked, &model)?;
        for (i, text) in texts.iter().enumerate() {
            self.check_text(text, || format!("texts[{i}]"))?;
        }
        let to_score = texts.iter().filter(|t| !t.trim().is_empty()).count();
        let mut room = self
            .batcher
            .reserve(to_score, Some(self.limits.queue_wait))
            .await?;
        let in_text = |index: usize| {
            move |e: ClassifyError| ClassifyError::Text {
                index,
                source: Box::new(e),
            }
        };
        let mut pending = Vec::with_capacity(texts.len());
        for (i, text) in texts.iter().enumerate() {
            pending.push(
                self.enqueue(&model, text, &mut room, None)
                    .map_err(in_text(i))?,
            );
        }
        let mut results = Vec::with_capacity(pending.len());
        for (i, p) in pending.into_iter().enumerate() {
            results.push(finish(&model, p, opts).await.map_err(in_text(i))?);
        }
        self.metrics
            .texts
            .with_label_values(&[method])
            .inc_by(results.len() as u64);
        Ok((results, model))
    }

    /// One stream item, start to finish, with its reserved room; `what` names it in errors.
    pub(crate) async fn classify_one(
        &self,
        text: &str,
        asked: &Asked,
        what: impl FnOnce() -> String,
        mut room: Reservation,
        caller: CancellationToken,
    ) -> Result<(Labelled, Arc<ServingModel>), ClassifyError> {
        let model = self.current()?;
        self.check_text(text, what)?;
        let opts = self.options(asked, &model)?;
        let pending = self.enqueue(&model, text, &mut room, Some(caller))?;
        let result = finish(&model, pending, opts).await?;
        Ok((result, model))
    }
}

/// Waits for a queued text's scores and labels them with the model's thresholds.
async fn finish(
    model: &ServingModel,
    pending: Pending,
    opts: OutputOptions,
) -> Result<Labelled, ClassifyError> {
    match pending {
        Pending::Empty => Ok(Labelled::default()),
        Pending::Queued { encoded, rx } => {
            let scores = rx.await.map_err(|_| ClassifyError::WorkerStopped)??;
            Ok(engine::label(
                &scores,
                model.decision(),
                &model.manifest.groupings,
                &encoded,
                opts,
            ))
        }
    }
}
