//! Loading the served model and following an alias: the current version lives in a `ModelSlot`
//! and is swapped atomically; requests keep the `Arc` of the version they started on, so a swap
//! never fails or mixes an in-flight request. A failed load (unreachable store, corrupt or
//! incomplete checkpoint) is logged and changes nothing.
use std::sync::{Arc, RwLock};
use std::time::Duration;

use common::registry::ModelRef;
use tch::Device;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use crate::engine::{LoadError, ServingModel};
use crate::telemetry::Metrics;

/// gRPC service name used for health status.
pub const SERVICE_NAME: &str = "goemotions.v1.Predictor";

/// Sets the overall ("") and the Predictor service's health status together.
pub async fn set_health(health: &HealthReporter, status: ServingStatus) {
    health.set_service_status("", status).await;
    health.set_service_status(SERVICE_NAME, status).await;
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

pub struct Reloader {
    pub reference: ModelRef,
    pub device: Device,
    pub slot: Arc<ModelSlot>,
    pub metrics: Metrics,
    pub health: HealthReporter,
    pub poll_interval: Duration,
}

impl Reloader {
    /// Loads the referenced version if it differs from the served one. Returns whether it swapped.
    pub async fn check(&self) -> Result<bool, LoadError> {
        let (store, version) = self.reference.resolve().await?;
        if let Some(current) = self.slot.get() {
            match &version {
                Some(v) if v == current.version() => return Ok(false),
                None => return Ok(false), // a fixed checkpoint never changes
                _ => {}
            }
        }
        let started = std::time::Instant::now();
        let model = match ServingModel::load(&store, self.device).await {
            Ok(m) => m,
            Err(e) => {
                self.metrics.reloads.with_label_values(&["failed"]).inc();
                return Err(e);
            }
        };
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
        set_health(&self.health, ServingStatus::Serving).await;
        tracing::info!(
            version = %new_version,
            previous = previous.as_ref().map(|p| p.version().to_string()),
            uri = %store.uri(),
            seconds = format!("{:.2}", started.elapsed().as_secs_f64()),
            "model loaded and serving"
        );
        Ok(true)
    }

    /// Checks at start and then every poll interval (aliases only) until `shutdown` fires.
    pub async fn run(self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        loop {
            if let Err(e) = self.check().await {
                let serving = self.slot.get().map(|m| m.version().to_string());
                tracing::error!(error = %e, serving = ?serving, "model load failed; keeping the current model");
            }
            let fixed = matches!(self.reference, ModelRef::Checkpoint(_));
            if fixed && self.slot.get().is_some() {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(self.poll_interval) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}
