//! The gRPC `goemotions.v1.Predictor` service: validation and limits, then the batcher.
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use futures::Stream;
use proto::v1::predictor_server::Predictor;
use proto::v1::{
    stream_classify_response, ClassifyRequest, ClassifyResponse, GetModelInfoRequest, ItemError,
    ModelInfo, StreamClassifyRequest, StreamClassifyResponse, TextResult,
};
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status, Streaming};

use crate::batcher::{Batcher, ScoreResult};
use crate::engine::{self, OutputOptions, ServingModel};
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

fn code_name(code: Code) -> String {
    format!("{code:?}")
}

impl PredictorService {
    fn current(&self) -> Result<Arc<ServingModel>, Status> {
        self.slot
            .get()
            .ok_or_else(|| Status::unavailable("no model loaded yet; the predictor is starting"))
    }

    fn check_text(&self, text: &str, what: &str) -> Result<(), Status> {
        if text.len() > self.limits.max_text_bytes {
            return Err(Status::invalid_argument(format!(
                "{what} is {} bytes; the limit is {} bytes per text (--max-text-bytes)",
                text.len(),
                self.limits.max_text_bytes
            )));
        }
        Ok(())
    }

    /// Tokenizes and queues one text.
    fn enqueue(&self, model: &Arc<ServingModel>, text: &str) -> Result<Pending, Status> {
        if text.trim().is_empty() {
            return Ok(Pending::Empty);
        }
        let encoded = model
            .encode(text)
            .map_err(|e| Status::invalid_argument(format!("cannot tokenize: {e}")))?;
        let rx = self
            .batcher
            .submit(model.clone(), encoded.clone())
            .map_err(|e| Status::resource_exhausted(e.to_string()))?;
        Ok(Pending::Queued { encoded, rx })
    }

    fn record<T>(&self, method: &str, result: &Result<T, Status>, started: Instant) {
        let code = result
            .as_ref()
            .map(|_| Code::Ok)
            .unwrap_or_else(|s| s.code());
        self.metrics
            .requests
            .with_label_values(&[method, &code_name(code)])
            .inc();
        self.metrics
            .request_seconds
            .with_label_values(&[method])
            .observe(started.elapsed().as_secs_f64());
    }
}

async fn finish(
    model: &ServingModel,
    pending: Pending,
    opts: OutputOptions,
) -> Result<TextResult, Status> {
    match pending {
        Pending::Empty => Ok(engine::empty_result()),
        Pending::Queued { encoded, rx } => {
            let scores = rx
                .await
                .map_err(|_| Status::internal("inference worker stopped"))?
                .map_err(|e| Status::internal(format!("inference failed: {e}")))?;
            Ok(engine::build_result(model, &scores, &encoded, opts))
        }
    }
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<StreamClassifyResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Predictor for PredictorService {
    async fn classify(
        &self,
        request: Request<ClassifyRequest>,
    ) -> Result<Response<ClassifyResponse>, Status> {
        let started = Instant::now();
        let result = async {
            let req = request.into_inner();
            let model = self.current()?;
            if req.texts.len() > self.limits.max_texts_per_request {
                return Err(Status::invalid_argument(format!(
                    "{} texts in one request; the limit is {} (--max-texts-per-request): split the batch or use ClassifyStream",
                    req.texts.len(),
                    self.limits.max_texts_per_request
                )));
            }
            let opts = OutputOptions::from_proto(req.options.as_ref(), model.manifest.labels.len())
                .map_err(Status::invalid_argument)?;
            for (i, text) in req.texts.iter().enumerate() {
                self.check_text(text, &format!("texts[{i}]"))?;
            }
            let pending: Vec<Pending> =
                req.texts.iter().map(|t| self.enqueue(&model, t)).collect::<Result<_, Status>>()?;
            let mut results = Vec::with_capacity(pending.len());
            for p in pending {
                results.push(finish(&model, p, opts).await?);
            }
            self.metrics.texts.with_label_values(&["Classify"]).inc_by(results.len() as u64);
            Ok(ClassifyResponse { results, model_version: model.version().to_string() })
        }
        .await;
        self.record("Classify", &result, started);
        result.map(Response::new)
    }

    type ClassifyStreamStream = ResponseStream;

    async fn classify_stream(
        &self,
        request: Request<Streaming<StreamClassifyRequest>>,
    ) -> Result<Response<Self::ClassifyStreamStream>, Status> {
        self.current()?;
        let mut inbound = request.into_inner();
        let max_in_flight = self.limits.max_in_flight_per_stream;
        let (tx, rx) = mpsc::channel::<Result<StreamClassifyResponse, Status>>(max_in_flight);
        let service = self.clone();
        let mut draining = self.draining.clone();
        service.metrics.open_streams.inc();
        tokio::spawn(async move {
            let permits = Arc::new(Semaphore::new(max_in_flight));
            loop {
                if *draining.borrow() {
                    break;
                }
                // Back-pressure: read the next text only when fewer than max_in_flight are open.
                let permit = tokio::select! {
                    p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
                    _ = draining.changed() => break,
                };
                let message = tokio::select! {
                    m = inbound.message() => m,
                    _ = draining.changed() => break,
                    _ = tx.closed() => break,
                };
                let item = match message {
                    Ok(Some(item)) => item,
                    Ok(None) => break,
                    Err(status) => {
                        tracing::debug!(%status, "stream closed by client error");
                        break;
                    }
                };
                let started = Instant::now();
                let service = service.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let id = item.id.clone();
                    let outcome = async {
                        let model = service.current()?;
                        service.check_text(&item.text, &format!("text of item {id:?}"))?;
                        let opts = OutputOptions::from_proto(
                            item.options.as_ref(),
                            model.manifest.labels.len(),
                        )
                        .map_err(Status::invalid_argument)?;
                        let pending = service.enqueue(&model, &item.text)?;
                        let result = finish(&model, pending, opts).await?;
                        Ok::<_, Status>((result, model.version().to_string()))
                    }
                    .await;
                    service.record("ClassifyStream", &outcome, started);
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
                        Err(status) => StreamClassifyResponse {
                            id,
                            outcome: Some(stream_classify_response::Outcome::Error(ItemError {
                                code: status.code() as i32,
                                message: status.message().to_string(),
                            })),
                            model_version: String::new(),
                        },
                    };
                    let _ = tx.send(Ok(response)).await;
                    drop(permit);
                });
            }
            // Finish what is in flight, then end the response stream.
            let _ = permits.acquire_many(max_in_flight as u32).await;
            service.metrics.open_streams.dec();
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
            }
        });
        self.record("GetModelInfo", &result, started);
        result.map(Response::new)
    }
}
