//! The Open Inference Protocol (KServe v2) over HTTP/JSON, on `--http-listen`: the same
//! inference path, limits, token and metrics as the gRPC services (`oip::InferenceService`).
//!
//! Routes: `GET /v2/health/live`, `GET /v2/health/ready`, `GET /v2` (and `/v2/`),
//! `GET /v2/models/{name}[/versions/{v}]`, `GET /v2/models/{name}[/versions/{v}]/ready`,
//! `POST /v2/models/{name}[/versions/{v}]/infer`, with the binary tensor data extension
//! (`Inference-Header-Content-Length`, `binary_data_size`, `binary_data`, `binary_data_output`);
//! and, outside the protocol (at the explain path of TorchServe's KServe v2 API),
//! `POST /v2/models/{name}[/versions/{v}]/explain`: goemotions.v1 Explain with a JSON body of the
//! same fields. Every error is `{"error": "..."}`: 400 (bad input), 401, 404 (unknown model or
//! route), 405, 408 (body too slow), 413 (body over the message limit), 429 (queue full), 503 (no
//! model, draining, too many connections) or 500.
//!
//! The port bounds what a client can hold: request headers must arrive within the header
//! timeout (also the longest a kept-alive connection may sit idle), a body within the body
//! timeout, and at most `max_connections` connections are open (more get a 503 and are closed).
//! While the server drains it keeps answering — 503 for everything but liveness — until exit.
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use common::grpc::BearerToken;
use futures::StreamExt;
use proto::inference::{infer_parameter::ParameterChoice, InferParameter};
use serde_json::{json, Map, Value};
use tokio::io::AsyncWriteExt;
use tokio::sync::{watch, Notify, Semaphore};
use tonic::Code;

use crate::classify::ClassifyError;
use crate::engine::ServingModel;
use crate::explain::{ExplainAsked, Explained};
use crate::oip::{
    classify_options, join_raw_bytes, split_raw_bytes, text_count, wanted_outputs, Inference,
    InferenceService, INPUT, LABELS, SCORES,
};

/// The header that splits a binary-extension body into its JSON part and its tensor bytes.
const HEADER_LENGTH: &str = "inference-header-content-length";

/// Limits of the HTTP port; every one is a flag of `predictor serve`.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Largest request body (the gRPC port's --max-message-bytes).
    pub max_body_bytes: usize,
    /// Time for a request's headers to arrive, and the longest idle time between requests.
    pub header_timeout: Duration,
    /// Time for a request's body to arrive once its headers have.
    pub body_timeout: Duration,
    /// Connections open at once.
    pub max_connections: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            max_body_bytes: crate::Limits::default().max_message_bytes,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            max_connections: 512,
        }
    }
}

/// Requests being answered, so the drain can wait for them.
#[derive(Clone, Default)]
pub(crate) struct InFlight(Arc<(AtomicUsize, Notify)>);

impl InFlight {
    fn enter(&self) -> InFlightGuard {
        self.0 .0.fetch_add(1, Ordering::SeqCst);
        InFlightGuard(self.clone())
    }

    /// Resolves when no request is being answered.
    pub(crate) async fn idle(&self) {
        loop {
            let notified = self.0 .1.notified();
            if self.0 .0.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }
}

struct InFlightGuard(InFlight);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if self.0 .0 .0.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0 .0 .1.notify_waiters();
        }
    }
}

#[derive(Clone)]
struct Rest {
    inference: InferenceService,
    limits: HttpLimits,
    draining: watch::Receiver<bool>,
    in_flight: InFlight,
}

