//! Loading the served model and following an alias: the current version lives in a `ModelSlot`
//! and is swapped atomically; requests keep the `Arc` of the version they started on, so a swap
//! never fails or mixes an in-flight request.
//!
//! What is served is identified by (resolved location, sha256 of its manifest), not by the
//! version string inside the manifest, so an alias is followed by where it points and what is
//! there. A poll reads only the alias and the manifest. A load that fails (unreachable store,
//! corrupt or invalid checkpoint) changes nothing and is not retried for the same identity
//! before an exponentially growing delay has passed; a new identity is tried at once. A load
//! finishing after the server started draining never sets SERVING again.
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use common::checkpoint;
use common::model::Precision;
use common::registry::ModelRef;
use tch::Device;
use tokio::sync::watch;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use crate::engine::{LoadError, ServingModel};
use crate::telemetry::Metrics;

/// gRPC service name used for health status.
pub const SERVICE_NAME: &str = "goemotions.v1.Predictor";

/// The longest wait before retrying a version that failed to load.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(600);

/// Sets the overall ("") and the Predictor service's health status together.
async fn set_health(health: &HealthReporter, status: ServingStatus) {
    health.set_service_status("", status).await;
    health.set_service_status(SERVICE_NAME, status).await;
}

/// The served health status. Every change happens under one lock, and once the server drains
/// (or an inference thread died) it is NOT_SERVING for good: a load finishing at the same time
/// can never turn it back to SERVING.
#[derive(Clone)]
pub struct Health {
    reporter: HealthReporter,
    stopped: Arc<tokio::sync::Mutex<bool>>,
}

impl Health {
    /// Starts NOT_SERVING.
    pub async fn new(reporter: HealthReporter) -> Self {
        set_health(&reporter, ServingStatus::NotServing).await;
        Self {
            reporter,
            stopped: Arc::default(),
        }
    }

    /// SERVING, unless the server has started draining or stopped.
    pub async fn serving(&self) {
        let stopped = self.stopped.lock().await;
        if !*stopped {
            set_health(&self.reporter, ServingStatus::Serving).await;
        }
    }

    /// NOT_SERVING from now on (draining, or an inference thread stopped).
    pub async fn stop(&self) {
        let mut stopped = self.stopped.lock().await;
        *stopped = true;
        set_health(&self.reporter, ServingStatus::NotServing).await;
    }
}

#[derive(Default)]
pub struct ModelSlot {
    current: RwLock<Option<Arc<ServingModel>>>,
}

impl ModelSlot {
    pub fn get(&self) -> Option<Arc<ServingModel>> {
        self.current
            .read()
            .map(|g| g.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    fn set(&self, model: Arc<ServingModel>) -> Option<Arc<ServingModel>> {
        let mut guard = self.current.write().unwrap_or_else(|p| p.into_inner());
        guard.replace(model)
    }
}

/// Where a checkpoint is and what its manifest says, byte for byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub uri: String,
    pub manifest_sha256: String,
}

/// A load that failed, and when the same identity may be tried again.
struct Failure {
    identity: Identity,
    attempts: u32,
    retry_at: Instant,
}

/// The delay before attempt `attempts + 1` of a failed identity: the poll interval doubled per
/// failure, at most `MAX_RETRY_DELAY`.
pub fn retry_delay(poll_interval: Duration, attempts: u32) -> Duration {
    let factor = 2u32.saturating_pow(attempts.saturating_sub(1).min(16));
    poll_interval.saturating_mul(factor).min(MAX_RETRY_DELAY)
}

/// How long a poll may take to read the alias and the manifest, and a load the whole checkpoint.
#[derive(Debug, Clone, Copy)]
pub struct StoreTimeouts {
    pub read: Duration,
    pub load: Duration,
}

impl Default for StoreTimeouts {
    fn default() -> Self {
        Self {
            read: Duration::from_secs(30),
            load: Duration::from_secs(300),
        }
    }
}

/// Why a check did not end with the reference's checkpoint served.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The alias or the manifest could not be read (store down, alias missing, bad manifest).
    #[error("cannot read where the model reference points: {0}")]
    Read(LoadError),
    #[error("reading the alias and manifest took longer than {0:?} (--store-timeout-secs); the object store does not answer")]
    ReadTimedOut(Duration),
    #[error("loading {uri} failed: {source}")]
    Load { uri: String, source: LoadError },
    #[error("loading {uri} took longer than {after:?} (--load-timeout-secs)")]
    LoadTimedOut { uri: String, after: Duration },
}

