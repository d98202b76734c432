//! The Open Inference Protocol (KServe v2) over gRPC, `inference.GRPCInferenceService`, served
//! beside goemotions.v1 on the same port, a sibling front end on the classify core
//! (`classify::Classifier`): the same limits, queue, metrics and access control. The protocol's
//! tensor mapping lives here (see `proto/inference/grpc_predict_v2.proto`); `rest` uses it for
//! the same protocol over HTTP.
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use proto::inference::grpc_inference_service_server::GrpcInferenceService;
use proto::inference::model_infer_request::InferInputTensor;
use proto::inference::model_infer_response::InferOutputTensor;
use proto::inference::model_metadata_response::TensorMetadata;
use proto::inference::{
    infer_parameter::ParameterChoice, InferParameter, ModelInferRequest, ModelInferResponse,
    ModelMetadataRequest, ModelMetadataResponse, ModelReadyRequest, ModelReadyResponse,
    ServerLiveRequest, ServerLiveResponse, ServerMetadataRequest, ServerMetadataResponse,
    ServerReadyRequest, ServerReadyResponse,
};
use tonic::{Request, Response, Status};

use crate::classify::{Asked, Classifier, ClassifyError};
use crate::engine::{Labelled, ServingModel};
use crate::explain::{ExplainAsked, Explained};

/// The input tensor: UTF-8 texts.
pub(crate) const INPUT: &str = "text";
/// Output: scores `[n, labels]` in label-id order (sigmoids, or a softmax for single-label).
pub(crate) const SCORES: &str = "scores";
/// Output: per text, JSON `{"labels": [...], "top_k": [{"label", "score"}...], "groups": {...}}`.
pub(crate) const LABELS: &str = "labels";
/// What ServerMetadata and ModelMetadata call this server and its models.
const SERVER_NAME: &str = "goemotions-predictor";
const PLATFORM: &str = "goemotions-bert";

/// The service. Its server liveness and readiness calls are open, like `grpc.health.v1` and the
/// REST health routes (probes carry no token); every other call needs the token when one is set.
#[derive(Clone)]
pub struct InferenceService {
    pub(crate) core: Classifier,
    pub(crate) token: Option<common::grpc::BearerToken>,
}

impl InferenceService {
    fn authorize<T>(&self, request: &Request<T>) -> Result<(), Status> {
        match &self.token {
            Some(token) => token.check(request),
            None => Ok(()),
        }
    }
}

fn bad(message: impl Into<String>) -> ClassifyError {
    ClassifyError::BadRequest(message.into())
}

/// The served model if `name` (and `version`, when not empty) names it.
fn check_model(model: &ServingModel, name: &str, version: &str) -> Result<(), ClassifyError> {
    let served = &model.manifest.model_name;
    if name != served || !(version.is_empty() || version == model.version()) {
        return Err(ClassifyError::UnknownModel {
            name: name.into(),
            version: version.into(),
            served: served.clone(),
            served_version: model.version().into(),
        });
    }
    Ok(())
}

/// Splits `raw_input_contents` BYTES: each element is a 4-byte little-endian length, then bytes.
pub(crate) fn split_raw_bytes(raw: &[u8]) -> Result<Vec<&[u8]>, ClassifyError> {
    let mut out = Vec::new();
    let mut rest = raw;
    while !rest.is_empty() {
        let (len, tail) = rest.split_first_chunk::<4>().ok_or_else(|| {
            bad(format!(
                "raw_input_contents: element {} has a truncated length prefix",
                out.len()
            ))
        })?;
        let len = u32::from_le_bytes(*len) as usize;
        if tail.len() < len {
            return Err(bad(format!(
                "raw_input_contents: element {} says {len} bytes, {} remain",
                out.len(),
                tail.len()
            )));
        }
        out.push(&tail[..len]);
        rest = &tail[len..];
    }
    Ok(out)
}

/// How many texts a BYTES input of this shape holds: `[n]` or `[n, 1]`, n ≥ 0.
pub(crate) fn text_count(shape: &[i64]) -> Option<usize> {
    match shape {
        [n] | [n, 1] if *n >= 0 => Some(*n as usize),
        _ => None,
    }
}

