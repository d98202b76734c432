//! The gRPC `goemotions.v1.Predictor` front end of the classify core (`classify`): its options
//! and results as goemotions.v1 messages (built here and nowhere else), and the stream protocol.
//!
//! A stream reads its next item only when it has room for it (its own in-flight bound and a
//! place in the shared queue), so a busy server slows streams down instead of rejecting their
//! items. When a stream ends early — the server drains, an item is over the message size limit
//! — it first answers everything it read, then ends with a status that says what to resend.
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use futures::Stream;
use proto::v1::predictor_server::Predictor;
use proto::v1::{
    stream_classify_response, ClassifyOptions, ClassifyRequest, ClassifyResponse, ExplainRequest,
    ExplainResponse, ExplainedLabel, ExplainedWord, GetModelInfoRequest, GroupInfo, GroupResult,
    Grouping, GroupingInfo, ItemError, LabelScore, ModelInfo, StreamClassifyRequest,
    StreamClassifyResponse, TextResult,
};
use tokio::sync::{mpsc, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Request, Response, Status, Streaming};

use crate::classify::{Asked, Classifier, ClassifyError};
use crate::engine::{self, Labelled, OptionsError, ServingModel};
use crate::explain::{ExplainAsked, Explained};
use crate::telemetry::Metrics;

/// The goemotions.v1 front end of the classify core.
#[derive(Clone)]
pub struct PredictorService {
    pub core: Classifier,
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
                name: grouping.name.clone(),
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

/// What a goemotions.v1 caller asked for: groupings by name, then the deprecated enum ones.
fn asked(o: Option<&ClassifyOptions>) -> Result<Asked, ClassifyError> {
    let Some(o) = o else {
        return Ok(Asked::default());
    };
    let mut groupings = o.grouping_names.clone();
    #[allow(deprecated)]
    for &g in &o.groupings {
        match Grouping::try_from(g) {
            Ok(known) if known != Grouping::Unspecified => {
                groupings.push(known.short_name().to_string())
            }
            _ => return Err(OptionsError::UnknownGrouping(g.to_string()).into()),
        }
    }
    Ok(Asked {
        top_k: o.top_k,
        all_scores: o.return_all_scores,
        threshold: o.threshold,
        groupings,
    })
}

/// A proto explanation.
fn explain_response(model: &ServingModel, e: Explained) -> ExplainResponse {
    let names = &model.manifest.labels;
    ExplainResponse {
        words: e
            .words
            .into_iter()
            .map(|w| ExplainedWord {
                text: w.text,
                start: w.start as u32,
                end: w.end as u32,
            })
            .collect(),
        labels: e
            .labels
            .into_iter()
            .map(|l| ExplainedLabel {
                id: l.id as u32,
                name: names[l.id].clone(),
                score: l.score,
                predicted: l.predicted,
                attributions: l.attributions.iter().map(|&a| a as f32).collect(),
                logit: l.logit,
                baseline_logit: l.baseline_logit,
                convergence_delta: l.convergence_delta as f32,
            })
            .collect(),
        method: common::explain::METHOD.into(),
        baseline: common::explain::BASELINE.into(),
        steps: e.steps as u32,
        truncated: e.truncated,
        num_tokens: e.num_tokens as u32,
        model_version: model.version().to_string(),
        precision: model.model.precision().to_string(),
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

impl PredictorService {
    /// One stream item, start to finish.
    async fn classify_item(
        &self,
        item: &StreamClassifyRequest,
        room: crate::batcher::Reservation,
        caller: CancellationToken,
    ) -> Result<(TextResult, String), ClassifyError> {
        let asked = asked(item.options.as_ref())?;
        let (labelled, model) = self
            .core
            .classify_one(
                &item.text,
                &asked,
                || format!("text of item {:?}", item.id),
                room,
                caller,
            )
            .await?;
        Ok((text_result(&model, labelled), model.version().to_string()))
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
        let core = &self.core;
        let result = async {
            let model = core.current()?;
            let asked = asked(req.options.as_ref())?;
            core.classify_batch(model, &req.texts, &asked, "Classify")
                .await
        }
        .await
        .map(|(results, model)| ClassifyResponse {
            results: results
                .into_iter()
                .map(|r| text_result(&model, r))
                .collect(),
            model_version: model.version().to_string(),
        });
        core.record("Classify", &result, started);
        result.map(Response::new).map_err(Status::from)
    }

    type ClassifyStreamStream = ResponseStream;

    async fn classify_stream(
        &self,
        request: Request<Streaming<StreamClassifyRequest>>,
    ) -> Result<Response<Self::ClassifyStreamStream>, Status> {
        self.core.current()?;
        let mut inbound = request.into_inner();
        let max_in_flight = self.core.limits.max_in_flight_per_stream.max(1);
        let (tx, rx) = mpsc::channel::<Result<StreamClassifyResponse, Status>>(max_in_flight);
        let service = self.clone();
        let mut draining = self.core.draining.clone();
        service.core.metrics.open_streams.inc();
        let guard = OpenStream(service.core.metrics.clone());
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
                    r = service.core.batcher.reserve(1, None) => r,
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
                    service.core.record("ClassifyStream", &outcome, started);
                    let id = item.id;
                    let response = match outcome {
                        Ok((result, version)) => {
                            service
                                .core
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

    async fn explain(
        &self,
        request: Request<ExplainRequest>,
    ) -> Result<Response<ExplainResponse>, Status> {
        let started = Instant::now();
        let req = request.into_inner();
        let asked = ExplainAsked {
            text: req.text,
            labels: req.labels,
            steps: req.steps,
            threshold: req.threshold,
        };
        let result = async {
            let model = self.core.current()?;
            self.core.explain(model, &asked).await
        }
        .await
        .map(|(explained, model)| explain_response(&model, explained));
        self.core.record("Explain", &result, started);
        result.map(Response::new).map_err(Status::from)
    }

    async fn get_model_info(
        &self,
        _request: Request<GetModelInfoRequest>,
    ) -> Result<Response<ModelInfo>, Status> {
        let started = Instant::now();
        let core = &self.core;
        let result = core.current().map(|model| {
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
                max_texts_per_request: core.limits.max_texts_per_request as u32,
                max_text_bytes: core.limits.max_text_bytes as u32,
                max_in_flight_per_stream: core.limits.max_in_flight_per_stream as u32,
                max_message_bytes: core.limits.max_message_bytes as u32,
                queue_capacity: core.batcher.capacity() as u32,
                precision: model.model.precision().to_string(),
                problem_type: m.problem_type.to_string(),
                groupings: m
                    .groupings
                    .iter()
                    .map(|g| GroupingInfo {
                        name: g.name.clone(),
                        groups: g
                            .groups
                            .iter()
                            .map(|s| GroupInfo {
                                name: s.name.clone(),
                                label_ids: s.members.iter().map(|&id| id as u32).collect(),
                                threshold: s.threshold,
                            })
                            .collect(),
                    })
                    .collect(),
                dataset: m
                    .dataset
                    .as_ref()
                    .map(|d| d.name.clone())
                    .unwrap_or_else(|| common::data::GOEMOTIONS.into()),
                max_explain_labels: core.limits.max_explain_labels as u32,
                max_explain_steps: core.limits.max_explain_steps as u32,
            }
        });
        core.record("GetModelInfo", &result, started);
        result.map(Response::new).map_err(Status::from)
    }
}