/// What a check did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checked {
    Unchanged,
    Loaded(String),
    /// The identity failed before; its retry is not due yet.
    Deferred,
}

pub struct Reloader {
    pub reference: ModelRef,
    pub device: Device,
    pub precision: Precision,
    pub slot: Arc<ModelSlot>,
    pub metrics: Metrics,
    pub health: Health,
    pub poll_interval: Duration,
    pub timeouts: StoreTimeouts,
    pub draining: watch::Receiver<bool>,
    failure: Option<Failure>,
}

impl Reloader {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        reference: ModelRef,
        device: Device,
        precision: Precision,
        slot: Arc<ModelSlot>,
        metrics: Metrics,
        health: Health,
        poll_interval: Duration,
        timeouts: StoreTimeouts,
        draining: watch::Receiver<bool>,
    ) -> Self {
        Self {
            reference,
            device,
            precision,
            slot,
            metrics,
            health,
            poll_interval,
            timeouts,
            draining,
            failure: None,
        }
    }

    /// The checkpoint the reference names now and the sha256 of its manifest, within the read
    /// timeout.
    async fn read_identity(&self) -> Result<(common::store::Store, Identity), ReloadError> {
        let read = async {
            let (store, _) = self.reference.resolve().await?;
            let (_, manifest_sha256) = checkpoint::read_manifest_with_sha256(&store).await?;
            let identity = Identity {
                uri: store.uri().to_string(),
                manifest_sha256,
            };
            Ok::<_, LoadError>((store, identity))
        };
        match tokio::time::timeout(self.timeouts.read, read).await {
            Ok(result) => result.map_err(ReloadError::Read),
            Err(_) => Err(ReloadError::ReadTimedOut(self.timeouts.read)),
        }
    }

    /// Loads what the reference names if it differs from what is served.
    pub async fn check(&mut self) -> Result<Checked, ReloadError> {
        let (store, identity) = self.read_identity().await?;
        if let Some(current) = self.slot.get() {
            if current.source_uri == identity.uri
                && current.manifest_sha256 == identity.manifest_sha256
            {
                self.failure = None;
                return Ok(Checked::Unchanged);
            }
        }
        if let Some(f) = &self.failure {
            if f.identity == identity && Instant::now() < f.retry_at {
                return Ok(Checked::Deferred);
            }
        }
        let started = Instant::now();
        let load = ServingModel::load(&store, self.device, self.precision);
        let loaded = match tokio::time::timeout(self.timeouts.load, load).await {
            Ok(Ok(model)) => Ok(model),
            Ok(Err(source)) => Err(ReloadError::Load {
                uri: identity.uri.clone(),
                source,
            }),
            Err(_) => Err(ReloadError::LoadTimedOut {
                uri: identity.uri.clone(),
                after: self.timeouts.load,
            }),
        };
        let model = match loaded {
            Ok(m) => m,
            Err(e) => {
                self.metrics.reloads.with_label_values(&["failed"]).inc();
                let attempts = match &self.failure {
                    Some(f) if f.identity == identity => f.attempts + 1,
                    _ => 1,
                };
                self.failure = Some(Failure {
                    retry_at: Instant::now() + retry_delay(self.poll_interval, attempts),
                    identity,
                    attempts,
                });
                return Err(e);
            }
        };
        self.failure = None;
        let new_version = model.version().to_string();
        let previous = self.slot.set(Arc::new(model));
        self.metrics.reloads.with_label_values(&["ok"]).inc();
        if let Some(prev) = &previous {
            let _ = self
                .metrics
                .model_version
                .remove_label_values(&[prev.version()]);
        }
        self.metrics
            .model_version
            .with_label_values(&[&new_version])
            .set(1);
        self.health.serving().await;
        tracing::info!(
            version = %new_version,
            previous = previous.as_ref().map(|p| p.version().to_string()),
            uri = %store.uri(),
            precision = %self.precision,
            seconds = format!("{:.2}", started.elapsed().as_secs_f64()),
            "model loaded and serving"
        );
        Ok(Checked::Loaded(new_version))
    }

    /// Checks at start and then every poll interval until draining starts; a fixed checkpoint
    /// stops being polled once it is loaded.
    pub async fn run(mut self) {
        let mut draining = self.draining.clone();
        loop {
            match self.check().await {
                Ok(_) => {}
                Err(e) => {
                    let serving = self.slot.get().map(|m| m.version().to_string());
                    match &e {
                        ReloadError::Read(_) | ReloadError::ReadTimedOut(_) => {
                            self.metrics
                                .reloads
                                .with_label_values(&["unreadable"])
                                .inc();
                            tracing::error!(error = %e, serving = ?serving, retry_in_seconds = self.poll_interval.as_secs_f64(),
                                "cannot read the model reference; keeping the current model");
                        }
                        ReloadError::Load { .. } | ReloadError::LoadTimedOut { .. } => {
                            let retry_in = self.failure.as_ref().map(|f| {
                                f.retry_at
                                    .saturating_duration_since(Instant::now())
                                    .as_secs_f64()
                            });
                            tracing::error!(error = %e, serving = ?serving, retry_in_seconds = ?retry_in,
                                "model load failed; keeping the current model");
                        }
                    }
                }
            }
            let fixed = matches!(self.reference, ModelRef::Checkpoint(_));
            if fixed && self.slot.get().is_some() {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(self.poll_interval) => {}
                _ = draining.wait_for(|d| *d) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_exponentially_up_to_a_cap() {
        let poll = Duration::from_secs(10);
        assert_eq!(retry_delay(poll, 1), Duration::from_secs(10));
        assert_eq!(retry_delay(poll, 2), Duration::from_secs(20));
        assert_eq!(retry_delay(poll, 4), Duration::from_secs(80));
        assert_eq!(retry_delay(poll, 30), MAX_RETRY_DELAY);
    }
}

#[cfg(test)]
mod health_tests {
    use super::*;
    use tonic_health::pb::health_server::Health as _;
    use tonic_health::pb::HealthCheckRequest;

    async fn status(service: &tonic_health::server::HealthService, name: &str) -> i32 {
        service
            .check(tonic::Request::new(HealthCheckRequest {
                service: name.into(),
            }))
            .await
            .map(|r| r.into_inner().status)
            .unwrap_or(-1)
    }

    #[tokio::test]
    async fn a_load_finishing_after_the_drain_never_sets_serving() {
        let reporter = tonic_health::server::HealthReporter::new();
        let service = tonic_health::server::HealthService::from_health_reporter(reporter.clone());
        let health = Health::new(reporter).await;
        let not_serving = ServingStatus::NotServing as i32;
        assert_eq!(status(&service, "").await, not_serving);
        health.serving().await;
        assert_eq!(
            status(&service, SERVICE_NAME).await,
            ServingStatus::Serving as i32
        );
        health.stop().await;
        // A reload that was in flight when SIGTERM came now finishes.
        health.serving().await;
        assert_eq!(status(&service, "").await, not_serving);
        assert_eq!(status(&service, SERVICE_NAME).await, not_serving);
    }
}