/// The router; `token` (when set) is required on everything but the health routes.
pub(crate) fn router(
    inference: InferenceService,
    token: Option<BearerToken>,
    limits: HttpLimits,
    draining: watch::Receiver<bool>,
    in_flight: InFlight,
) -> Router {
    let state = Rest {
        inference,
        limits,
        draining,
        in_flight,
    };
    let guarded = Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/", get(server_metadata))
        .route("/v2/models/{name}", get(model_metadata))
        .route("/v2/models/{name}/versions/{version}", get(model_metadata))
        .route("/v2/models/{name}/ready", get(model_ready))
        .route(
            "/v2/models/{name}/versions/{version}/ready",
            get(model_ready),
        )
        .route("/v2/models/{name}/infer", post(infer))
        .route("/v2/models/{name}/versions/{version}/infer", post(infer))
        .route("/v2/models/{name}/explain", post(explain))
        .route(
            "/v2/models/{name}/versions/{version}/explain",
            post(explain),
        )
        // Only on matched routes: an unknown path is a 404, not a 401.
        .route_layer(middleware::from_fn(move |req: Request, next: Next| {
            let token = token.clone();
            async move {
                match &token {
                    Some(t) if !authorized(t, req.headers()) => error(
                        StatusCode::UNAUTHORIZED,
                        "missing or invalid `Authorization: Bearer <token>`",
                    ),
                    _ => next.run(req).await,
                }
            }
        }));
    Router::new()
        .route(
            "/v2/health/live",
            get(|| async { Json(json!({"live": true})) }),
        )
        .route("/v2/health/ready", get(server_ready))
        .merge(guarded)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), admit))
        .with_state(state)
}

/// Counts the request in flight and, while draining, answers 503 to everything but the health
/// routes (readiness then says false), closing the connection after the answer.
async fn admit(State(s): State<Rest>, req: Request, next: Next) -> Response {
    let _in_flight = s.in_flight.enter();
    let draining = *s.draining.borrow();
    let health = req.uri().path().starts_with("/v2/health/");
    let mut response = if draining && !health {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is shutting down; send the request to another replica",
        )
    } else {
        next.run(req).await
    };
    if draining {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

async fn not_found(method: Method, uri: axum::http::Uri) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format!(
            "no route for {method} {}; the API is /v2/health/{{live,ready}}, /v2, /v2/models/{{name}}[/versions/{{version}}][/ready|/infer|/explain]",
            uri.path()
        ),
    )
}

async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> Response {
    let allow = if uri.path().ends_with("/infer") || uri.path().ends_with("/explain") {
        "POST"
    } else {
        "GET"
    };
    let mut response = error(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{method} is not allowed on {}; use {allow}", uri.path()),
    );
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    response
}

/// Serves `app` on `listener` until the process exits: HTTP/1.1 with the header timeout, the
/// connection limit and keep-alive; the drain is handled by the router (503s), so the port keeps
/// answering while in-flight work finishes.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: HttpLimits,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, header_timeout_secs = limits.header_timeout.as_secs_f64(),
            body_timeout_secs = limits.body_timeout.as_secs_f64(), max_connections = limits.max_connections,
            "Open Inference Protocol HTTP listening");
    }
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    loop {
        let (mut stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: wait a little rather than spin.
                tracing::warn!(error = %e, "HTTP accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tokio::spawn(async move {
                let body = json!({"error": format!(
                    "too many connections (--http-max-connections {}); retry later", limits.max_connections
                )})
                .to_string();
                let reply = format!(
                    "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tokio::time::timeout(
                    Duration::from_secs(1),
                    stream.write_all(reply.as_bytes()),
                )
                .await;
            });
            continue;
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let app = app.clone();
                    async move {
                        let response = tower::ServiceExt::oneshot(app, req.map(Body::new)).await;
                        Ok::<_, Infallible>(response.unwrap_or_else(|e| match e {}))
                    }
                });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .keep_alive(true)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            if let Err(e) = connection.await {
                tracing::debug!(%peer, error = %e, "HTTP connection ended");
            }
        });
    }
}

fn authorized(token: &BearerToken, headers: &HeaderMap) -> bool {
    let mut probe = tonic::Request::new(());
    if let Some(value) = headers.get("authorization") {
        if let Ok(v) = tonic::metadata::MetadataValue::try_from(value.as_bytes()) {
            probe.metadata_mut().insert("authorization", v);
        }
    }
    token.check(&probe).is_ok()
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({"error": message.into()}))).into_response()
}

