//! The gRPC `goemotions.v1.Trainer` service: one training job at a time per process (a second
//! `StartTraining` gets FAILED_PRECONDITION), job events streamed to any number of watchers, the
//! registry's versions and aliases. Jobs are recorded under `<registry>/jobs/<id>/` together with
//! their resumable state; a restarted trainer resumes the newest unfinished job (finishing its
//! publication if it crashed there) and marks any older unfinished one FAILED.
//!
//! Handlers are thin: they map the request onto the library (`config`, `validate`, `job`) and
//! errors onto status codes in one place (`ServiceError`).
mod error;
mod jobs;

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::data::SplitLimits;
use common::registry::Registry;
use futures::Stream;
use proto::v1::trainer_server::Trainer;
use proto::v1::{
    CancelJobRequest, GetJobRequest, Job, JobEvent, JobState, ListJobsRequest, ListJobsResponse,
    ListModelVersionsRequest, ListModelVersionsResponse, ModelVersion, Progress as ProgressMsg,
    SetAliasRequest, SetAliasResponse, StartTrainingResponse, TrainingSpec, WatchJobRequest,
};
use tch::Device;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

pub use error::ServiceError;
use jobs::{terminal, JobEvents, JobRecord, JobTable, RECORD};

use crate::config::{Overrides, TrainConfig, DEFAULT_MODEL_NAME};
use crate::history::EpochRecord;
use crate::job::{self, JobSpec};
use crate::observe::{Observer, Phase, Progress, ProgressLog};
use crate::resume::{ResumeState, StateError, StateSink};
use crate::validate;

/// Settings of the service process; a job's spec overrides the per-job ones.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    pub registry: String,
    pub base_model: String,
    pub data_dir: PathBuf,
    pub device: Device,
    pub defaults: TrainConfig,
    pub report_root: Option<PathBuf>,
    /// Interval of progress log lines.
    pub progress_interval: Duration,
    /// Resume states kept for FAILED jobs, newest first.
    pub keep_failed_states: usize,
}

struct Inner {
    config: ServiceConfig,
    registry: Registry,
    jobs: JobTable,
    /// The running job's id; `Some("")` while a start is being set up.
    running: Mutex<Option<String>>,
    /// Set on SIGTERM: the running job saves its state at the next step and stops, and watch
    /// streams end with UNAVAILABLE.
    closing: watch::Sender<bool>,
    /// Fires when the running job's task has ended.
    idle: watch::Sender<bool>,
}

#[derive(Clone)]
pub struct TrainerService {
    inner: Arc<Inner>,
}

fn model_name_or_default(name: &str) -> String {
    if name.is_empty() {
        DEFAULT_MODEL_NAME
    } else {
        name
    }
    .to_string()
}

