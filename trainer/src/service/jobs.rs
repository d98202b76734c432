//! The service's jobs: what is persisted about each (`<registry>/jobs/<id>/job.json`), the live
//! table with one watch channel per job, and the single writer that persists records in the
//! order they changed (a later state can never be overwritten by an earlier one).
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use common::data::SplitLimits;
use common::store::Store;
use proto::v1::{EpochMetrics, Job, JobState, Progress as ProgressMsg, TrainingSpec};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};

use crate::config::TrainConfig;
use crate::history::EpochRecord;

pub(crate) const RECORD: &str = "job.json";

/// What is persisted about a job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct JobRecord {
    pub id: String,
    pub state: i32,
    pub base_model: String,
    pub data_dir: PathBuf,
    pub model_name: String,
    pub alias: Option<String>,
    pub train: TrainConfig,
    #[serde(default)]
    pub limits: SplitLimits,
    pub run_baseline: bool,
    pub version: String,
    pub error: String,
    pub created_at: String,
    pub epochs: Vec<EpochRecord>,
    /// The request as received (prost encoding, hex), echoed in `Job.spec`.
    #[serde(default)]
    pub spec_wire: String,
    /// A cancel was accepted; a restarted trainer honours it too.
    #[serde(default)]
    pub cancel_requested: bool,
    /// Past the commit point: the version is (about to be) visible and cancels are refused.
    #[serde(default)]
    pub committed: bool,
    /// Training progress when the job committed its version (steps done, of total), so a job
    /// resumed at its publish phase reports where training ended rather than 0/0.
    #[serde(default)]
    pub trained_steps: Option<(u64, u64)>,
}

impl JobRecord {
    pub fn spec(&self) -> TrainingSpec {
        hex::decode(&self.spec_wire)
            .ok()
            .and_then(|b| prost::Message::decode(b.as_slice()).ok())
            .unwrap_or_default()
    }

    pub fn encode_spec(spec: &TrainingSpec) -> String {
        hex::encode(prost::Message::encode_to_vec(spec))
    }
}

pub(crate) fn terminal(state: i32) -> bool {
    state == JobState::Succeeded as i32
        || state == JobState::Failed as i32
        || state == JobState::Cancelled as i32
}

/// What watchers see: the latest snapshot, and one snapshot per state the job entered (so a slow
/// watcher may miss progress updates but never a state, e.g. PUBLISHING before SUCCEEDED).
#[derive(Debug, Clone, Default)]
pub(crate) struct JobEvents {
    pub latest: Job,
    pub states: Vec<Job>,
}

pub(crate) struct JobEntry {
    pub record: JobRecord,
    pub progress: Option<ProgressMsg>,
    pub events: watch::Sender<JobEvents>,
    pub cancel: Arc<AtomicBool>,
}

impl JobEntry {
    fn snapshot(&self, device: &str) -> Job {
        let r = &self.record;
        Job {
            id: r.id.clone(),
            state: r.state,
            spec: Some(r.spec()),
            progress: self.progress,
            epochs: r
                .epochs
                .iter()
                .map(|e| EpochMetrics {
                    epoch: e.epoch,
                    train_loss: e.train_loss as f32,
                    dev_macro_f1: e.dev_macro_f1 as f32,
                    dev_micro_f1: e.dev_micro_f1 as f32,
                })
                .collect(),
            model_version: if r.state == JobState::Succeeded as i32 {
                r.version.clone()
            } else {
                String::new()
            },
            error: r.error.clone(),
            created_at: r.created_at.clone(),
            device: device.to_string(),
        }
    }

    fn publish(&self, device: &str) {
        let latest = self.snapshot(device);
        self.events.send_modify(|events| {
            if events.states.last().map(|j| j.state) != Some(latest.state) {
                events.states.push(latest.clone());
            }
            events.latest = latest;
        });
    }
}

enum WriterMessage {
    Put(String, Bytes),
    Flush(oneshot::Sender<()>),
}

/// Every job known to this process, and the writer of their records.
pub(crate) struct JobTable {
    entries: Mutex<BTreeMap<String, JobEntry>>,
    writer: mpsc::UnboundedSender<WriterMessage>,
    root: Store,
    device: String,
}

impl JobTable {
    /// Starts the record writer on the current runtime (call from within it).
    pub fn new(root: Store, device: String) -> Self {
        let (writer, mut rx) = mpsc::unbounded_channel::<WriterMessage>();
        let store = root.clone();
        tokio::spawn(async move {
            while let Some(message) = rx.recv().await {
                match message {
                    WriterMessage::Put(id, bytes) => {
                        if let Err(e) = store.child(&id).put(RECORD, bytes).await {
                            tracing::warn!(job = %id, error = %e, "could not persist job record");
                        }
                    }
                    WriterMessage::Flush(done) => {
                        let _ = done.send(());
                    }
                }
            }
        });
        Self {
            entries: Mutex::new(BTreeMap::new()),
            writer,
            root,
            device,
        }
    }