fn status_of(e: &ClassifyError) -> StatusCode {
    match e.code() {
        Code::InvalidArgument => StatusCode::BAD_REQUEST,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn failed(e: ClassifyError) -> Response {
    error(status_of(&e), e.to_string())
}

/// The v2 rule for readiness over HTTP: 200 when true, 400 when false.
fn readiness(ready: bool) -> Response {
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::BAD_REQUEST
    };
    (status, Json(json!({"ready": ready}))).into_response()
}

async fn server_ready(State(s): State<Rest>) -> Response {
    readiness(s.inference.ready())
}

async fn server_metadata() -> Response {
    let m = InferenceService::server_metadata();
    Json(json!({"name": m.name, "version": m.version, "extensions": m.extensions})).into_response()
}

/// A model route's path: the name, and the version when the route names one.
#[derive(serde::Deserialize)]
struct ModelPath {
    name: String,
    #[serde(default)]
    version: String,
}

async fn model_metadata(State(s): State<Rest>, Path(p): Path<ModelPath>) -> Response {
    metadata(&s, &p.name, &p.version)
}

fn metadata(s: &Rest, name: &str, version: &str) -> Response {
    match s.inference.model_metadata(name, version) {
        Ok(m) => {
            let tensors = |t: Vec<proto::inference::model_metadata_response::TensorMetadata>| {
                t.into_iter()
                    .map(|t| json!({"name": t.name, "datatype": t.datatype, "shape": t.shape}))
                    .collect::<Vec<_>>()
            };
            Json(json!({
                "name": m.name,
                "versions": m.versions,
                "platform": m.platform,
                "inputs": tensors(m.inputs),
                "outputs": tensors(m.outputs),
            }))
            .into_response()
        }
        Err(e) => failed(e),
    }
}

async fn model_ready(State(s): State<Rest>, Path(p): Path<ModelPath>) -> Response {
    readiness(s.inference.model_ready(&p.name, &p.version))
}

/// Reads a request body within the size limit and the body timeout.
async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limits: HttpLimits,
) -> Result<Vec<u8>, Response> {
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the request body is over {} bytes (--max-message-bytes)",
                limits.max_body_bytes
            ),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_body_bytes as u64) {
        return Err(too_large());
    }
    let read = async {
        let mut bytes = Vec::new();
        let mut chunks = body.into_data_stream();
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(|e| {
                error(
                    StatusCode::BAD_REQUEST,
                    format!("cannot read the request body: {e}"),
                )
            })?;
            if bytes.len() + chunk.len() > limits.max_body_bytes {
                return Err(too_large());
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(bytes)
    };
    match tokio::time::timeout(limits.body_timeout, read).await {
        Ok(result) => result,
        Err(_) => Err(error(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request body did not arrive within {:?} (--http-body-timeout-secs)",
                limits.body_timeout
            ),
        )),
    }
}

async fn infer(
    State(s): State<Rest>,
    Path(ModelPath { name, version }): Path<ModelPath>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let bytes = match read_body(&headers, body, s.limits).await {
        Ok(b) => b,
        Err(response) => return response,
    };
    let mut binary_outputs = (false, false);
    let result = async {
        let (request, binary) = parse_request(name, version, &headers, &bytes)?;
        binary_outputs = binary;
        s.inference.run(request, "RestModelInfer").await
    }
    .await;
    s.inference.record("RestModelInfer", &result, started);
    match result {
        Ok(out) => respond(out, binary_outputs),
        Err(e) => failed(e),
    }
}

async fn explain(
    State(s): State<Rest>,
    Path(ModelPath { name, version }): Path<ModelPath>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let bytes = match read_body(&headers, body, s.limits).await {
        Ok(b) => b,
        Err(response) => return response,
    };
    let result = async {
        let asked = explain_asked(&bytes)?;
        s.inference.explain(&name, &version, &asked).await
    }
    .await;
    s.inference.record("RestExplain", &result, started);
    match result {
        Ok((explained, model)) => Json(explained_json(&model, explained)).into_response(),
        Err(e) => failed(e),
    }
}

/// An explain body: goemotions.v1 ExplainRequest's fields as JSON — `text` (required), `labels`
/// (names), `steps`, `threshold` — each checked by name.
fn explain_asked(body: &[u8]) -> Result<ExplainAsked, ClassifyError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| bad(format!("the request body is not valid JSON: {e}")))?;
    let Value::Object(fields) = v else {
        return Err(bad(
            "the request body must be a JSON object such as {\"text\": \"...\"}",
        ));
    };
    let mut asked = ExplainAsked::default();
    let mut text = None;
    for (key, value) in fields {
        match key.as_str() {
            "text" => match value {
                Value::String(t) => text = Some(t),
                _ => return Err(bad("text must be a string")),
            },
            "labels" => {
                let Value::Array(items) = value else {
                    return Err(bad("labels must be an array of label names"));
                };
                for (i, item) in items.into_iter().enumerate() {
                    match item {
                        Value::String(l) => asked.labels.push(l),
                        _ => {
                            return Err(bad(format!("labels[{i}] must be a label name (a string)")))
                        }
                    }
                }
            }
            "steps" => {
                asked.steps = value
                    .as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(|| bad("steps must be a whole number (0: the default)"))?;
            }
            "threshold" => {
                asked.threshold = match value {
                    Value::Null => None,
                    Value::Number(n) => n.as_f64().map(|t| t as f32),
                    _ => return Err(bad("threshold must be a number")),
                };
            }
            other => {
                return Err(bad(format!(
                    "unknown field {other:?}; an explain body has text, labels, steps and threshold"
                )))
            }
        }
    }
    asked.text = text.ok_or_else(|| bad("text is missing: the text to explain"))?;
    Ok(asked)
}