/// The texts of a ModelInfer request: one BYTES input of shape `[n]` or `[n, 1]`.
fn input_texts(req: &ModelInferRequest) -> Result<Vec<String>, ClassifyError> {
    let [input] = req.inputs.as_slice() else {
        return Err(bad(format!(
            "expected exactly one input tensor ({INPUT:?}, BYTES), got {}",
            req.inputs.len()
        )));
    };
    let InferInputTensor {
        name,
        datatype,
        shape,
        contents,
        ..
    } = input;
    if datatype != "BYTES" {
        return Err(bad(format!(
            "input {name:?} has datatype {datatype}; texts are BYTES"
        )));
    }
    let n = text_count(shape).ok_or_else(|| {
        bad(format!(
            "input {name:?} has shape {shape:?}; expected [n] or [n, 1]"
        ))
    })?;
    let in_contents = contents
        .as_ref()
        .is_some_and(|c| !c.bytes_contents.is_empty());
    if in_contents && !req.raw_input_contents.is_empty() {
        return Err(bad(format!(
            "input {name:?} has data in both `contents` and `raw_input_contents`; send one"
        )));
    }
    let elements: Vec<&[u8]> = match req.raw_input_contents.as_slice() {
        [] => contents
            .as_ref()
            .map(|c| c.bytes_contents.iter().map(Vec::as_slice).collect())
            .unwrap_or_default(),
        [raw] => split_raw_bytes(raw)?,
        more => {
            return Err(bad(format!(
                "{} raw_input_contents for one input",
                more.len()
            )))
        }
    };
    if elements.len() != n {
        return Err(bad(format!(
            "input {name:?} has shape {shape:?} but holds {} texts",
            elements.len()
        )));
    }
    elements
        .into_iter()
        .enumerate()
        .map(|(i, e)| {
            String::from_utf8(e.to_vec()).map_err(|_| bad(format!("text {i} is not valid UTF-8")))
        })
        .collect()
}

/// `top_k` (integer), `threshold` (number in (0, 1)) and `groupings` (names, comma-separated)
/// from the request parameters; the served model checks the values.
pub(crate) fn classify_options(
    parameters: &HashMap<String, InferParameter>,
) -> Result<Asked, ClassifyError> {
    let mut options = Asked {
        all_scores: true,
        ..Asked::default()
    };
    for (key, value) in parameters {
        let choice = value.parameter_choice.as_ref();
        match key.as_str() {
            "top_k" => {
                let k = match choice {
                    Some(ParameterChoice::Int64Param(k)) => u32::try_from(*k).ok(),
                    Some(ParameterChoice::Uint64Param(k)) => u32::try_from(*k).ok(),
                    _ => None,
                };
                options.top_k =
                    k.ok_or_else(|| bad("parameter top_k must be a non-negative integer"))?;
            }
            "threshold" => {
                let t = match choice {
                    Some(ParameterChoice::DoubleParam(t)) => *t,
                    _ => return Err(bad("parameter threshold must be a number in (0, 1)")),
                };
                options.threshold = Some(t as f32);
            }
            "groupings" => {
                let Some(ParameterChoice::StringParam(names)) = choice else {
                    return Err(bad(
                        "parameter groupings must be a string such as \"ekman,sentiment\"",
                    ));
                };
                options.groupings.extend(
                    names
                        .split(',')
                        .map(str::trim)
                        .filter(|n| !n.is_empty())
                        .map(String::from),
                );
            }
            // Triton's clients send these on their own; they do not change the answer.
            "binary_data_output" | "binary_data_size" | "sequence_id" | "priority" | "timeout" => {}
            other => {
                return Err(bad(format!(
                    "unknown parameter {other:?}; this model takes top_k, threshold and groupings"
                )))
            }
        }
    }
    Ok(options)
}

fn labels_json(model: &ServingModel, r: &Labelled) -> Vec<u8> {
    let label_names = &model.manifest.labels;
    let names: Vec<&str> = r
        .labels
        .iter()
        .map(|l| label_names[l.id].as_str())
        .collect();
    let top_k: Vec<serde_json::Value> = r
        .top_k
        .iter()
        .map(|l| serde_json::json!({"label": label_names[l.id], "score": l.score}))
        .collect();
    let mut doc = serde_json::json!({"labels": names, "top_k": top_k});
    for g in &r.groups {
        let grouping = &model.manifest.groupings[g.grouping];
        let group_name = |id: usize| grouping.groups[id].name.clone();
        let scores: serde_json::Map<String, serde_json::Value> = g
            .scores
            .iter()
            .map(|s| (group_name(s.id), serde_json::json!(s.score)))
            .collect();
        let predicted: Vec<String> = g.labels.iter().map(|l| group_name(l.id)).collect();
        doc["groups"][grouping.name.as_str()] =
            serde_json::json!({"labels": predicted, "scores": scores});
    }
    serde_json::to_vec(&doc).unwrap_or_default()
}