    pub fn root(&self) -> &Store {
        &self.root
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, JobEntry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Persists a new record directly (before the job is announced) and adds it to the table.
    pub async fn create(&self, record: JobRecord) -> Result<(), common::store::StoreError> {
        let bytes = serde_json::to_vec_pretty(&record).unwrap_or_default();
        self.root
            .child(&record.id)
            .put(RECORD, Bytes::from(bytes))
            .await?;
        self.insert(record);
        Ok(())
    }

    /// Adds a record read back from the store.
    pub fn insert(&self, record: JobRecord) {
        let id = record.id.clone();
        let cancel = Arc::new(AtomicBool::new(record.cancel_requested));
        let entry = JobEntry {
            record,
            progress: None,
            events: watch::channel(JobEvents::default()).0,
            cancel,
        };
        entry.publish(&self.device);
        self.lock().insert(id, entry);
    }

    /// Applies `f` to a job's record, publishes the new snapshot to watchers and queues the
    /// record for the writer (under the table lock, so records are written in change order).
    /// Returns what `f` returned, or `None` for an unknown job.
    pub fn update<T>(&self, id: &str, f: impl FnOnce(&mut JobEntry) -> T) -> Option<T> {
        let mut entries = self.lock();
        let entry = entries.get_mut(id)?;
        let out = f(entry);
        entry.publish(&self.device);
        if let Ok(bytes) = serde_json::to_vec_pretty(&entry.record) {
            let _ = self
                .writer
                .send(WriterMessage::Put(id.to_string(), Bytes::from(bytes)));
        }
        Some(out)
    }

    /// Updates progress (not persisted: it changes every few steps).
    pub fn set_progress(&self, id: &str, progress: ProgressMsg) {
        if let Some(entry) = self.lock().get_mut(id) {
            entry.progress = Some(progress);
            entry.publish(&self.device);
        }
    }

    pub fn record(&self, id: &str) -> Option<JobRecord> {
        self.lock().get(id).map(|e| e.record.clone())
    }

    pub fn cancel_flag(&self, id: &str) -> Option<Arc<AtomicBool>> {
        self.lock().get(id).map(|e| e.cancel.clone())
    }

    pub fn snapshot(&self, id: &str) -> Option<Job> {
        self.lock().get(id).map(|e| e.snapshot(&self.device))
    }

    /// Every job's record.
    pub fn records(&self) -> Vec<JobRecord> {
        self.lock().values().map(|e| e.record.clone()).collect()
    }

    pub fn snapshots(&self) -> Vec<Job> {
        self.lock()
            .values()
            .map(|e| e.snapshot(&self.device))
            .collect()
    }

    pub fn subscribe(&self, id: &str) -> Option<watch::Receiver<JobEvents>> {
        self.lock().get(id).map(|e| e.events.subscribe())
    }

    /// Waits until every record queued so far is written.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.writer.send(WriterMessage::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    /// Marks a cancel request: `Ok` when accepted, else why not.
    pub fn request_cancel(&self, id: &str) -> Result<(), super::ServiceError> {
        use super::ServiceError;
        let outcome = self.update(id, |e| {
            if terminal(e.record.state) {
                return Err(ServiceError::Ended(id.to_string()));
            }
            if e.record.committed {
                return Err(ServiceError::Published(id.to_string()));
            }
            e.cancel.store(true, Ordering::SeqCst);
            e.record.cancel_requested = true;
            Ok(())
        });
        outcome.unwrap_or_else(|| Err(ServiceError::UnknownJob(id.to_string())))
    }

    /// The commit point: refuses (returns false) when a cancel came first, else marks the job
    /// committed so later cancels are refused. Atomic with `request_cancel`.
    pub fn commit(&self, id: &str) -> bool {
        self.update(id, |e| {
            if e.cancel.load(Ordering::SeqCst) {
                false
            } else {
                e.record.committed = true;
                true
            }
        })
        .unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::ServiceError;

    fn record(id: &str) -> JobRecord {
        JobRecord {
            id: id.into(),
            state: JobState::Running as i32,
            base_model: String::new(),
            data_dir: PathBuf::new(),
            model_name: "m".into(),
            alias: Some("latest".into()),
            train: TrainConfig::default(),
            limits: SplitLimits::default(),
            run_baseline: false,
            version: id.into(),
            error: String::new(),
            created_at: String::new(),
            epochs: vec![],
            spec_wire: String::new(),
            cancel_requested: false,
            committed: false,
            trained_steps: None,
        }
    }

    #[tokio::test]
    async fn cancel_and_commit_exclude_each_other_and_records_land_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let root = Store::open(dir.path().to_str().unwrap()).unwrap();
        let table = JobTable::new(root.clone(), "cpu".into());
        table.insert(record("a"));
        table.insert(record("b"));
        // Committed first: a later cancel is refused as "already published".
        assert!(table.commit("a"));
        assert!(matches!(
            table.request_cancel("a"),
            Err(ServiceError::Published(_))
        ));
        // Cancelled first: the commit point refuses, so nothing goes live.
        table.request_cancel("b").unwrap();
        assert!(!table.commit("b"));
        assert!(matches!(
            table.request_cancel("nope"),
            Err(ServiceError::UnknownJob(_))
        ));
        // Many updates in a row: the stored record is the last one.
        for step in 0..50 {
            table.update("a", |e| e.record.error = format!("update {step}"));
        }
        table.flush().await;
        let stored: JobRecord =
            serde_json::from_slice(&root.child("a").get(RECORD).await.unwrap()).unwrap();
        assert_eq!(stored.error, "update 49");
        assert!(stored.committed);
    }
}
