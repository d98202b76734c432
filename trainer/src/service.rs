//! The gRPC `goemotions.v1.Trainer` service: one training job at a time per process (a second
//! `StartTraining` gets FAILED_PRECONDITION), job events streamed to any number of watchers, the
//! registry's versions and aliases. Jobs are recorded under `<registry>/jobs/<id>/` together with
//! their resumable state, so a trainer restarted after a crash resumes its unfinished job.
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use common::registry::{Registry, RegistryError};
use common::store::Store;
use futures::Stream;
use proto::v1::trainer_server::Trainer;
use proto::v1::{
    CancelJobRequest, EpochMetrics, GetJobRequest, Job, JobEvent, JobState, ListJobsRequest,
    ListJobsResponse, ListModelVersionsRequest, ListModelVersionsResponse, ModelVersion,
    Progress as ProgressMsg, SetAliasRequest, SetAliasResponse, StartTrainingResponse,
    TrainingSpec, WatchJobRequest,
};
use serde::{Deserialize, Serialize};
use tch::Device;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use crate::job::{self, JobSpec, StateSink};
use crate::train::{EpochRecord, Observer, Phase, Progress, ResumeState, TrainConfig, TrainError};

/// Settings of the service process; a job's spec overrides the per-job ones.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    pub registry: String,
    pub base_model: String,
    pub data_dir: PathBuf,
    pub device: Device,
    pub defaults: TrainConfig,
    pub state_every_steps: u64,
    pub report_root: Option<PathBuf>,
}

/// What is persisted about a job (`<registry>/jobs/<id>/job.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct JobRecord {
    id: String,
    state: i32,
    base_model: String,
    data_dir: PathBuf,
    model_name: String,
    alias: Option<String>,
    train: TrainConfig,
    train_limit: Option<usize>,
    dev_limit: Option<usize>,
    run_baseline: bool,
    version: String,
    error: String,
    created_at: String,
    epochs: Vec<EpochRecord>,
    #[serde(default)]
    spec_json: String,
}

struct JobEntry {
    record: JobRecord,
    spec: TrainingSpec,
    progress: Option<ProgressMsg>,
    events: watch::Sender<Job>,
    cancel: Arc<AtomicBool>,
}

impl JobEntry {
    fn snapshot(&self, device: &str) -> Job {
        Job {
            id: self.record.id.clone(),
            state: self.record.state,
            spec: Some(self.spec.clone()),
            progress: self.progress,
            epochs: self
                .record
                .epochs
                .iter()
                .map(|e| EpochMetrics {
                    epoch: e.epoch,
                    train_loss: e.train_loss as f32,
                    dev_macro_f1: e.dev_macro_f1 as f32,
                    dev_micro_f1: e.dev_micro_f1 as f32,
                })
                .collect(),
            model_version: if self.record.state == JobState::Succeeded as i32 {
                self.record.version.clone()
            } else {
                String::new()
            },
            error: self.record.error.clone(),
            created_at: self.record.created_at.clone(),
            device: device.to_string(),
        }
    }
}

struct Inner {
    config: ServiceConfig,
    registry: Registry,
    jobs_root: Store,
    jobs: Mutex<BTreeMap<String, JobEntry>>,
    running: Mutex<Option<String>>,
    device_name: String,
}

#[derive(Clone)]
pub struct TrainerService {
    inner: Arc<Inner>,
}

/// The registry name used when a request names none.
const DEFAULT_MODEL_NAME: &str = "goemotions";

fn model_name_or_default(name: &str) -> String {
    if name.is_empty() {
        DEFAULT_MODEL_NAME
    } else {
        name
    }
    .to_string()
}

fn terminal(state: i32) -> bool {
    state == JobState::Succeeded as i32
        || state == JobState::Failed as i32
        || state == JobState::Cancelled as i32
}

fn registry_status(e: RegistryError) -> Status {
    match e {
        RegistryError::UnknownVersion { .. } | RegistryError::UnknownAlias { .. } => {
            Status::not_found(e.to_string())
        }
        RegistryError::AliasMoved { .. } => Status::failed_precondition(e.to_string()),
        RegistryError::InvalidName(_) => Status::invalid_argument(e.to_string()),
        other => Status::unavailable(other.to_string()),
    }
}