/// An explanation as JSON, with goemotions.v1 ExplainResponse's field names.
fn explained_json(model: &ServingModel, e: Explained) -> Value {
    let names = &model.manifest.labels;
    json!({
        "model_name": model.manifest.model_name,
        "model_version": model.version(),
        "precision": model.model.precision().to_string(),
        "method": common::explain::METHOD,
        "baseline": common::explain::BASELINE,
        "steps": e.steps,
        "truncated": e.truncated,
        "num_tokens": e.num_tokens,
        "words": e.words.iter().map(|w| json!({"text": w.text, "start": w.start, "end": w.end})).collect::<Vec<_>>(),
        "labels": e.labels.iter().map(|l| json!({
            "id": l.id,
            "name": names[l.id],
            "score": l.score,
            "predicted": l.predicted,
            "attributions": l.attributions,
            "logit": l.logit,
            "baseline_logit": l.baseline_logit,
            "convergence_delta": l.convergence_delta,
        })).collect::<Vec<_>>(),
    })
}

/// The response: JSON outputs, or — for outputs asked for as binary — a JSON header followed by
/// their bytes, its length in `Inference-Header-Content-Length`.
fn respond(out: crate::oip::Inferred, (scores_binary, labels_binary): (bool, bool)) -> Response {
    let n = out.len();
    let mut outputs = Vec::new();
    let mut tail: Vec<u8> = Vec::new();
    if let Some(scores) = &out.scores {
        let mut o = json!({"name": SCORES, "datatype": "FP32", "shape": [n, out.num_labels]});
        if scores_binary {
            let raw: Vec<u8> = scores.iter().flat_map(|v| v.to_le_bytes()).collect();
            o["parameters"] = json!({"binary_data_size": raw.len()});
            tail.extend(raw);
        } else {
            o["data"] = json!(scores);
        }
        outputs.push(o);
    }
    if let Some(labels) = out.labels {
        let mut o = json!({"name": LABELS, "datatype": "BYTES", "shape": [n]});
        if labels_binary {
            let raw = join_raw_bytes(labels.into_iter());
            o["parameters"] = json!({"binary_data_size": raw.len()});
            tail.extend(raw);
        } else {
            let data: Vec<String> = labels
                .iter()
                .map(|l| String::from_utf8_lossy(l).into_owned())
                .collect();
            o["data"] = json!(data);
        }
        outputs.push(o);
    }
    let mut doc = json!({"model_name": out.model_name, "model_version": out.model_version,
        "outputs": outputs});
    if !out.id.is_empty() {
        doc["id"] = json!(out.id);
    }
    if tail.is_empty() {
        return Json(doc).into_response();
    }
    let mut body = doc.to_string().into_bytes();
    let header_length = body.len();
    body.extend(tail);
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(HEADER_LENGTH, HeaderValue::from(header_length));
    response
}

fn bad(message: impl Into<String>) -> ClassifyError {
    ClassifyError::BadRequest(message.into())
}

/// A JSON value that must be an object when present.
fn object<'a>(v: &'a Value, what: &str) -> Result<Option<&'a Map<String, Value>>, ClassifyError> {
    match v {
        Value::Null => Ok(None),
        Value::Object(o) => Ok(Some(o)),
        other => Err(bad(format!("{what} must be an object, got {other}"))),
    }
}

/// A `binary_data`-style boolean parameter, if given.
fn bool_parameter(
    parameters: Option<&Map<String, Value>>,
    key: &str,
    what: &str,
) -> Result<Option<bool>, ClassifyError> {
    match parameters.and_then(|p| p.get(key)) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(bad(format!(
            "{what} parameter {key} must be true or false, got {other}"
        ))),
    }
}