fn output_tensor(name: &str, datatype: &str, shape: Vec<i64>) -> InferOutputTensor {
    InferOutputTensor {
        name: name.into(),
        datatype: datatype.into(),
        shape,
        parameters: HashMap::new(),
        contents: None,
    }
}

/// BYTES elements in raw form: each a 4-byte little-endian length, then its bytes.
pub(crate) fn join_raw_bytes(elements: impl Iterator<Item = Vec<u8>>) -> Vec<u8> {
    let mut out = Vec::new();
    for e in elements {
        out.extend_from_slice(&(e.len() as u32).to_le_bytes());
        out.extend_from_slice(&e);
    }
    out
}

fn tensor_metadata(name: &str, datatype: &str, shape: Vec<i64>) -> TensorMetadata {
    TensorMetadata {
        name: name.into(),
        datatype: datatype.into(),
        shape,
    }
}

/// A ModelInfer request in protocol-neutral form (gRPC and REST parse into it).
#[derive(Debug)]
pub(crate) struct Inference {
    pub model_name: String,
    pub model_version: String,
    pub id: String,
    pub texts: Vec<String>,
    pub options: Asked,
    pub want_scores: bool,
    pub want_labels: bool,
}

/// Its answer: `scores` row-major `[n, labels]`, `labels` one JSON document per text.
pub(crate) struct Inferred {
    pub model_name: String,
    pub model_version: String,
    pub id: String,
    pub num_labels: usize,
    pub scores: Option<Vec<f32>>,
    pub labels: Option<Vec<Vec<u8>>>,
}

impl Inferred {
    pub fn len(&self) -> usize {
        self.labels
            .as_ref()
            .map(Vec::len)
            .or_else(|| {
                self.scores
                    .as_ref()
                    .map(|s| s.len() / self.num_labels.max(1))
            })
            .unwrap_or(0)
    }
}

/// Output names requested, validated (all when none are named).
pub(crate) fn wanted_outputs<'a>(
    names: impl Iterator<Item = &'a str>,
) -> Result<(bool, bool), ClassifyError> {
    let (mut scores, mut labels, mut any) = (false, false, false);
    for name in names {
        any = true;
        match name {
            SCORES => scores = true,
            LABELS => labels = true,
            other => {
                return Err(bad(format!(
                    "unknown output {other:?}; outputs are {SCORES:?} and {LABELS:?}"
                )))
            }
        }
    }
    Ok(if any { (scores, labels) } else { (true, true) })
}

impl InferenceService {
    /// Scores the texts through the shared path; `method` labels the metrics.
    pub(crate) async fn run(
        &self,
        request: Inference,
        method: &str,
    ) -> Result<Inferred, ClassifyError> {
        let model = self.core.current()?;
        check_model(&model, &request.model_name, &request.model_version)?;
        let (results, model) = self
            .core
            .classify_batch(model, &request.texts, &request.options, method)
            .await?;
        let width = model.num_labels();
        // An empty text has no scores (as in goemotions.v1); in a tensor it scores 0 everywhere.
        let scores = request.want_scores.then(|| {
            results
                .iter()
                .flat_map(|r| {
                    if r.scores.len() == width {
                        r.scores.clone()
                    } else {
                        vec![0.0; width]
                    }
                })
                .collect()
        });
        let labels = request
            .want_labels
            .then(|| results.iter().map(|r| labels_json(&model, r)).collect());
        Ok(Inferred {
            model_name: model.manifest.model_name.clone(),
            model_version: model.version().into(),
            id: request.id,
            num_labels: width,
            scores,
            labels,
        })
    }

    /// Server readiness, model readiness and metadata, shared with REST.
    pub(crate) fn ready(&self) -> bool {
        self.core.ready()
    }

    /// An explanation by the model `name` (and `version`, when given): the HTTP port's explain
    /// route, beside the protocol's own ones.
    pub(crate) async fn explain(
        &self,
        name: &str,
        version: &str,
        asked: &ExplainAsked,
    ) -> Result<(Explained, Arc<ServingModel>), ClassifyError> {
        let model = self.core.current()?;
        check_model(&model, name, version)?;
        self.core.explain(model, asked).await
    }