impl TrainerService {
    pub fn new(config: ServiceConfig) -> Result<Self, RegistryError> {
        let registry = Registry::open(&config.registry)?;
        let jobs_root = registry.root().child("jobs");
        let device_name = common::device::describe(config.device);
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                registry,
                jobs_root,
                jobs: Mutex::new(BTreeMap::new()),
                running: Mutex::new(None),
                device_name,
            }),
        })
    }

    /// Loads recorded jobs; an unfinished one (the trainer crashed) is resumed from its last state.
    pub async fn recover(&self) -> Result<Option<String>, Status> {
        let ids = self
            .inner
            .jobs_root
            .list_children("")
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let mut resume = None;
        for id in ids {
            let Some((bytes, _)) = self
                .inner
                .jobs_root
                .child(&id)
                .get_opt("job.json")
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?
            else {
                continue;
            };
            let Ok(record) = serde_json::from_slice::<JobRecord>(&bytes) else {
                tracing::warn!(job = %id, "unreadable job record skipped");
                continue;
            };
            let spec: TrainingSpec = spec_from_json(&record.spec_json);
            if !terminal(record.state) {
                resume = Some(record.id.clone());
            }
            self.insert(record, spec);
        }
        if let Some(id) = &resume {
            tracing::info!(job = %id, "resuming unfinished job after restart");
            self.launch(id.clone());
        }
        Ok(resume)
    }

    fn insert(&self, record: JobRecord, spec: TrainingSpec) {
        let id = record.id.clone();
        let entry = JobEntry {
            record,
            spec,
            progress: None,
            events: watch::channel(Job::default()).0,
            cancel: Arc::new(AtomicBool::new(false)),
        };
        let snapshot = entry.snapshot(&self.inner.device_name);
        entry.events.send_replace(snapshot);
        self.inner.jobs.lock().expect("jobs lock").insert(id, entry);
    }

    /// Applies `f` to a job, publishes the new snapshot to watchers and persists the record.
    fn update(&self, id: &str, f: impl FnOnce(&mut JobEntry)) {
        let record = {
            let mut jobs = self.inner.jobs.lock().expect("jobs lock");
            let Some(entry) = jobs.get_mut(id) else {
                return;
            };
            f(entry);
            entry
                .events
                .send_replace(entry.snapshot(&self.inner.device_name));
            entry.record.clone()
        };
        let store = self.inner.jobs_root.child(id);
        tokio::spawn(async move {
            if let Ok(bytes) = serde_json::to_vec_pretty(&record) {
                if let Err(e) = store.put("job.json", Bytes::from(bytes)).await {
                    tracing::warn!(error = %e, "could not persist job record");
                }
            }
        });
    }

    fn set_progress(&self, id: &str, p: ProgressMsg) {
        let mut jobs = self.inner.jobs.lock().expect("jobs lock");
        if let Some(entry) = jobs.get_mut(id) {
            entry.progress = Some(p);
            entry
                .events
                .send_replace(entry.snapshot(&self.inner.device_name));
        }
    }

    /// Runs a recorded job on a blocking thread.
    fn launch(&self, id: String) {
        *self.inner.running.lock().expect("running lock") = Some(id.clone());
        let service = self.clone();
        let handle = tokio::runtime::Handle::current();
        tokio::spawn(async move {
            let (record, cancel) = {
                let jobs = service.inner.jobs.lock().expect("jobs lock");
                let e = &jobs[&id];
                (e.record.clone(), e.cancel.clone())
            };
            let cfg = &service.inner.config;
            let sink = StateSink {
                store: service.inner.jobs_root.child(&id),
            };
            let version_store = service
                .inner
                .registry
                .version_store(&record.model_name, &record.version);
            if version_store
                .exists(common::checkpoint::MANIFEST)
                .await
                .unwrap_or(false)
            {
                // Published just before a crash: nothing left to do.
                service.update(&id, |e| e.record.state = JobState::Succeeded as i32);
                *service.inner.running.lock().expect("running lock") = None;
                return;
            }
            let resume = match sink.load().await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "resume state unreadable; starting the job over");
                    None
                }
            };
            service.update(&id, |e| e.record.state = JobState::Running as i32);
            let spec = JobSpec {
                base_model: record.base_model.clone(),
                data_dir: record.data_dir.clone(),
                registry: cfg.registry.clone(),
                model_name: record.model_name.clone(),
                alias: record.alias.clone(),
                train: record.train.clone(),
                train_limit: record.train_limit,
                dev_limit: record.dev_limit,
                test_limit: record.dev_limit,
                run_baseline: record.run_baseline,
                report_dir: cfg.report_root.as_ref().map(|r| r.join(&id)),
                device: cfg.device,
                version: Some(record.version.clone()),
            };
            let worker = service.clone();
            let job_id = id.clone();
            let result = tokio::task::spawn_blocking(move || {
                let mut observer = JobObserver {
                    service: worker,
                    id: job_id,
                    cancel,
                    sink,
                    handle: handle.clone(),
                };
                job::run(&spec, &handle, &mut observer, resume)
            })
            .await;
            let outcome: Result<String, (i32, String)> = match result {
                Ok(Ok(out)) => Ok(out.manifest.version),
                Ok(Err(job::JobError::Train(TrainError::Cancelled))) => {
                    Err((JobState::Cancelled as i32, "cancelled by request".into()))
                }
                Ok(Err(e)) => Err((JobState::Failed as i32, e.to_string())),
                Err(e) => Err((JobState::Failed as i32, format!("job task panicked: {e}"))),
            };
            match &outcome {
                Ok(version) => tracing::info!(job = %id, version = %version, "job succeeded"),
                Err((_, error)) => {
                    tracing::warn!(job = %id, error = %error, "job ended without publishing")
                }
            }
            service.update(&id, |e| match outcome {
                Ok(_) => e.record.state = JobState::Succeeded as i32,
                Err((state, error)) => {
                    e.record.state = state;
                    e.record.error = error;
                }
            });
            *service.inner.running.lock().expect("running lock") = None;
        });
    }

    fn job(&self, id: &str) -> Result<Job, Status> {
        let jobs = self.inner.jobs.lock().expect("jobs lock");
        jobs.get(id)
            .map(|e| e.snapshot(&self.inner.device_name))
            .ok_or_else(|| Status::not_found(format!("no job {id:?}")))
    }
}