impl TrainerService {
    /// Opens the registry (nothing is created until something is written).
    pub fn new(config: ServiceConfig) -> Result<Self, ServiceError> {
        let registry = Registry::open(&config.registry)?;
        let jobs = JobTable::new(
            registry.root().child("jobs"),
            common::device::describe(config.device),
        );
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                registry,
                jobs,
                running: Mutex::new(None),
                closing: watch::channel(false).0,
                idle: watch::channel(true).0,
            }),
        })
    }

    fn running(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.inner.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Loads recorded jobs. The newest unfinished one (the trainer stopped or crashed) is
    /// resumed; older unfinished ones are marked FAILED. Returns the resumed job's id.
    pub async fn recover(&self) -> Result<Option<String>, ServiceError> {
        let root = self.inner.jobs.root().clone();
        let mut unfinished = Vec::new();
        for id in root.list_children("").await? {
            let Some((bytes, _)) = root.child(&id).get_opt(RECORD).await? else {
                continue;
            };
            let Ok(record) = serde_json::from_slice::<JobRecord>(&bytes) else {
                tracing::warn!(job = %id, "unreadable job record skipped");
                continue;
            };
            if !terminal(record.state) {
                unfinished.push((record.created_at.clone(), record.id.clone()));
            }
            self.inner.jobs.insert(record);
        }
        unfinished.sort();
        let resume = unfinished.pop().map(|(_, id)| id);
        for (_, id) in &unfinished {
            tracing::warn!(job = %id, "unfinished job not resumed (a newer one is)");
            self.inner.jobs.update(id, |e| {
                e.record.state = JobState::Failed as i32;
                e.record.error = format!(
                    "interrupted by a trainer restart; job {} resumed instead (one job at a time)",
                    resume.as_deref().unwrap_or_default()
                );
            });
        }
        // Resume state nobody can use: ended jobs' (left by trainers that kept it forever) and
        // FAILED ones beyond the newest kept.
        let ended: Vec<String> = self
            .inner
            .jobs
            .records()
            .into_iter()
            .filter(|r| {
                r.state == JobState::Succeeded as i32 || r.state == JobState::Cancelled as i32
            })
            .map(|r| r.id)
            .collect();
        for id in ended {
            self.remove_state(&id).await;
        }
        self.prune_failed_states().await;
        if let Some(id) = &resume {
            tracing::info!(job = %id, "resuming unfinished job after restart");
            *self.running() = Some(id.clone());
            self.launch(id.clone());
        }
        Ok(resume)
    }

    fn spec_of(&self, record: &JobRecord) -> JobSpec {
        let cfg = &self.inner.config;
        JobSpec {
            base_model: record.base_model.clone(),
            data_dir: record.data_dir.clone(),
            registry: cfg.registry.clone(),
            model_name: record.model_name.clone(),
            alias: record.alias.clone(),
            train: record.train.clone(),
            limits: record.limits,
            run_baseline: record.run_baseline,
            report_dir: cfg.report_root.as_ref().map(|r| r.join(&record.id)),
            device: cfg.device,
            version: Some(record.version.clone()),
        }
    }

    /// Records how a job ended and removes resume state nobody can use any more: the job's own
    /// when it SUCCEEDED or was CANCELLED, and that of FAILED jobs beyond the newest
    /// `keep_failed_states`.
    ///
    /// The state is removed before the end is published, and the job's slot is freed just
    /// before: a client that saw the job end can start the next one at once.
    async fn finish(&self, id: &str, state: JobState, error: String) {
        if matches!(state, JobState::Succeeded | JobState::Cancelled) {
            self.remove_state(id).await;
        }
        self.release_slot(id);
        self.inner.jobs.update(id, |e| {
            e.record.state = state as i32;
            e.record.error = error;
        });
        self.prune_failed_states().await;
    }

    /// Frees the running slot if `id` holds it (never another job's).
    fn release_slot(&self, id: &str) {
        let mut running = self.running();
        if running.as_deref() == Some(id) {
            *running = None;
        }
    }

    async fn remove_state(&self, id: &str) {
        let sink = StateSink::new(self.inner.jobs.root().child(id));
        match sink.remove().await {
            Ok(0) => {}
            Ok(bytes) => tracing::info!(job = %id, bytes, "resume state removed"),
            Err(e) => tracing::warn!(job = %id, error = %e, "could not remove the resume state"),
        }
    }

    /// Removes the resume state of FAILED jobs beyond the newest `keep_failed_states`.
    async fn prune_failed_states(&self) {
        let mut failed: Vec<(String, String)> = self
            .inner
            .jobs
            .records()
            .into_iter()
            .filter(|r| r.state == JobState::Failed as i32)
            .map(|r| (r.created_at, r.id))
            .collect();
        failed.sort_by(|a, b| b.cmp(a));
        for (_, id) in failed
            .into_iter()
            .skip(self.inner.config.keep_failed_states)
        {
            self.remove_state(&id).await;
        }
    }

    /// Runs a recorded job (the slot in `running` is already taken for it).
    fn launch(&self, id: String) {
        let service = self.clone();
        let handle = tokio::runtime::Handle::current();
        self.inner.idle.send_replace(false);
        tokio::spawn(async move {
            service.run_job(&id, handle).await;
            service.release_slot(&id);
            // Idle only if no next job took the slot meanwhile (it set idle false itself).
            let running = service.running();
            if running.is_none() {
                service.inner.idle.send_replace(true);
            }
        });
    }

    async fn run_job(&self, id: &str, handle: tokio::runtime::Handle) {
        let Some(record) = self.inner.jobs.record(id) else {
            return;
        };
        let registry = &self.inner.registry;
        let version_store = registry.version_store(&record.model_name, &record.version);
        match version_store.exists(common::checkpoint::MANIFEST).await {
            Ok(true) => return self.finish_published(&record).await,
            Ok(false) => {}
            Err(e) => {
                return self
                    .finish(id, JobState::Failed, format!("reading the registry: {e}"))
                    .await
            }
        }
        if record.cancel_requested {
            return self
                .finish(id, JobState::Cancelled, "cancelled by request".into())
                .await;
        }
        let sink = StateSink::new(self.inner.jobs.root().child(id));
        let resume = match sink.load().await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(job = %id, error = %e, "resume state unreadable; starting the job over");
                None
            }
        };
        self.inner
            .jobs
            .update(id, |e| e.record.state = JobState::Running as i32);
        let spec = self.spec_of(&record);
        let mut observer = JobObserver {
            service: self.clone(),
            id: id.to_string(),
            cancel: self.inner.jobs.cancel_flag(id).unwrap_or_default(),
            sink,
            handle: handle.clone(),
            log: ProgressLog::new(self.inner.config.progress_interval),
            last_progress: None,
        };
        let result =
            tokio::task::spawn_blocking(move || job::run(&spec, &handle, &mut observer, resume))
                .await;
        match result {
            Ok(Ok(out)) => {
                tracing::info!(job = %id, version = %out.manifest.version, "job succeeded");
                self.finish(id, JobState::Succeeded, String::new()).await;
            }
            Ok(Err(e)) if e.is_cancelled() => {
                tracing::info!(job = %id, "job cancelled; nothing published");
                self.finish(id, JobState::Cancelled, "cancelled by request".into())
                    .await;
            }
            Ok(Err(e)) if e.is_interrupted() => {
                tracing::info!(job = %id, "{e}");
            }
            Ok(Err(e)) => {
                tracing::warn!(job = %id, error = %e, "job failed; nothing published");
                self.finish(id, JobState::Failed, e.to_string()).await;
            }
            Err(e) => {
                self.finish(id, JobState::Failed, format!("job task panicked: {e}"))
                    .await
            }
        }
    }

    /// The version's manifest exists (the trainer stopped while publishing): finish the phase.
    async fn finish_published(&self, record: &JobRecord) {
        let registry = &self.inner.registry;
        if record.cancel_requested && !record.committed {
            if let Err(e) = registry
                .delete_version(&record.model_name, &record.version)
                .await
            {
                tracing::error!(job = %record.id, error = %e, "could not remove the cancelled job's version");
            }
            return self
                .finish(
                    &record.id,
                    JobState::Cancelled,
                    "cancelled by request".into(),
                )
                .await;
        }
        self.inner.jobs.update(&record.id, |e| {
            e.record.state = JobState::Publishing as i32;
            e.record.committed = true;
        });
        if let Some((step, total_steps)) = record.trained_steps {
            self.inner.jobs.set_progress(
                &record.id,
                ProgressMsg {
                    epoch: record.epochs.len() as u32,
                    epochs: record.train.epochs,
                    step,
                    total_steps,
                    ..Default::default()
                },
            );
        }
        match job::finish_publishing(
            registry,
            &record.model_name,
            record.alias.as_deref(),
            &record.version,
        )
        .await
        {
            Ok(()) => {
                self.finish(&record.id, JobState::Succeeded, String::new())
                    .await
            }
            Err(e) => {
                self.finish(&record.id, JobState::Failed, e.to_string())
                    .await
            }
        }
    }

    /// SIGTERM: refuse new jobs, let the running one save its state at the next step boundary
    /// and stop (or finish evaluating/publishing), then flush job records. Returns whether the
    /// job stopped within `grace`.
    pub async fn shutdown(&self, grace: Duration) -> bool {
        self.inner.closing.send_replace(true);
        let mut idle = self.inner.idle.subscribe();
        let stopped = tokio::time::timeout(grace, idle.wait_for(|idle| *idle))
            .await
            .is_ok();
        self.inner.jobs.flush().await;
        stopped
    }

    async fn start(&self, spec: TrainingSpec) -> Result<String, ServiceError> {
        if *self.inner.closing.borrow() {
            return Err(ServiceError::ShuttingDown);
        }
        if let Some(id) = self.running().as_ref() {
            return Err(ServiceError::Busy(id.clone()));
        }
        let cfg = &self.inner.config;
        let hyper = spec.hyperparameters.clone().unwrap_or_default();
        let train = Overrides::try_from(&hyper)?.apply(&cfg.defaults);
        let id = format!(
            "{}-{}",
            chrono::Utc::now().format("%Y%m%dT%H%M%SZ"),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let mut record = JobRecord {
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
            model_name: model_name_or_default(&spec.model_name),
            alias: job::alias_from_request(&spec.alias),
            train,
            limits: SplitLimits {
                train: hyper.train_limit.map(|v| v as usize),
                dev: hyper.dev_limit.map(|v| v as usize),
                test: hyper.test_limit.map(|v| v as usize),
            },
            run_baseline: spec.run_baseline,
            version: id.clone(),
            error: String::new(),
            created_at: chrono::Utc::now().to_rfc3339(),
            epochs: vec![],
            spec_wire: JobRecord::encode_spec(&spec),
            cancel_requested: false,
            committed: false,
            trained_steps: None,
        };
        validate::pin_checkpoints(&mut record.train).await?;
        validate::check_job(&self.spec_of(&record)).await?;
        {
            let mut running = self.running();
            if let Some(other) = running.as_ref() {
                return Err(ServiceError::Busy(other.clone()));
            }
            *running = Some(id.clone());
        }
        if let Err(e) = self.inner.jobs.create(record).await {
            *self.running() = None;
            return Err(e.into());
        }
        tracing::info!(job = %id, "training job started");
        self.launch(id.clone());
        Ok(id)
    }

    async fn versions(&self, name: &str) -> Result<Vec<ModelVersion>, ServiceError> {
        let registry = &self.inner.registry;
        let manifests = registry.list_versions(name).await?;
        let aliases = registry.list_aliases(name).await?;
        Ok(manifests
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
            .collect())
    }
}

