//! The gRPC `goemotions.v1.Predictor` service: validation and limits, queue room, then the
//! batcher; proto messages are built here and nowhere else.
//!
//! A stream reads its next item only when it has room for it (its own in-flight bound and a
//! place in the shared queue), so a busy server slows streams down instead of rejecting their
//! items. When a stream ends early — the server drains, an item is over the message size limit
//! — it first answers everything it read, then ends with a status that says what to resend.
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::Stream;
use proto::v1::predictor_server::Predictor;
use proto::v1::{
    stream_classify_response, ClassifyOptions, ClassifyRequest, ClassifyResponse,
    GetModelInfoRequest, GroupResult, Grouping, ItemError, LabelScore, ModelInfo,
    StreamClassifyRequest, StreamClassifyResponse, TextResult,
};
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Request, Response, Status, Streaming};

use common::inference::InferenceError;
use common::tokenizer::TokenizerError;

use crate::batcher::{Batcher, Reservation, ScoreResult, SubmitError};
use crate::engine::{self, Labelled, OptionsError, OutputOptions, ServingModel};
use crate::reload::ModelSlot;
use crate::telemetry::Metrics;
use crate::Limits;

#[derive(Clone)]
pub struct PredictorService {
    pub slot: Arc<ModelSlot>,
    pub batcher: Batcher,
    pub limits: Limits,
    pub metrics: Metrics,
    /// Flips to true when the server starts draining: streams stop reading new texts.
    pub draining: watch::Receiver<bool>,
}

/// A text on its way through the batcher.
enum Pending {
    Empty,
    Queued {
        encoded: common::tokenizer::Encoded,
        rx: oneshot::Receiver<ScoreResult>,
    },
}

/// Why a text or a call was not classified; mapped to a gRPC status in one place.
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
    /// An Open Inference Protocol request whose tensors or parameters do not fit the model.
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
            ClassifyError::Inference(_) => Code::Internal,
            ClassifyError::Text { source, .. } => source.code(),
        }
    }
}

impl From<ClassifyError> for Status {
    fn from(e: ClassifyError) -> Self {
        Status::new(e.code(), e.to_string())
    }
}

/// A proto result from a labelled text.
fn text_result(model: &ServingModel, r: Labelled) -> TextResult {
    let names = &model.manifest.labels;
    let scored = |s: engine::Scored| LabelScore {
        id: s.id as u32,
        name: names[s.id].clone(),
        score: s.score,
    };
    let groups = r
        .groups
        .into_iter()
        .map(|g| {
            let grouping = &model.manifest.groupings[g.grouping];
            let named = |s: engine::Scored| LabelScore {
                id: s.id as u32,
                name: grouping.groups[s.id].name.clone(),
                score: s.score,
            };
            GroupResult {
                grouping: Grouping::from_short_name(&grouping.name).unwrap_or(Grouping::Unspecified)
                    as i32,
                labels: g.labels.into_iter().map(named).collect(),
                scores: g.scores.into_iter().map(named).collect(),
            }
        })
        .collect();
    TextResult {
        labels: r.labels.into_iter().map(scored).collect(),
        top_k: r.top_k.into_iter().map(scored).collect(),
        scores: r.scores,
        truncated: r.truncated,
        num_tokens: r.num_tokens as u32,
        groups,
    }
}

/// The documented answer for an empty or whitespace-only text: no labels, no scores, 0 tokens.
fn empty_result() -> TextResult {
    TextResult::default()
}

