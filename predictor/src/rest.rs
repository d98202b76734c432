//! The Open Inference Protocol (KServe v2) over HTTP/JSON, on `--http-listen`: the same
//! inference path, limits, token and metrics as the gRPC services (`oip::InferenceService`).
//!
//! Routes: `GET /v2/health/live`, `GET /v2/health/ready`, `GET /v2`, `GET /v2/models/{name}[/versions/{v}]`,
//! `GET /v2/models/{name}[/versions/{v}]/ready`, `POST /v2/models/{name}[/versions/{v}]/infer`.
//! Errors are `{"error": "..."}` with 400 (bad input), 401, 404 (unknown model), 413 (body over
//! the message limit), 429 (queue full), 503 (no model, draining) or 500.
use std::collections::HashMap;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use common::grpc::BearerToken;
use proto::inference::{infer_parameter::ParameterChoice, InferParameter};
use serde_json::{json, Value};
use tonic::Code;

use crate::oip::{
    classify_options, text_count, wanted_outputs, Inference, InferenceService, LABELS, SCORES,
};
use crate::service::ClassifyError;

#[derive(Clone)]
struct Rest {
    inference: InferenceService,
}

/// The router; `token` (when set) is required on everything but the health routes.
pub(crate) fn router(
    inference: InferenceService,
    token: Option<BearerToken>,
    max_body_bytes: usize,
) -> Router {
    let guarded = Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/models/{name}", get(model_metadata))
        .route(
            "/v2/models/{name}/versions/{version}",
            get(model_metadata_version),
        )
        .route("/v2/models/{name}/ready", get(model_ready))
        .route(
            "/v2/models/{name}/versions/{version}/ready",
            get(model_ready_version),
        )
        .route("/v2/models/{name}/infer", post(infer))
        .route(
            "/v2/models/{name}/versions/{version}/infer",
            post(infer_version),
        )
        .layer(middleware::from_fn(move |req: Request, next: Next| {
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
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(Rest { inference })
}

/// Serves `app` on `listener` until `shutdown` resolves (the predictor starts draining).
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "Open Inference Protocol HTTP listening");
    }
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
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

async fn model_metadata(State(s): State<Rest>, Path(name): Path<String>) -> Response {
    metadata(&s, &name, "")
}

async fn model_metadata_version(
    State(s): State<Rest>,
    Path((name, version)): Path<(String, String)>,
) -> Response {
    metadata(&s, &name, &version)
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

async fn model_ready(State(s): State<Rest>, Path(name): Path<String>) -> Response {
    readiness(s.inference.model_ready(&name, ""))
}

async fn model_ready_version(
    State(s): State<Rest>,
    Path((name, version)): Path<(String, String)>,
) -> Response {
    readiness(s.inference.model_ready(&name, &version))
}

async fn infer(State(s): State<Rest>, Path(name): Path<String>, body: String) -> Response {
    infer_call(&s, name, String::new(), &body).await
}

async fn infer_version(
    State(s): State<Rest>,
    Path((name, version)): Path<(String, String)>,
    body: String,
) -> Response {
    infer_call(&s, name, version, &body).await
}

async fn infer_call(s: &Rest, name: String, version: String, body: &str) -> Response {
    let started = Instant::now();
    let result = async {
        let request = parse_request(name, version, body)?;
        s.inference.run(request, "RestModelInfer").await
    }
    .await;
    s.inference.record("RestModelInfer", &result, started);
    match result {
        Ok(out) => {
            let n = out.len();
            let mut outputs = Vec::new();
            if let Some(scores) = &out.scores {
                outputs.push(json!({"name": SCORES, "datatype": "FP32",
                    "shape": [n, out.num_labels], "data": scores}));
            }
            if let Some(labels) = &out.labels {
                let data: Vec<String> = labels
                    .iter()
                    .map(|l| String::from_utf8_lossy(l).into_owned())
                    .collect();
                outputs
                    .push(json!({"name": LABELS, "datatype": "BYTES", "shape": [n], "data": data}));
            }
            let mut body = json!({"model_name": out.model_name, "model_version": out.model_version,
                "outputs": outputs});
            if !out.id.is_empty() {
                body["id"] = json!(out.id);
            }
            Json(body).into_response()
        }
        Err(e) => failed(e),
    }
}

fn bad(message: impl Into<String>) -> ClassifyError {
    ClassifyError::BadRequest(message.into())
}

/// The JSON inference request: `{"id"?, "parameters"?, "inputs": [{"name", "shape", "datatype":
/// "BYTES", "data": [...]}], "outputs"?: [{"name"}]}`; `data` may be flat or nested by row.
fn parse_request(name: String, version: String, body: &str) -> Result<Inference, ClassifyError> {
    let v: Value = serde_json::from_str(body)
        .map_err(|e| bad(format!("the request body is not JSON: {e}")))?;
    let inputs = v["inputs"]
        .as_array()
        .ok_or_else(|| bad("`inputs` must be an array with one BYTES tensor"))?;
    let [input] = inputs.as_slice() else {
        return Err(bad(format!(
            "expected exactly one input tensor (BYTES texts), got {}",
            inputs.len()
        )));
    };
    if input["datatype"] != "BYTES" {
        return Err(bad(format!(
            "input {} has datatype {}; texts are BYTES",
            input["name"], input["datatype"]
        )));
    }
    let shape: Vec<i64> = input["shape"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_i64).collect())
        .unwrap_or_default();
    let n = text_count(&shape)
        .ok_or_else(|| bad(format!("input shape {shape:?}; expected [n] or [n, 1]")))?;
    let mut texts = Vec::new();
    flatten_strings(&input["data"], &mut texts)?;
    if texts.len() != n {
        return Err(bad(format!(
            "input shape {shape:?} but `data` holds {} texts",
            texts.len()
        )));
    }
    let mut parameters = HashMap::new();
    if let Some(p) = v.get("parameters").and_then(Value::as_object) {
        for (key, value) in p {
            let choice = match value {
                Value::Bool(b) => ParameterChoice::BoolParam(*b),
                Value::Number(x) if x.is_i64() => {
                    ParameterChoice::Int64Param(x.as_i64().unwrap_or(0))
                }
                Value::Number(x) if x.is_u64() => {
                    ParameterChoice::Uint64Param(x.as_u64().unwrap_or(0))
                }
                Value::Number(x) => ParameterChoice::DoubleParam(x.as_f64().unwrap_or(f64::NAN)),
                Value::String(s) => ParameterChoice::StringParam(s.clone()),
                other => {
                    return Err(bad(format!(
                        "parameter {key:?} has an unsupported value {other}"
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
    }
    let options = classify_options(&parameters)?;
    let names: Vec<String> = v["outputs"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|o| o["name"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default();
    let (want_scores, want_labels) = wanted_outputs(names.iter().map(String::as_str))?;
    Ok(Inference {
        model_name: name,
        model_version: version,
        id: v["id"].as_str().unwrap_or("").to_string(),
        texts,
        options,
        want_scores,
        want_labels,
    })
}

fn flatten_strings(v: &Value, out: &mut Vec<String>) -> Result<(), ClassifyError> {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(items) => {
            for item in items {
                flatten_strings(item, out)?;
            }
        }
        other => {
            return Err(bad(format!(
                "`data` of a BYTES tensor holds strings; found {other}"
            )))
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_flat_or_nested_with_parameters() {
        let r = parse_request(
            "goemotions".into(),
            String::new(),
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
    }

    #[test]
    fn bad_requests_say_what_is_wrong() {
        let cases = [
            ("not json", "not JSON"),
            (r#"{"inputs": []}"#, "exactly one input"),
            (
                r#"{"inputs": [{"shape": [1], "datatype": "FP32", "data": [1.0]}]}"#,
                "BYTES",
            ),
            (
                r#"{"inputs": [{"shape": [2], "datatype": "BYTES", "data": ["a"]}]}"#,
                "holds 1 texts",
            ),
            (
                r#"{"inputs": [{"shape": [1], "datatype": "BYTES", "data": [3]}]}"#,
                "holds strings",
            ),
            (
                r#"{"inputs": [{"shape": [1], "datatype": "BYTES", "data": ["a"]}], "outputs": [{"name": "x"}]}"#,
                "unknown output",
            ),
            (
                r#"{"inputs": [{"shape": [1], "datatype": "BYTES", "data": ["a"]}], "parameters": {"temperature": 1}}"#,
                "temperature",
            ),
        ];
        for (body, want) in cases {
            let err = parse_request("m".into(), String::new(), body).unwrap_err();
            assert!(err.to_string().contains(want), "{body}: {err}");
            assert_eq!(status_of(&err), StatusCode::BAD_REQUEST);
        }
    }
}