    pub(crate) fn model_ready(&self, name: &str, version: &str) -> bool {
        self.core.ready()
            && self
                .core
                .served()
                .is_some_and(|m| check_model(&m, name, version).is_ok())
    }

    pub(crate) fn model_metadata(
        &self,
        name: &str,
        version: &str,
    ) -> Result<ModelMetadataResponse, ClassifyError> {
        let model = self.core.current()?;
        check_model(&model, name, version)?;
        Ok(ModelMetadataResponse {
            name: model.manifest.model_name.clone(),
            versions: vec![model.version().into()],
            platform: PLATFORM.into(),
            inputs: vec![tensor_metadata(INPUT, "BYTES", vec![-1])],
            outputs: vec![
                tensor_metadata(SCORES, "FP32", vec![-1, model.num_labels() as i64]),
                tensor_metadata(LABELS, "BYTES", vec![-1]),
            ],
        })
    }

    pub(crate) fn server_metadata() -> ServerMetadataResponse {
        ServerMetadataResponse {
            name: SERVER_NAME.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            // Over HTTP; gRPC carries tensors as raw bytes natively.
            extensions: vec!["binary_tensor_data".into()],
        }
    }

    /// Records a call in the shared request metrics.
    pub(crate) fn record<T>(
        &self,
        method: &str,
        result: &Result<T, ClassifyError>,
        started: Instant,
    ) {
        self.core.record(method, result, started);
    }

    async fn infer(&self, req: ModelInferRequest) -> Result<ModelInferResponse, ClassifyError> {
        let (want_scores, want_labels) =
            wanted_outputs(req.outputs.iter().map(|o| o.name.as_str()))?;
        let inference = Inference {
            texts: input_texts(&req)?,
            options: classify_options(&req.parameters)?,
            model_name: req.model_name,
            model_version: req.model_version,
            id: req.id,
            want_scores,
            want_labels,
        };
        let out = self.run(inference, "ModelInfer").await?;
        let n = out.len() as i64;
        // Tensor data goes in `raw_output_contents` (one entry per output, in order), as Triton
        // answers and as its client reads; `contents` stays empty.
        let mut outputs = Vec::new();
        let mut raw: Vec<Vec<u8>> = Vec::new();
        if let Some(scores) = &out.scores {
            outputs.push(output_tensor(
                SCORES,
                "FP32",
                vec![n, out.num_labels as i64],
            ));
            raw.push(scores.iter().flat_map(|v| v.to_le_bytes()).collect());
        }
        if let Some(labels) = out.labels {
            outputs.push(output_tensor(LABELS, "BYTES", vec![n]));
            raw.push(join_raw_bytes(labels.into_iter()));
        }
        Ok(ModelInferResponse {
            model_name: out.model_name,
            model_version: out.model_version,
            id: out.id,
            parameters: HashMap::new(),
            outputs,
            raw_output_contents: raw,
        })
    }
}