fn spec_from_json(json: &str) -> TrainingSpec {
    // The spec is stored as its prost encoding in hex to survive restarts without serde on prost types.
    hex::decode(json)
        .ok()
        .and_then(|b| prost::Message::decode(b.as_slice()).ok())
        .unwrap_or_default()
}

fn spec_to_json(spec: &TrainingSpec) -> String {
    hex::encode(prost::Message::encode_to_vec(spec))
}

/// Bridges the training loop to job state, cancellation and resumable state in object storage.
struct JobObserver {
    service: TrainerService,
    id: String,
    cancel: Arc<AtomicBool>,
    sink: StateSink,
    handle: tokio::runtime::Handle,
}

impl Observer for JobObserver {
    fn progress(&mut self, p: &Progress) {
        self.service.set_progress(
            &self.id,
            ProgressMsg {
                epoch: p.epoch,
                epochs: p.epochs,
                step: p.step,
                total_steps: p.total_steps,
                loss: p.loss as f32,
                learning_rate: p.learning_rate as f32,
                samples_per_second: p.samples_per_second as f32,
                eta_seconds: p.eta_seconds as f32,
            },
        );
    }

    fn epoch_end(&mut self, r: &EpochRecord) {
        let r = r.clone();
        // `update` persists the record on a spawned task: it needs the runtime's context.
        let _runtime = self.handle.enter();
        self.service.update(&self.id, |e| e.record.epochs.push(r));
    }

    fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::SeqCst)
    }

    fn wants_state(&self) -> bool {
        true
    }

    fn save_state(&mut self, state: &ResumeState) -> Result<(), String> {
        self.handle.block_on(self.sink.save(state))
    }

    fn phase(&mut self, phase: Phase) {
        if phase == Phase::Publishing {
            let _runtime = self.handle.enter();
            self.service
                .update(&self.id, |e| e.record.state = JobState::Publishing as i32);
        }
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<JobEvent, Status>> + Send>>;

#[tonic::async_trait]
impl Trainer for TrainerService {
    async fn start_training(
        &self,
        request: Request<TrainingSpec>,
    ) -> Result<Response<StartTrainingResponse>, Status> {
        let spec = request.into_inner();
        let cfg = &self.inner.config;
        let h = spec.hyperparameters.clone().unwrap_or_default();
        let d = &cfg.defaults;
        let pooling = h.pooling.clone().unwrap_or_else(|| d.pooling.clone());
        if pooling.parse::<common::model::Pooling>().is_err() {
            return Err(Status::invalid_argument(format!(
                "pooling must be mean or cls, got {pooling:?}"
            )));
        }
        let train = TrainConfig {
            epochs: h.epochs.unwrap_or(d.epochs),
            batch_size: h.batch_size.map(|v| v as usize).unwrap_or(d.batch_size),
            learning_rate: h.learning_rate.map(f64::from).unwrap_or(d.learning_rate),
            max_length: h.max_length.map(|v| v as usize).unwrap_or(d.max_length),
            warmup_ratio: h.warmup_ratio.map(f64::from).unwrap_or(d.warmup_ratio),
            weight_decay: h.weight_decay.map(f64::from).unwrap_or(d.weight_decay),
            seed: h.seed.unwrap_or(d.seed),
            pooling,
            dropout: h.dropout.map(f64::from).or(d.dropout),
            patience: h.patience.unwrap_or(d.patience),
            max_steps: h.max_steps.map(u64::from).or(d.max_steps),
            state_every_steps: cfg.state_every_steps,
            ..d.clone()
        };
        if train.epochs == 0
            || train.batch_size == 0
            || train.learning_rate.is_nan()
            || train.learning_rate <= 0.0
        {
            return Err(Status::invalid_argument(
                "epochs, batch_size and learning_rate must be positive",
            ));
        }
        let model_name = model_name_or_default(&spec.model_name);
        let alias = match spec.alias.as_str() {
            "" => Some("latest".to_string()),
            "-" => None,
            a => Some(a.to_string()),
        };
        {
            let mut running = self.inner.running.lock().expect("running lock");
            if let Some(id) = running.as_ref() {
                return Err(Status::failed_precondition(format!(
                    "job {id} is running; this trainer runs one job at a time"
                )));
            }
            // Reserve the slot before releasing the lock.
            *running = Some(String::new());
        }
        let id = format!(
            "{}-{}",
            chrono::Utc::now().format("%Y%m%dT%H%M%SZ"),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let record = JobRecord {
            id: id.clone(),
            state: JobState::Queued as i32,
            base_model: if spec.base_model.is_empty() {
                cfg.base_model.clone()
            } else {
                spec.base_model.clone()
            },
            data_dir: if spec.data_dir.is_empty() {
                cfg.data_dir.clone()
            } else {
                PathBuf::from(&spec.data_dir)
            },
            model_name,
            alias,
            train,
            train_limit: h.train_limit.map(|v| v as usize),
            dev_limit: h.dev_limit.map(|v| v as usize),
            run_baseline: spec.run_baseline,
            version: id.clone(),
            error: String::new(),
            created_at: chrono::Utc::now().to_rfc3339(),
            epochs: vec![],
            spec_json: spec_to_json(&spec),
        };
        let bytes =
            serde_json::to_vec_pretty(&record).map_err(|e| Status::internal(e.to_string()))?;
        if let Err(e) = self
            .inner
            .jobs_root
            .child(&id)
            .put("job.json", Bytes::from(bytes))
            .await
        {
            *self.inner.running.lock().expect("running lock") = None;
            return Err(Status::unavailable(format!("cannot record the job: {e}")));
        }
        self.insert(record, spec);
        tracing::info!(job = %id, "training job started");
        self.launch(id.clone());
        Ok(Response::new(StartTrainingResponse { job_id: id }))
    }

    type WatchJobStream = EventStream;

    async fn watch_job(
        &self,
        request: Request<WatchJobRequest>,
    ) -> Result<Response<Self::WatchJobStream>, Status> {
        let id = request.into_inner().job_id;
        let rx = {
            let jobs = self.inner.jobs.lock().expect("jobs lock");
            jobs.get(&id)
                .map(|e| e.events.subscribe())
                .ok_or_else(|| Status::not_found(format!("no job {id:?}")))?
        };
        let stream = event_stream(rx);
        Ok(Response::new(stream))
    }

    async fn get_job(&self, request: Request<GetJobRequest>) -> Result<Response<Job>, Status> {
        self.job(&request.into_inner().job_id).map(Response::new)
    }

    async fn list_jobs(
        &self,
        _request: Request<ListJobsRequest>,
    ) -> Result<Response<ListJobsResponse>, Status> {
        let jobs = self.inner.jobs.lock().expect("jobs lock");
        let jobs = jobs
            .values()
            .map(|e| e.snapshot(&self.inner.device_name))
            .collect();
        Ok(Response::new(ListJobsResponse { jobs }))
    }

    async fn cancel_job(
        &self,
        request: Request<CancelJobRequest>,
    ) -> Result<Response<Job>, Status> {
        let id = request.into_inner().job_id;
        {
            let jobs = self.inner.jobs.lock().expect("jobs lock");
            let entry = jobs
                .get(&id)
                .ok_or_else(|| Status::not_found(format!("no job {id:?}")))?;
            if terminal(entry.record.state) {
                return Err(Status::failed_precondition(format!(
                    "job {id} has already ended"
                )));
            }
            if entry.record.state == JobState::Publishing as i32 {
                return Err(Status::failed_precondition(format!(
                    "job {id} is already publishing"
                )));
            }
            entry.cancel.store(true, Ordering::SeqCst);
        }
        self.job(&id).map(Response::new)
    }

    async fn list_model_versions(
        &self,
        request: Request<ListModelVersionsRequest>,
    ) -> Result<Response<ListModelVersionsResponse>, Status> {
        let name = request.into_inner().model_name;
        let name = model_name_or_default(&name);
        let manifests = self
            .inner
            .registry
            .list_versions(&name)
            .await
            .map_err(registry_status)?;
        let aliases = self
            .inner
            .registry
            .list_aliases(&name)
            .await
            .map_err(registry_status)?;
        let versions = manifests
            .into_iter()
            .map(|m| ModelVersion {
                aliases: aliases
                    .iter()
                    .filter(|(_, v)| *v == m.version)
                    .map(|(a, _)| a.clone())
                    .collect(),
                version: m.version,
                created_at: m.created_at,
                metrics: m.metrics.into_iter().collect(),
            })
            .collect();
        Ok(Response::new(ListModelVersionsResponse { versions }))
    }

    async fn set_alias(
        &self,
        request: Request<SetAliasRequest>,
    ) -> Result<Response<SetAliasResponse>, Status> {
        let r = request.into_inner();
        let name = model_name_or_default(&r.model_name);
        let expected = r
            .expected_version
            .map(|v| if v.is_empty() { None } else { Some(v) });
        let previous = self
            .inner
            .registry
            .set_alias(&name, &r.alias, &r.version, expected)
            .await
            .map_err(registry_status)?;
        tracing::info!(model = %name, alias = %r.alias, version = %r.version, previous = ?previous, "alias set");
        Ok(Response::new(SetAliasResponse {
            previous_version: previous.unwrap_or_default(),
        }))
    }
}

/// Streams a job's snapshots: the current one first, then each change, ending after a terminal state.
fn event_stream(mut rx: watch::Receiver<Job>) -> EventStream {
    let first = rx.borrow_and_update().clone();
    let stream = futures::stream::unfold(
        (rx, Some(first), false),
        |(mut rx, first, done)| async move {
            if done {
                return None;
            }
            let job = match first {
                Some(job) => job,
                None => {
                    rx.changed().await.ok()?;
                    rx.borrow_and_update().clone()
                }
            };
            let end = terminal(job.state);
            Some((Ok(JobEvent { job: Some(job) }), (rx, None, end)))
        },
    );
    Box::pin(stream)
}