/// The inference request: JSON (`{"id"?, "parameters"?, "inputs": [{"name": "text", "shape",
/// "datatype": "BYTES", "data" | "parameters": {"binary_data_size"}}], "outputs"?: [{"name",
/// "parameters"?: {"binary_data"}}]}`), optionally followed by binary tensor data when
/// `Inference-Header-Content-Length` says where the JSON ends. Returns the request and whether
/// the scores and labels outputs go back as binary data.
fn parse_request(
    name: String,
    version: String,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(Inference, (bool, bool)), ClassifyError> {
    let (json_part, mut binary) = match headers.get(HEADER_LENGTH) {
        None => (body, &[][..]),
        Some(v) => {
            let n = v
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or_else(|| bad("Inference-Header-Content-Length must be a byte count"))?;
            if n > body.len() {
                return Err(bad(format!(
                    "Inference-Header-Content-Length is {n} but the body has {} bytes",
                    body.len()
                )));
            }
            body.split_at(n)
        }
    };
    let v: Value = serde_json::from_slice(json_part)
        .map_err(|e| bad(format!("the request body is not valid JSON: {e}")))?;
    let top = v
        .as_object()
        .ok_or_else(|| bad("the request body must be a JSON object"))?;
    let id = match top.get("id") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => return Err(bad(format!("`id` must be a string, got {other}"))),
    };
    let request_parameters = object(
        top.get("parameters").unwrap_or(&Value::Null),
        "`parameters`",
    )?;
    let inputs = top
        .get("inputs")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("`inputs` must be an array with one BYTES tensor named \"text\""))?;
    let [input] = inputs.as_slice() else {
        return Err(bad(format!(
            "expected exactly one input tensor (BYTES texts named {INPUT:?}), got {}",
            inputs.len()
        )));
    };
    let input = input
        .as_object()
        .ok_or_else(|| bad("inputs[0] must be an object"))?;
    let input_name = input.get("name").and_then(Value::as_str).unwrap_or("");
    if input_name != INPUT {
        return Err(bad(format!(
            "input {input_name:?}: this model's input is {INPUT:?}"
        )));
    }
    if input.get("datatype").and_then(Value::as_str) != Some("BYTES") {
        return Err(bad(format!(
            "input {INPUT:?} has datatype {}; texts are BYTES",
            input.get("datatype").unwrap_or(&Value::Null)
        )));
    }
    let shape_values = input
        .get("shape")
        .and_then(Value::as_array)
        .ok_or_else(|| {
            bad(format!(
                "input {INPUT:?}: `shape` must be an array of integers"
            ))
        })?;
    let mut shape = Vec::with_capacity(shape_values.len());
    for (i, s) in shape_values.iter().enumerate() {
        shape.push(s.as_i64().ok_or_else(|| {
            bad(format!(
                "input {INPUT:?}: shape[{i}] must be an integer, got {s}"
            ))
        })?);
    }
    let n = text_count(&shape).ok_or_else(|| {
        bad(format!(
            "input {INPUT:?} has shape {shape:?}; expected [n] or [n, 1]"
        ))
    })?;
    let input_parameters = object(
        input.get("parameters").unwrap_or(&Value::Null),
        "input `parameters`",
    )?;
    let binary_size = match input_parameters.and_then(|p| p.get("binary_data_size")) {
        None => None,
        Some(v) => Some(v.as_u64().ok_or_else(|| {
            bad(format!(
                "input {INPUT:?}: binary_data_size must be a byte count, got {v}"
            ))
        })? as usize),
    };
    let texts = match binary_size {
        Some(size) => {
            if input.contains_key("data") {
                return Err(bad(format!(
                    "input {INPUT:?} has both `data` and binary_data_size; send one"
                )));
            }
            if size > binary.len() {
                return Err(bad(format!(
                    "input {INPUT:?}: binary_data_size is {size} but {} bytes follow the JSON",
                    binary.len()
                )));
            }
            let (mine, rest) = binary.split_at(size);
            binary = rest;
            split_raw_bytes(mine)?
                .into_iter()
                .enumerate()
                .map(|(i, e)| {
                    String::from_utf8(e.to_vec())
                        .map_err(|_| bad(format!("text {i} is not valid UTF-8")))
                })
                .collect::<Result<Vec<_>, _>>()?
        }
        None => {
            let data = input.get("data").ok_or_else(|| {
                bad(format!(
                    "input {INPUT:?} has neither `data` nor a binary_data_size parameter"
                ))
            })?;
            let mut texts = Vec::new();
            flatten_strings(data, shape.len(), &mut texts)?;
            texts
        }
    };
    if !binary.is_empty() {
        return Err(bad(format!(
            "{} bytes of binary data follow the JSON that no input claims",
            binary.len()
        )));
    }
    if texts.len() != n {
        return Err(bad(format!(
            "input shape {shape:?} but the data holds {} texts",
            texts.len()
        )));
    }
    let mut parameters = HashMap::new();
    for (key, value) in request_parameters.into_iter().flatten() {
        let choice = match value {
            Value::Bool(b) => ParameterChoice::BoolParam(*b),
            Value::Number(x) => match (x.as_i64(), x.as_u64(), x.as_f64()) {
                (Some(i), _, _) => ParameterChoice::Int64Param(i),
                (None, Some(u), _) => ParameterChoice::Uint64Param(u),
                (None, None, Some(f)) => ParameterChoice::DoubleParam(f),
                _ => return Err(bad(format!("parameter {key:?} is not a usable number"))),
            },
            Value::String(s) => ParameterChoice::StringParam(s.clone()),
            other => {
                return Err(bad(format!(
                    "parameter {key:?} must be a string, number or boolean, got {other}"
                )))
            }
        };
        parameters.insert(
            key.clone(),
            InferParameter {
                parameter_choice: Some(choice),
            },
        );
    }
    let options = classify_options(&parameters)?;
    let all_binary =
        bool_parameter(request_parameters, "binary_data_output", "request")?.unwrap_or(false);
    let mut names = Vec::new();
    let mut binary_outputs = (all_binary, all_binary);
    match top.get("outputs") {
        None | Some(Value::Null) => {}
        Some(Value::Array(outputs)) => {
            for (i, o) in outputs.iter().enumerate() {
                let o = o
                    .as_object()
                    .ok_or_else(|| bad(format!("outputs[{i}] must be an object")))?;
                let output_name = o.get("name").and_then(Value::as_str).ok_or_else(|| {
                    bad(format!(
                        "outputs[{i}] needs a `name` ({SCORES:?} or {LABELS:?})"
                    ))
                })?;
                let p = object(
                    o.get("parameters").unwrap_or(&Value::Null),
                    "output `parameters`",
                )?;
                let binary = bool_parameter(p, "binary_data", "output")?.unwrap_or(all_binary);
                match output_name {
                    SCORES => binary_outputs.0 = binary,
                    LABELS => binary_outputs.1 = binary,
                    _ => {}
                }
                names.push(output_name.to_string());
            }
        }
        Some(other) => return Err(bad(format!("`outputs` must be an array, got {other}"))),
    }
    let (want_scores, want_labels) = wanted_outputs(names.iter().map(String::as_str))?;
    Ok((
        Inference {
            model_name: name,
            model_version: version,
            id,
            texts,
            options,
            want_scores,
            want_labels,
        },
        binary_outputs,
    ))
}