/// Bridges the training loop to job state, cancellation, shutdown and resumable state.
struct JobObserver {
    service: TrainerService,
    id: String,
    cancel: Arc<AtomicBool>,
    sink: StateSink,
    handle: tokio::runtime::Handle,
    log: ProgressLog,
    last_progress: Option<(u64, u64)>,
}

impl Observer for JobObserver {
    fn progress(&mut self, p: &Progress) {
        self.log.maybe_log(p);
        self.last_progress = Some((p.step, p.total_steps));
        self.service.inner.jobs.set_progress(
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
        self.service
            .inner
            .jobs
            .update(&self.id, |e| e.record.epochs.push(r));
    }

    fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::SeqCst)
    }

    fn interrupted(&self) -> bool {
        *self.service.inner.closing.borrow()
    }

    fn wants_state(&self) -> bool {
        true
    }

    fn save_state(&mut self, state: &ResumeState) -> Result<(), StateError> {
        self.handle.block_on(self.sink.save(state))
    }

    fn phase(&mut self, phase: Phase) {
        if phase == Phase::Publishing {
            self.service
                .inner
                .jobs
                .update(&self.id, |e| e.record.state = JobState::Publishing as i32);
        }
    }

    fn commit(&mut self) -> bool {
        let trained = self.last_progress;
        self.service
            .inner
            .jobs
            .update(&self.id, |e| e.record.trained_steps = trained);
        let committed = self.service.inner.jobs.commit(&self.id);
        // The record must say "committed" before the alias moves, or a crash in between
        // would let a restart honour a cancel for a version that is already live.
        self.handle.block_on(self.service.inner.jobs.flush());
        committed
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<JobEvent, Status>> + Send>>;

#[tonic::async_trait]
impl Trainer for TrainerService {
    async fn start_training(
        &self,
        request: Request<TrainingSpec>,
    ) -> Result<Response<StartTrainingResponse>, Status> {
        let job_id = self.start(request.into_inner()).await?;
        Ok(Response::new(StartTrainingResponse { job_id }))
    }

    type WatchJobStream = EventStream;

    async fn watch_job(
        &self,
        request: Request<WatchJobRequest>,
    ) -> Result<Response<Self::WatchJobStream>, Status> {
        let id = request.into_inner().job_id;
        let rx = self
            .inner
            .jobs
            .subscribe(&id)
            .ok_or(ServiceError::UnknownJob(id))?;
        Ok(Response::new(event_stream(
            rx,
            self.inner.closing.subscribe(),
        )))
    }

    async fn get_job(&self, request: Request<GetJobRequest>) -> Result<Response<Job>, Status> {
        let id = request.into_inner().job_id;
        let job = self
            .inner
            .jobs
            .snapshot(&id)
            .ok_or(ServiceError::UnknownJob(id))?;
        Ok(Response::new(job))
    }

    async fn list_jobs(
        &self,
        _request: Request<ListJobsRequest>,
    ) -> Result<Response<ListJobsResponse>, Status> {
        Ok(Response::new(ListJobsResponse {
            jobs: self.inner.jobs.snapshots(),
        }))
    }

    async fn cancel_job(
        &self,
        request: Request<CancelJobRequest>,
    ) -> Result<Response<Job>, Status> {
        let id = request.into_inner().job_id;
        self.inner.jobs.request_cancel(&id)?;
        let job = self
            .inner
            .jobs
            .snapshot(&id)
            .ok_or(ServiceError::UnknownJob(id))?;
        Ok(Response::new(job))
    }

    async fn list_model_versions(
        &self,
        request: Request<ListModelVersionsRequest>,
    ) -> Result<Response<ListModelVersionsResponse>, Status> {
        let name = model_name_or_default(&request.into_inner().model_name);
        let versions = self.versions(&name).await?;
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
            .map_err(ServiceError::from)?;
        tracing::info!(model = %name, alias = %r.alias, version = %r.version, previous = ?previous, "alias set");
        Ok(Response::new(SetAliasResponse {
            previous_version: previous.unwrap_or_default(),
        }))
    }
}

/// Streams a job's snapshots: the current one first, then each change, ending after a terminal
/// state. A watcher that falls behind may miss progress snapshots, never a state: every state the
/// job entered since the last event is sent, in order. When the trainer shuts down the stream
/// ends with UNAVAILABLE (watch again once it is back).
fn event_stream(mut rx: watch::Receiver<JobEvents>, closing: watch::Receiver<bool>) -> EventStream {
    let first = rx.borrow_and_update().clone();
    let states_seen = first.states.len();
    let stream = futures::stream::unfold(
        (rx, vec![first.latest], states_seen, false),
        move |(mut rx, mut queue, mut states_seen, done)| {
            let mut closing = closing.clone();
            async move {
                if queue.is_empty() {
                    if done {
                        return None;
                    }
                    tokio::select! {
                        changed = rx.changed() => changed.ok()?,
                        _ = closing.wait_for(|c| *c) => {
                            let status = Status::unavailable(
                                "the trainer is shutting down; the job resumes when it restarts: watch again then",
                            );
                            return Some((Err(status), (rx, Vec::new(), states_seen, true)));
                        }
                    }
                    let events = rx.borrow_and_update().clone();
                    queue = events.states.iter().skip(states_seen).cloned().collect();
                    states_seen = events.states.len();
                    if queue.last() != Some(&events.latest) {
                        queue.push(events.latest);
                    }
                }
                let job = queue.remove(0);
                let done = done || terminal(job.state);
                if done {
                    queue.clear();
                }
                Some((
                    Ok(JobEvent { job: Some(job) }),
                    (rx, queue, states_seen, done),
                ))
            }
        },
    );
    Box::pin(stream)
}