fn options(
    o: Option<&ClassifyOptions>,
    model: &ServingModel,
) -> Result<OutputOptions, ClassifyError> {
    let Some(o) = o else {
        return Ok(OutputOptions::default());
    };
    let names = o
        .groupings
        .iter()
        .map(|&g| match Grouping::try_from(g) {
            Ok(known) if known != Grouping::Unspecified => Ok(known.short_name()),
            _ => Err(OptionsError::UnknownGrouping(g.to_string())),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(OutputOptions::new(
        o.top_k as usize,
        o.return_all_scores,
        o.threshold,
        model.num_labels(),
    )?
    .with_groupings(names.into_iter(), &model.manifest.groupings)?)
}

impl PredictorService {
    pub(crate) fn current(&self) -> Result<Arc<ServingModel>, ClassifyError> {
        self.slot.get().ok_or(ClassifyError::NoModel)
    }

    fn check_text(&self, text: &str, what: impl FnOnce() -> String) -> Result<(), ClassifyError> {
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
    fn enqueue(
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

    /// A batch of texts, start to finish (Classify and the Open Inference Protocol's ModelInfer),
    /// scored by `model`, the snapshot of the served version the caller checked (a hot reload
    /// meanwhile does not change which version answers): limits checked for every text before
    /// any is queued, one result per text in order.
    pub(crate) async fn classify_batch(
        &self,
        model: Arc<ServingModel>,
        texts: &[String],
        options_in: Option<&ClassifyOptions>,
        method: &str,
    ) -> Result<(Vec<TextResult>, Arc<ServingModel>), ClassifyError> {
        if texts.len() > self.limits.max_texts_per_request {
            return Err(ClassifyError::TooManyTexts {
                count: texts.len(),
                limit: self.limits.max_texts_per_request,
            });
        }
        let opts = options(options_in, &model)?;
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

    /// The served model, if any.
    pub(crate) fn served(&self) -> Option<Arc<ServingModel>> {
        self.slot.get()
    }

    /// Whether the server takes requests: a model is loaded and it is not draining.
    pub(crate) fn ready(&self) -> bool {
        self.slot.get().is_some() && !*self.draining.borrow()
    }

    /// One stream item, start to finish.
    async fn classify_item(
        &self,
        item: &StreamClassifyRequest,
        mut room: Reservation,
        caller: CancellationToken,
    ) -> Result<(TextResult, String), ClassifyError> {
        let model = self.current()?;
        self.check_text(&item.text, || format!("text of item {:?}", item.id))?;
        let opts = options(item.options.as_ref(), &model)?;
        let pending = self.enqueue(&model, &item.text, &mut room, Some(caller))?;
        let result = finish(&model, pending, opts).await?;
        Ok((result, model.version().to_string()))
    }
}

async fn finish(
    model: &ServingModel,
    pending: Pending,
    opts: OutputOptions,
) -> Result<TextResult, ClassifyError> {
    match pending {
        Pending::Empty => Ok(empty_result()),
        Pending::Queued { encoded, rx } => {
            let scores = rx.await.map_err(|_| ClassifyError::WorkerStopped)??;
            let m = &model.manifest;
            let labelled = engine::label(&scores, &m.thresholds, &m.groupings, &encoded, opts);
            Ok(text_result(model, labelled))
        }
    }
}

fn item_error(id: String, error: &ClassifyError) -> StreamClassifyResponse {
    StreamClassifyResponse {
        id,
        outcome: Some(stream_classify_response::Outcome::Error(ItemError {
            code: error.code() as i32,
            message: error.to_string(),
        })),
        model_version: String::new(),
    }
}

/// Why a stream's read loop ended.
enum StreamEnd {
    /// The client closed its side: answer everything, end OK.
    Done,
    /// The client went away: nothing to answer.
    Gone,
    /// The server is draining: answer what was read, then UNAVAILABLE.
    Draining,
    /// An item could not be read or queued (over the message size limit, worker stopped).
    Refused(ClassifyError),
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<StreamClassifyResponse, Status>> + Send>>;

/// Decrements the open-streams gauge however the stream task ends.
struct OpenStream(Metrics);
impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.open_streams.dec();
    }
}

#[tonic::async_trait]
impl Predictor for PredictorService {
    async fn classify(
        &self,
        request: Request<ClassifyRequest>,
    ) -> Result<Response<ClassifyResponse>, Status> {
        let started = Instant::now();
        let req = request.into_inner();
        let result = match self.current() {
            Ok(model) => {
                self.classify_batch(model, &req.texts, req.options.as_ref(), "Classify")
                    .await
            }
            Err(e) => Err(e),
        }
        .map(|(results, model)| ClassifyResponse {
            results,
            model_version: model.version().to_string(),
        });
        self.record("Classify", &result, started);
        result.map(Response::new).map_err(Status::from)
    }

    type ClassifyStreamStream = ResponseStream;

    async fn classify_stream(
        &self,
        request: Request<Streaming<StreamClassifyRequest>>,
    ) -> Result<Response<Self::ClassifyStreamStream>, Status> {
        self.current()?;
        let mut inbound = request.into_inner();
        let max_in_flight = self.limits.max_in_flight_per_stream.max(1);
        let (tx, rx) = mpsc::channel::<Result<StreamClassifyResponse, Status>>(max_in_flight);
        let service = self.clone();
        let mut draining = self.draining.clone();
        service.metrics.open_streams.inc();
        let guard = OpenStream(service.metrics.clone());
        tokio::spawn(async move {
            let _guard = guard;
            let caller = CancellationToken::new();
            let in_flight = Arc::new(Semaphore::new(max_in_flight));
            let end = loop {
                if *draining.borrow() {
                    break StreamEnd::Draining;
                }
                // A slot of this stream's in-flight bound first, then read one item, then wait
                // for room in the shared queue: while either is missing the stream reads no
                // further and HTTP/2 flow control holds the client back.
                let permit = tokio::select! {
                    p = in_flight.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break StreamEnd::Gone },
                    _ = draining.wait_for(|d| *d) => break StreamEnd::Draining,
                    _ = tx.closed() => break StreamEnd::Gone,
                };
                let message = tokio::select! {
                    m = inbound.message() => m,
                    _ = draining.wait_for(|d| *d) => break StreamEnd::Draining,
                    _ = tx.closed() => break StreamEnd::Gone,
                };
                let item = match message {
                    Ok(Some(item)) => item,
                    Ok(None) => break StreamEnd::Done,
                    Err(status) if status.code() == Code::OutOfRange => {
                        break StreamEnd::Refused(ClassifyError::Oversized(
                            status.message().to_string(),
                        ))
                    }
                    Err(status) => {
                        tracing::debug!(%status, "stream closed by a client error");
                        break StreamEnd::Gone;
                    }
                };
                // The item is read: it is answered even if draining starts meanwhile.
                let room = tokio::select! {
                    r = service.batcher.reserve(1, None) => r,
                    _ = tx.closed() => break StreamEnd::Gone,
                };
                let room = match room {
                    Ok(room) => room,
                    Err(e) => {
                        let error = ClassifyError::from(e);
                        let _ = tx.send(Ok(item_error(item.id, &error))).await;
                        break StreamEnd::Refused(error);
                    }
                };
                let started = Instant::now();
                let service = service.clone();
                let tx = tx.clone();
                let caller = caller.clone();
                tokio::spawn(async move {
                    let outcome = service.classify_item(&item, room, caller).await;
                    service.record("ClassifyStream", &outcome, started);
                    let id = item.id;
                    let response = match outcome {
                        Ok((result, version)) => {
                            service
                                .metrics
                                .texts
                                .with_label_values(&["ClassifyStream"])
                                .inc();
                            StreamClassifyResponse {
                                id,
                                outcome: Some(stream_classify_response::Outcome::Result(result)),
                                model_version: version,
                            }
                        }
                        Err(error) => item_error(id, &error),
                    };
                    let _ = tx.send(Ok(response)).await;
                    drop(permit);
                });
            };
            if matches!(end, StreamEnd::Gone) {
                // Queued texts of this stream are dropped before they reach the model.
                caller.cancel();
                return;
            }
            // Answer everything that was read, then say how the stream ended.
            let _ = in_flight.acquire_many(max_in_flight as u32).await;
            let error = match end {
                StreamEnd::Draining => Some(ClassifyError::Draining),
                StreamEnd::Refused(error) => Some(error),
                StreamEnd::Done | StreamEnd::Gone => None,
            };
            if let Some(error) = error {
                let _ = tx.send(Err(Status::from(error))).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_model_info(
        &self,
        _request: Request<GetModelInfoRequest>,
    ) -> Result<Response<ModelInfo>, Status> {
        let started = Instant::now();
        let result = self.current().map(|model| {
            let m = &model.manifest;
            ModelInfo {
                model_name: m.model_name.clone(),
                version: m.version.clone(),
                base_model: m.base_model.clone(),
                labels: m.labels.clone(),
                thresholds: m.thresholds.clone(),
                global_threshold: m.global_threshold,
                max_length: m.max_length as u32,
                pooling: m.pooling.clone(),
                metrics: m.metrics.clone().into_iter().collect(),
                created_at: m.created_at.clone(),
                source_uri: model.source_uri.clone(),
                max_texts_per_request: self.limits.max_texts_per_request as u32,
                max_text_bytes: self.limits.max_text_bytes as u32,
                max_in_flight_per_stream: self.limits.max_in_flight_per_stream as u32,
                max_message_bytes: self.limits.max_message_bytes as u32,
                queue_capacity: self.batcher.capacity() as u32,
                precision: model.model.precision().to_string(),
            }
        });
        self.record("GetModelInfo", &result, started);
        result.map(Response::new).map_err(Status::from)
    }
}

/// How long a unary call waits for queue room by default before RESOURCE_EXHAUSTED.
pub const DEFAULT_QUEUE_WAIT: Duration = Duration::from_millis(200);