/// The strings of a BYTES tensor's `data`: flat (row-major) or nested by row, never nested
/// deeper than the tensor's `rank`.
fn flatten_strings(v: &Value, rank: usize, out: &mut Vec<String>) -> Result<(), ClassifyError> {
    match v {
        Value::Array(items) if rank > 0 => {
            for item in items {
                match item {
                    Value::String(s) => out.push(s.clone()),
                    Value::Array(_) => flatten_strings(item, rank - 1, out)?,
                    other => {
                        return Err(bad(format!(
                            "`data` of a BYTES tensor holds strings; found {other}"
                        )))
                    }
                }
            }
            Ok(())
        }
        Value::Array(_) => Err(bad(
            "`data` is nested deeper than the input's shape".to_string()
        )),
        other => Err(bad(format!(
            "`data` of a BYTES tensor must be an array of strings; found {other}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<(Inference, (bool, bool)), ClassifyError> {
        parse_request(
            "m".into(),
            String::new(),
            &HeaderMap::new(),
            body.as_bytes(),
        )
    }

    #[test]
    fn requests_parse_flat_or_nested_with_parameters() {
        let (r, binary) = parse(
            r#"{"id": "7", "parameters": {"top_k": 2, "threshold": 0.4},
                "inputs": [{"name": "text", "shape": [2, 1], "datatype": "BYTES", "data": [["a"], ["b"]]}],
                "outputs": [{"name": "labels"}]}"#,
        )
        .unwrap();
        assert_eq!(r.texts, vec!["a", "b"]);
        assert_eq!(r.id, "7");
        assert_eq!(r.options.top_k, 2);
        assert_eq!(r.options.threshold, Some(0.4));
        assert!(r.want_labels && !r.want_scores);
        assert_eq!(binary, (false, false));
    }

    #[test]
    fn binary_inputs_and_outputs_follow_the_extension() {
        let raw: Vec<u8> = join_raw_bytes(["héllo", ""].iter().map(|t| t.as_bytes().to_vec()));
        let header = format!(
            r#"{{"inputs": [{{"name": "text", "shape": [2], "datatype": "BYTES", "parameters": {{"binary_data_size": {}}}}}],
                "parameters": {{"binary_data_output": true}}, "outputs": [{{"name": "scores"}}, {{"name": "labels", "parameters": {{"binary_data": false}}}}]}}"#,
            raw.len()
        );
        let mut body = header.clone().into_bytes();
        body.extend(&raw);
        let mut headers = HeaderMap::new();
        headers.insert(HEADER_LENGTH, HeaderValue::from(header.len()));
        let (r, binary) = parse_request("m".into(), String::new(), &headers, &body).unwrap();
        assert_eq!(r.texts, vec!["héllo", ""]);
        assert_eq!(
            binary,
            (true, false),
            "request-wide binary, labels overridden"
        );
        // A wrong header length or leftover bytes are refused.
        headers.insert(HEADER_LENGTH, HeaderValue::from(body.len() + 1));
        assert!(parse_request("m".into(), String::new(), &headers, &body).is_err());
        let mut extra = body.clone();
        extra.push(0);
        headers.insert(HEADER_LENGTH, HeaderValue::from(header.len()));
        let err = parse_request("m".into(), String::new(), &headers, &extra).unwrap_err();
        assert!(err.to_string().contains("no input claims"), "{err}");
    }

    #[test]
    fn bad_requests_say_what_is_wrong() {
        let cases = [
            ("not json", "not valid JSON"),
            ("[1]", "JSON object"),
            (r#"{"inputs": []}"#, "exactly one input"),
            (
                r#"{"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": ["a"]}]}"#,
                "input \"x\"",
            ),
            (
                r#"{"inputs": [{"name": "text", "shape": [1], "datatype": "FP32", "data": [1.0]}]}"#,
                "BYTES",
            ),
            (
                r#"{"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": ["a"]}]}"#,
                "holds 1 texts",
            ),
            (
                r#"{"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [3]}]}"#,
                "holds strings",
            ),
            (
                r#"{"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [["a"]]}]}"#,
                "nested deeper",
            ),
            (
                r#"{"inputs": [{"name": "text", "shape": [1.5], "datatype": "BYTES", "data": ["a"]}]}"#,
                "shape[0] must be an integer",
            ),
            (
                r#"{"inputs": [{"name": "text", "shape": ["1"], "datatype": "BYTES", "data": ["a"]}]}"#,
                "shape[0] must be an integer",
            ),
            (
                r#"{"parameters": [1], "inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a"]}]}"#,
                "`parameters` must be an object",
            ),
            (
                r#"{"id": 5, "inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a"]}]}"#,
                "`id` must be a string",
            ),
            (
                r#"{"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a"]}], "outputs": [{"name": "x"}]}"#,
                "unknown output",
            ),
            (
                r#"{"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a"]}], "outputs": "scores"}"#,
                "`outputs` must be an array",
            ),
            (
                r#"{"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a"]}], "parameters": {"temperature": 1}}"#,
                "temperature",
            ),
            (
                r#"{"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES"}]}"#,
                "neither `data`",
            ),
        ];
        for (body, want) in cases {
            let err = parse(body).unwrap_err();
            assert!(err.to_string().contains(want), "{body}: {err}");
            assert_eq!(status_of(&err), StatusCode::BAD_REQUEST);
        }
    }
}