#[tonic::async_trait]
impl GrpcInferenceService for InferenceService {
    async fn server_live(
        &self,
        _request: Request<ServerLiveRequest>,
    ) -> Result<Response<ServerLiveResponse>, Status> {
        Ok(Response::new(ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _request: Request<ServerReadyRequest>,
    ) -> Result<Response<ServerReadyResponse>, Status> {
        Ok(Response::new(ServerReadyResponse {
            ready: self.ready(),
        }))
    }

    async fn model_ready(
        &self,
        request: Request<ModelReadyRequest>,
    ) -> Result<Response<ModelReadyResponse>, Status> {
        self.authorize(&request)?;
        let req = request.into_inner();
        Ok(Response::new(ModelReadyResponse {
            ready: self.model_ready(&req.name, &req.version),
        }))
    }

    async fn server_metadata(
        &self,
        request: Request<ServerMetadataRequest>,
    ) -> Result<Response<ServerMetadataResponse>, Status> {
        self.authorize(&request)?;
        Ok(Response::new(Self::server_metadata()))
    }

    async fn model_metadata(
        &self,
        request: Request<ModelMetadataRequest>,
    ) -> Result<Response<ModelMetadataResponse>, Status> {
        self.authorize(&request)?;
        let req = request.into_inner();
        self.model_metadata(&req.name, &req.version)
            .map(Response::new)
            .map_err(Status::from)
    }

    async fn model_infer(
        &self,
        request: Request<ModelInferRequest>,
    ) -> Result<Response<ModelInferResponse>, Status> {
        self.authorize(&request)?;
        let started = Instant::now();
        let result = self.infer(request.into_inner()).await;
        self.record("ModelInfer", &result, started);
        result.map(Response::new).map_err(Status::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::inference::InferTensorContents;

    fn raw(texts: &[&str]) -> Vec<u8> {
        texts
            .iter()
            .flat_map(|t| {
                let mut v = (t.len() as u32).to_le_bytes().to_vec();
                v.extend_from_slice(t.as_bytes());
                v
            })
            .collect()
    }

    fn request(shape: Vec<i64>, raw_contents: Vec<Vec<u8>>) -> ModelInferRequest {
        ModelInferRequest {
            inputs: vec![InferInputTensor {
                name: INPUT.into(),
                datatype: "BYTES".into(),
                shape,
                parameters: HashMap::new(),
                contents: None,
            }],
            raw_input_contents: raw_contents,
            ..Default::default()
        }
    }

    #[test]
    fn raw_bytes_round_trip() {
        let joined = join_raw_bytes(["a", "", "héllo"].iter().map(|t| t.as_bytes().to_vec()));
        assert_eq!(joined, raw(&["a", "", "héllo"]));
        let split = split_raw_bytes(&joined).unwrap();
        assert_eq!(split, vec![&b"a"[..], &b""[..], "héllo".as_bytes()]);
    }

    #[test]
    fn raw_bytes_texts_are_split_by_their_length_prefixes() {
        let req = request(vec![2, 1], vec![raw(&["héllo", ""])]);
        assert_eq!(input_texts(&req).unwrap(), vec!["héllo", ""]);
    }

    #[test]
    fn malformed_inputs_are_refused_with_the_reason() {
        let cases = [
            (request(vec![3], vec![raw(&["a", "b"])]), "holds 2 texts"),
            (
                request(vec![2, 2], vec![raw(&["a", "b"])]),
                "expected [n] or [n, 1]",
            ),
            (
                request(vec![1], vec![vec![9, 0, 0, 0, b'x']]),
                "says 9 bytes",
            ),
            (
                request(vec![1], vec![vec![1, 0]]),
                "truncated length prefix",
            ),
            (
                request(
                    vec![1],
                    vec![raw(&["\u{0}"]).into_iter().chain([0xff]).collect()],
                ),
                "truncated",
            ),
        ];
        for (req, want) in cases {
            let err = input_texts(&req).unwrap_err().to_string();
            assert!(err.contains(want), "{err} (wanted {want})");
        }
        let mut not_utf8 = request(vec![1], vec![]);
        not_utf8.inputs[0].contents = Some(InferTensorContents {
            bytes_contents: vec![vec![0xff, 0xfe]],
            ..Default::default()
        });
        assert!(input_texts(&not_utf8)
            .unwrap_err()
            .to_string()
            .contains("UTF-8"));
        let mut fp32 = request(vec![1], vec![]);
        fp32.inputs[0].datatype = "FP32".into();
        assert!(input_texts(&fp32)
            .unwrap_err()
            .to_string()
            .contains("BYTES"));
    }

    #[test]
    fn parameters_map_to_options_and_unknown_ones_are_refused() {
        let p = |k: &str, c: ParameterChoice| {
            HashMap::from([(
                k.to_string(),
                InferParameter {
                    parameter_choice: Some(c),
                },
            )])
        };
        let o = classify_options(&p("top_k", ParameterChoice::Int64Param(5))).unwrap();
        assert_eq!(o.top_k, 5);
        let o = classify_options(&p("threshold", ParameterChoice::DoubleParam(0.3))).unwrap();
        assert_eq!(o.threshold, Some(0.3));
        assert!(classify_options(&p("top_k", ParameterChoice::Int64Param(-1))).is_err());
        assert!(
            classify_options(&p("threshold", ParameterChoice::StringParam("x".into()))).is_err()
        );
        assert!(
            classify_options(&p("temperature", ParameterChoice::DoubleParam(1.0)))
                .unwrap_err()
                .to_string()
                .contains("temperature")
        );
    }
}
