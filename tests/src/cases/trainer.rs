//! Adversarial cases against the trainer service: real trainer processes over a real S3 server
//! (s3s-fs; moto where conditional writes must be atomic across processes).
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::checkpoint;
use common::registry::Registry;
use common::store::Store;
use proto::v1::trainer_client::TrainerClient;
use proto::v1::{
    CancelJobRequest, GetJobRequest, Hyperparameters, Job, JobState, ListJobsRequest,
    SetAliasRequest, TrainingSpec, WatchJobRequest,
};
use tonic::transport::Channel;
use tonic::Code;

use super::Outcome;
use crate::*;

/// These cases point the process-wide AWS_* variables at their own S3 server and train
/// models: one at a time.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub const TOKEN: &str = "trainer-test-token";

pub struct TrainerProc {
    pub proc: Proc,
    pub addr: String,
}

/// `trainer serve` on 127.0.0.1 over `registry` (an S3 URI), requiring `TOKEN`.
pub fn spawn_trainer(
    registry: &str,
    env: &[(&'static str, String)],
    dir: &Path,
    tag: &str,
) -> TrainerProc {
    let port = free_port();
    let token_file = dir.join("trainer-token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).expect("token file");
    let mut cmd = Command::new(bin("trainer"));
    cmd.args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--registry", registry])
        .args([
            "--device",
            "cpu",
            "--threads",
            "2",
            "--state-every-steps",
            "4",
        ])
        .args([
            "--shutdown-grace-secs",
            "30",
            "--progress-interval-secs",
            "1",
        ])
        .arg("--auth-token-file")
        .arg(&token_file)
        .arg("--base-model")
        .arg(base_model())
        .arg("--data-dir")
        .arg(data_dir())
        .env("RUST_LOG", "info");
    for (k, v) in env {
        cmd.env(k, v);
    }
    TrainerProc {
        proc: Proc::spawn(cmd, dir.join(format!("trainer-{tag}.log"))),
        addr: format!("http://127.0.0.1:{port}"),
    }
}

type Authed = TrainerClient<
    tonic::service::interceptor::InterceptedService<
        Channel,
        fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status>,
    >,
>;

fn with_token(mut r: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    r.metadata_mut().insert(
        "authorization",
        format!("Bearer {TOKEN}").parse().expect("header"),
    );
    Ok(r)
}

/// Connects with the token (waits for the trainer to listen).
pub async fn connect(t: &mut TrainerProc) -> Authed {
    let start = Instant::now();
    loop {
        if let Ok(channel) = Channel::from_shared(t.addr.clone())
            .expect("addr")
            .connect()
            .await
        {
            return TrainerClient::with_interceptor(channel, with_token as fn(_) -> _);
        }
        if let Ok(Some(status)) = t.proc.child.try_wait() {
            panic!("trainer exited ({status}):\n{}", t.proc.log_text());
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "trainer did not start:\n{}",
            t.proc.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn small_spec(train_limit: u32, epochs: u32) -> TrainingSpec {
    TrainingSpec {
        hyperparameters: Some(Hyperparameters {
            epochs: Some(epochs),
            train_limit: Some(train_limit),
            dev_limit: Some(100),
            test_limit: Some(50),
            batch_size: Some(16),
            learning_rate: Some(2e-4),
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn get_job(c: &mut Authed, id: &str) -> Option<Job> {
    c.get_job(GetJobRequest { job_id: id.into() })
        .await
        .ok()
        .map(|r| r.into_inner())
}

/// Polls until `done(job)` or `timeout`.
pub async fn wait_job(
    c: &mut Authed,
    id: &str,
    timeout: Duration,
    done: impl Fn(&Job) -> bool,
) -> Option<Job> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if let Some(job) = get_job(c, id).await {
            if done(&job) {
                return Some(job);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// Watches a job to its end; returns every event's snapshot.
pub async fn watch_to_end(c: &mut Authed, id: &str, timeout: Duration) -> Vec<Job> {
    let mut events = Vec::new();
    let Ok(stream) = c.watch_job(WatchJobRequest { job_id: id.into() }).await else {
        return events;
    };
    let mut stream = stream.into_inner();
    let _ = tokio::time::timeout(timeout, async {
        while let Ok(Some(e)) = stream.message().await {
            if let Some(job) = e.job {
                events.push(job);
            }
        }
    })
    .await;
    events
}

fn state_name(state: i32) -> String {
    JobState::try_from(state)
        .map(|s| format!("{s:?}"))
        .unwrap_or_else(|_| state.to_string())
}

/// Every field of a TrainingSpec is checked before a job exists; a read never creates folders;
/// calls without the token are refused; a trainer exposed without a token refuses to start.
pub async fn invalid_specs_refused(dir: &Path) -> Outcome {
    let out = Outcome::new(
        "StartTraining with bad values in 19 fields, no token, exposed without token",
        "INVALID_ARGUMENT naming each field, no job, nothing created; UNAUTHENTICATED; refused start",
    );
    let _serial = SERIAL.lock().await;
    let s3 = S3Server::start(&dir.join("s3"), "bucket");
    s3.export_env();
    let mut trainer = spawn_trainer(&s3.uri("registry"), &s3.env(), dir, "a");
    let mut c = connect(&mut trainer).await;
    let missing = dir.join("nonexistent/model");
    let hyper = |h: Hyperparameters| TrainingSpec {
        hyperparameters: Some(h),
        ..Default::default()
    };
    let cases: Vec<(&str, TrainingSpec)> = vec![
        (
            "model_name",
            TrainingSpec {
                model_name: "../x".into(),
                ..Default::default()
            },
        ),
        (
            "model_name",
            TrainingSpec {
                model_name: "a/b".into(),
                ..Default::default()
            },
        ),
        (
            "alias",
            TrainingSpec {
                alias: "a/b".into(),
                ..Default::default()
            },
        ),
        (
            "hyperparameters.max_steps",
            hyper(Hyperparameters {
                max_steps: Some(0),
                ..Default::default()
            }),
        ),
        (
            "hyperparameters.holdout_fold",
            hyper(Hyperparameters {
                holdout_fold: Some("3/3".into()),
                ..Default::default()
            }),
        ),
        (
            "hyperparameters.init_from[0]",
            hyper(Hyperparameters {
                init_from: vec!["/nonexistent/models/m/aliases/latest".into()],
                ..Default::default()
            }),
        ),
        (
            "hyperparameters.max_length",
            hyper(Hyperparameters {
                max_length: Some(100_000),
                ..Default::default()
            }),
        ),
        (
            "hyperparameters.max_length",
            hyper(Hyperparameters {
                max_length: Some(0),
                ..Default::default()
            }),
        ),
        (
            "hyperparameters.warmup_ratio",
            hyper(Hyperparameters {
                warmup_ratio: Some(f32::NAN),
                ..Default::default()
            }),
        ),
        (
            "hyperparameters.dropout",
            hyper(Hyperparameters {
                dropout: Some(5.0),
                ..Default::default()
            }),
        ),
        (
            "hyperparameters.learning_rate",
            hyper(Hyperparameters {
                learning_rate: Some(f32::INFINITY),
                ..Default::default()
            }),
        ),
        (
            "hyperparameters.epochs",
            hyper(Hyperparameters {
                epochs: Some(u32::MAX),
                ..Default::default()
            }),
        ),
        (
            "hyperparameters.pooling",
            hyper(Hyperparameters {
                pooling: Some("max".into()),
                ..Default::default()
            }),
        ),
        (
            "hyperparameters.precision",
            hyper(Hyperparameters {
                precision: Some("fp16".into()),
                ..Default::default()
            }),
        ),
        (
            "hyperparameters.loss",
            hyper(Hyperparameters {
                loss: Some("hinge".into()),
                ..Default::default()
            }),
        ),
        (
            "hyperparameters.calibration",
            hyper(Hyperparameters {
                calibration: Some("kelvin".into()),
                ..Default::default()
            }),
        ),
        (
            "hyperparameters.layer_lr_decay",
            hyper(Hyperparameters {
                layer_lr_decay: Some(1.5),
                ..Default::default()
            }),
        ),
        (
            "hyperparameters.ema_decay",
            hyper(Hyperparameters {
                ema_decay: Some(1.0),
                ..Default::default()
            }),
        ),
        (
            "hyperparameters.teachers[0]",
            hyper(Hyperparameters {
                teachers: vec![format!("{}/models/none/aliases/latest", missing.display())],
                ..Default::default()
            }),
        ),
        (
            "base_model",
            TrainingSpec {
                base_model: missing.display().to_string(),
                ..Default::default()
            },
        ),
        (
            "data_dir",
            TrainingSpec {
                data_dir: "/etc".into(),
                ..Default::default()
            },
        ),
    ];
    let mut wrong = Vec::new();
    for (field, spec) in cases {
        match c.start_training(spec).await {
            Err(s) if s.code() == Code::InvalidArgument && s.message().starts_with(field) => {}
            other => wrong.push(format!(
                "{field}: {:?}",
                other.map(|r| r.into_inner().job_id)
            )),
        }
    }
    let jobs = c
        .list_jobs(ListJobsRequest {})
        .await
        .map(|r| r.into_inner().jobs.len())
        .unwrap_or(usize::MAX);
    let registry = Registry::open(&s3.uri("registry")).expect("registry");
    let versions = registry
        .list_versions("goemotions")
        .await
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    let anonymous = TrainerClient::connect(trainer.addr.clone())
        .await
        .expect("connect")
        .list_jobs(ListJobsRequest {})
        .await
        .err()
        .map(|s| s.code());
    let mut cmd = Command::new(bin("trainer"));
    cmd.args(["serve", "--device", "cpu"])
        .args(["--listen", &format!("0.0.0.0:{}", free_port())])
        .arg("--registry")
        .arg(dir.join("exposed-registry"));
    let exposed = cmd.output().expect("run trainer");
    let refused = !exposed.status.success()
        && String::from_utf8_lossy(&exposed.stderr).contains("refusing to listen");
    out.saw(
        format!(
            "wrong answers {wrong:?}; jobs {jobs}, versions {versions}, created {}; anonymous {anonymous:?}; exposed refused {refused}",
            missing.exists()
        ),
        wrong.is_empty()
            && jobs == 0
            && versions == 0
            && !missing.exists()
            && anonymous == Some(Code::Unauthenticated)
            && refused,
    )
}

/// A cancel after the last training step (during test scoring) is honoured: nothing published,
/// no alias moved. A finished job cannot be cancelled. Limits, including `test_limit`, are the
/// ones the report and manifest describe, and the published tokenizer config says the length
/// the model serves.
pub async fn cancel_after_training(dir: &Path) -> Outcome {
    let out = Outcome::new(
        "CancelJob during final evaluation; CancelJob after success",
        "CANCELLED with no version or alias; then FAILED_PRECONDITION; test_limit honoured",
    );
    let _serial = SERIAL.lock().await;
    let s3 = S3Server::start(&dir.join("s3"), "bucket");
    s3.export_env();
    let mut trainer = spawn_trainer(&s3.uri("registry"), &s3.env(), dir, "a");
    let mut c = connect(&mut trainer).await;
    let registry = Registry::open(&s3.uri("registry")).expect("registry");
    // The whole test split (5,427 texts) makes the final evaluation last several seconds.
    let mut spec = small_spec(96, 1);
    if let Some(h) = spec.hyperparameters.as_mut() {
        h.test_limit = None;
    }
    spec.model_name = "cancelled".into();
    let Ok(started) = c.start_training(spec).await else {
        return out.saw("start refused", false);
    };
    let id = started.into_inner().job_id;
    let trained = wait_job(&mut c, &id, Duration::from_secs(300), |j| {
        j.progress
            .is_some_and(|p| p.total_steps > 0 && p.step == p.total_steps)
    })
    .await;
    let cancel = c.cancel_job(CancelJobRequest { job_id: id.clone() }).await;
    let events = watch_to_end(&mut c, &id, Duration::from_secs(300)).await;
    let end = events.last().map(|j| j.state).unwrap_or_default();
    let versions = registry
        .list_versions("cancelled")
        .await
        .map(|v| v.len())
        .unwrap_or(99);
    let alias = registry
        .get_alias("cancelled", "latest")
        .await
        .ok()
        .flatten();

    let Ok(second) = c.start_training(small_spec(60, 1)).await else {
        return out.saw("second start refused", false);
    };
    let id2 = second.into_inner().job_id;
    let events2 = watch_to_end(&mut c, &id2, Duration::from_secs(300)).await;
    let done = events2.last().cloned().unwrap_or_default();
    let late = c
        .cancel_job(CancelJobRequest {
            job_id: id2.clone(),
        })
        .await
        .err()
        .map(|s| s.code());
    let (test_examples, model_max_length) =
        match checkpoint::read(&registry.version_store("goemotions", &done.model_version)).await {
            Ok(ck) => {
                let tokenizer: serde_json::Value = ck
                    .files
                    .get("tokenizer_config.json")
                    .and_then(|b| serde_json::from_slice(b).ok())
                    .unwrap_or_default();
                (
                    ck.manifest.hyperparameters["test_examples"].as_u64(),
                    tokenizer["model_max_length"].as_u64(),
                )
            }
            Err(_) => (None, None),
        };
    out.saw(
        format!(
            "training done {}, cancel {:?}, ended {}, versions {versions}, alias {:?}; second {} then cancel {late:?}; test examples {test_examples:?}, model_max_length {model_max_length:?}",
            trained.is_some(),
            cancel.as_ref().map(|_| ()).map_err(|s| s.code()),
            state_name(end),
            alias.map(|a| a.version),
            state_name(done.state),
        ),
        trained.is_some()
            && cancel.is_ok()
            && end == JobState::Cancelled as i32
            && versions == 0
            && done.state == JobState::Succeeded as i32
            && late == Some(Code::FailedPrecondition)
            && test_examples == Some(50)
            && model_max_length == Some(128),
    )
}

/// Writes a job record as the trainer persists it.
async fn write_record(root: &Store, record: serde_json::Value) {
    let id = record["id"].as_str().expect("id").to_string();
    root.child(&format!("jobs/{id}"))
        .put(
            "job.json",
            bytes::Bytes::from(serde_json::to_vec_pretty(&record).expect("json")),
        )
        .await
        .expect("write record");
}

fn record(
    id: &str,
    state: JobState,
    created_at: &str,
    extra: serde_json::Value,
) -> serde_json::Value {
    let mut r = serde_json::json!({
        "id": id,
        "state": state as i32,
        "base_model": base_model(),
        "data_dir": data_dir(),
        "model_name": "goemotions",
        "alias": "latest",
        "train": trainer::config::TrainConfig::default(),
        "limits": {"train": 96, "dev": 100, "test": 50},
        "run_baseline": false,
        "version": id,
        "error": "",
        "created_at": created_at,
        "epochs": [],
    });
    if let (Some(r), Some(extra)) = (r.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            r.insert(k.clone(), v.clone());
        }
    }
    r
}

/// Restart after a crash while publishing: the manifest landed but the alias had not moved →
/// the restarted trainer moves it and only then says SUCCEEDED; an older unfinished job is
/// marked FAILED (not left RUNNING); a cancel accepted before the crash is honoured and the
/// version removed.
pub async fn restart_finishes_or_undoes_publishing(dir: &Path) -> Outcome {
    let out = Outcome::new(
        "restart after a crash between manifest and alias (and with a pending cancel)",
        "alias moved then SUCCEEDED, progress where training ended (12/12); older unfinished job FAILED; cancelled job's version removed",
    );
    let _serial = SERIAL.lock().await;
    let local = dir.join("local");
    let v1 = shared_registry(&local);
    copy_version(&local, "goemotions", &v1, "job-b");
    copy_version(&local, "goemotions", &v1, "job-c");
    let s3 = S3Server::start(&dir.join("s3"), "bucket");
    s3.export_env();
    let root = Store::open(&s3.uri("registry")).expect("store");
    upload_dir(&root, &local).await;
    write_record(
        &root,
        record(
            "job-a",
            JobState::Running,
            "2026-01-01T00:00:00Z",
            serde_json::json!({}),
        ),
    )
    .await;
    write_record(
        &root,
        record(
            "job-b",
            JobState::Publishing,
            "2026-01-02T00:00:00Z",
            serde_json::json!({"trained_steps": [12, 12]}),
        ),
    )
    .await;
    let registry = Registry::open(&s3.uri("registry")).expect("registry");
    let mut trainer = spawn_trainer(&s3.uri("registry"), &s3.env(), dir, "first");
    let mut c = connect(&mut trainer).await;
    let b = wait_job(&mut c, "job-b", Duration::from_secs(30), |j| {
        j.state == JobState::Succeeded as i32 || j.state == JobState::Failed as i32
    })
    .await
    .unwrap_or_default();
    let a = get_job(&mut c, "job-a").await.unwrap_or_default();
    let alias_after_b = registry
        .resolve_alias("goemotions", "latest")
        .await
        .unwrap_or_default();
    drop(c);
    drop(trainer);

    write_record(
        &root,
        record(
            "job-c",
            JobState::Publishing,
            "2026-01-03T00:00:00Z",
            serde_json::json!({"cancel_requested": true}),
        ),
    )
    .await;
    let mut trainer = spawn_trainer(&s3.uri("registry"), &s3.env(), dir, "second");
    let mut c = connect(&mut trainer).await;
    let job_c = wait_job(&mut c, "job-c", Duration::from_secs(30), |j| {
        j.state == JobState::Cancelled as i32 || j.state == JobState::Succeeded as i32
    })
    .await
    .unwrap_or_default();
    let c_exists = registry
        .version_store("goemotions", "job-c")
        .exists(checkpoint::MANIFEST)
        .await
        .unwrap_or(true);
    let alias_after_c = registry
        .resolve_alias("goemotions", "latest")
        .await
        .unwrap_or_default();
    out.saw(
        format!(
            "job-b {} (alias → {alias_after_b}, progress {}/{}); job-a {} ({:?}); job-c {} (version kept: {c_exists}, alias → {alias_after_c})",
            state_name(b.state),
            b.progress.map(|p| p.step).unwrap_or_default(),
            b.progress.map(|p| p.total_steps).unwrap_or_default(),
            state_name(a.state),
            a.error,
            state_name(job_c.state),
        ),
        b.state == JobState::Succeeded as i32
            && alias_after_b == "job-b"
            && b.progress.is_some_and(|p| p.step == 12 && p.total_steps == 12)
            && a.state == JobState::Failed as i32
            && a.error.contains("restart")
            && job_c.state == JobState::Cancelled as i32
            && !c_exists
            && alias_after_c == "job-b",
    )
}

/// SIGTERM mid-training saves the state at the next step and exits 0 within the grace period;
/// the restarted trainer resumes from exactly that step. A later kill -9 resumes from the last
/// periodic state; the job publishes once. A cancel mid-training publishes nothing.
pub async fn sigterm_and_kill_resume(dir: &Path) -> Outcome {
    let out = Outcome::new(
        "SIGTERM mid-training, restart, kill -9, restart; cancel mid-training",
        "exit 0 with state saved at step N; resumes at N; SUCCEEDED once with both epochs, its resume state removed; cancel publishes nothing and removes its state",
    );
    let _serial = SERIAL.lock().await;
    let s3 = S3Server::start(&dir.join("s3"), "bucket");
    s3.export_env();
    let registry_uri = s3.uri("registry");
    let registry = Registry::open(&registry_uri).expect("registry");
    let mut trainer = spawn_trainer(&registry_uri, &s3.env(), dir, "first");
    let mut c = connect(&mut trainer).await;
    let Ok(started) = c.start_training(small_spec(320, 2)).await else {
        return out.saw("start refused", false);
    };
    let id = started.into_inner().job_id;
    if wait_job(&mut c, &id, Duration::from_secs(240), |j| {
        j.progress.is_some_and(|p| p.step >= 3)
    })
    .await
    .is_none()
    {
        return out.saw(
            format!("never reached step 3:\n{}", trainer.proc.log_text()),
            false,
        );
    }
    trainer.proc.signal(libc::SIGTERM);
    let exit = trainer.proc.wait_timeout(Duration::from_secs(40));
    let log = trainer.proc.log_text();
    let step: Option<u64> = log
        .split("interrupted at step ")
        .nth(1)
        .and_then(|rest| rest.split(':').next())
        .and_then(|n| n.trim().parse().ok());

    let mut second = spawn_trainer(&registry_uri, &s3.env(), dir, "second");
    let mut c = connect(&mut second).await;
    let resumed_line = {
        let start = Instant::now();
        loop {
            let log = second.proc.log_text();
            if let Some(line) = log
                .lines()
                .find(|l| l.contains("resuming from saved state"))
            {
                break Some(line.to_string());
            }
            if start.elapsed() > Duration::from_secs(60) {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let resumed_at: Option<u64> = resumed_line.and_then(|line| {
        line.split("step=")
            .nth(1)?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    });
    let later = resumed_at.unwrap_or(0) + 6;
    let _ = wait_job(&mut c, &id, Duration::from_secs(240), |j| {
        j.progress.is_some_and(|p| p.step >= later)
    })
    .await;
    second.proc.signal(libc::SIGKILL);
    let _ = second.proc.wait_timeout(Duration::from_secs(10));

    let mut third = spawn_trainer(&registry_uri, &s3.env(), dir, "third");
    let mut c = connect(&mut third).await;
    let events = watch_to_end(&mut c, &id, Duration::from_secs(400)).await;
    let last = events.last().cloned().unwrap_or_default();
    let versions = registry
        .list_versions("goemotions")
        .await
        .map(|v| v.len())
        .unwrap_or(0);
    let alias = registry
        .resolve_alias("goemotions", "latest")
        .await
        .unwrap_or_default();

    // Resume state files left in a job's folder (state.json and its tensors).
    let state_files = |job: String| {
        let jobs = Store::open(&format!("{registry_uri}/jobs/{job}")).expect("jobs store");
        async move {
            jobs.list_children("")
                .await
                .map(|names| names.into_iter().filter(|n| n.starts_with("state")).count())
                .unwrap_or(usize::MAX)
        }
    };
    let succeeded_state = state_files(id.clone()).await;
    let cancelled = match c
        .start_training(TrainingSpec {
            model_name: "cancelled".into(),
            ..small_spec(320, 2)
        })
        .await
    {
        Ok(r) => {
            let id = r.into_inner().job_id;
            let _ = wait_job(&mut c, &id, Duration::from_secs(120), |j| {
                j.progress.is_some_and(|p| p.step >= 5)
            })
            .await;
            let saved = state_files(id.clone()).await;
            let _ = c.cancel_job(CancelJobRequest { job_id: id.clone() }).await;
            let end = watch_to_end(&mut c, &id, Duration::from_secs(120)).await;
            end.last().map(|j| j.state) == Some(JobState::Cancelled as i32)
                && registry
                    .list_versions("cancelled")
                    .await
                    .map(|v| v.is_empty())
                    .unwrap_or(false)
                && saved > 0
                && state_files(id).await == 0
        }
        Err(_) => false,
    };
    out.saw(
        format!(
            "exit {exit:?}, interrupted at {step:?}, resumed at {resumed_at:?}; end {} with {} epochs, {versions} version(s), alias at it: {}, {succeeded_state} resume-state files left; cancel ok (state saved, then removed): {cancelled}",
            state_name(last.state),
            last.epochs.len(),
            alias == last.model_version
        ),
        exit.is_some_and(|s| s.success())
            && step.is_some()
            && step == resumed_at
            && last.state == JobState::Succeeded as i32
            && last.epochs.len() == 2
            && versions == 1
            && alias == last.model_version
            && succeeded_state == 0
            && cancelled,
    )
}

/// A job that starts from an alias (`init_from`) and is killed mid-training resumes from the
/// checkpoint it was accepted with, although the alias moved while it was down: the start is
/// pinned to its version when the job is accepted.
pub async fn resumed_job_keeps_its_start(dir: &Path) -> Outcome {
    let out = Outcome::new(
        "start from an alias, kill -9 mid-training, move the alias, restart",
        "resumed, SUCCEEDED, init_versions and train.init_from name the version the alias named at the start",
    );
    let _serial = SERIAL.lock().await;
    let local = dir.join("registry");
    let first_version = shared_registry(&local);
    copy_version(&local, "goemotions", &first_version, "moved");
    let registry_uri = local.display().to_string();
    let registry = Registry::open(&registry_uri).expect("registry");
    let mut spec = small_spec(320, 2);
    spec.model_name = "warm".into();
    if let Some(h) = spec.hyperparameters.as_mut() {
        h.init_from = vec![format!("{registry_uri}/models/goemotions/aliases/latest")];
    }
    let mut trainer = spawn_trainer(&registry_uri, &[], dir, "first");
    let mut c = connect(&mut trainer).await;
    let id = match c.start_training(spec).await {
        Ok(r) => r.into_inner().job_id,
        Err(e) => return out.saw(format!("start refused: {e}"), false),
    };
    // The trainer saves a resume state every 4 steps.
    if wait_job(&mut c, &id, Duration::from_secs(240), |j| {
        j.progress.is_some_and(|p| p.step >= 6)
    })
    .await
    .is_none()
    {
        return out.saw(
            format!("never reached step 6:\n{}", trainer.proc.log_text()),
            false,
        );
    }
    trainer.proc.signal(libc::SIGKILL);
    let _ = trainer.proc.wait_timeout(Duration::from_secs(10));
    let moved = registry
        .set_alias("goemotions", "latest", "moved", None)
        .await
        .is_ok();

    let mut second = spawn_trainer(&registry_uri, &[], dir, "second");
    let mut c = connect(&mut second).await;
    let last = watch_to_end(&mut c, &id, Duration::from_secs(400))
        .await
        .pop()
        .unwrap_or_default();
    let resumed = second.proc.log_text().contains("resuming from saved state");
    let hyper = checkpoint::read_manifest(&registry.version_store("warm", &last.model_version))
        .await
        .map(|m| m.hyperparameters)
        .unwrap_or_default();
    let init_versions = hyper["init_versions"].clone();
    let init_from = hyper["train"]["init_from"][0]
        .as_str()
        .unwrap_or_default()
        .to_string();
    out.saw(
        format!(
            "alias moved: {moved}; resumed: {resumed}; {} ({}); init_versions {init_versions}, train.init_from {init_from:?} (started at {first_version})",
            state_name(last.state),
            last.error
        ),
        moved
            && resumed
            && last.state == JobState::Succeeded as i32
            && init_versions == serde_json::json!([first_version])
            && init_from.ends_with(&format!("/models/goemotions/versions/{first_version}")),
    )
}

/// Two trainer processes race SetAlias with the same expected version, many rounds, against a
/// store that makes conditional writes atomic (moto): exactly one wins each round.
pub async fn cross_process_alias_race(dir: &Path, rounds: usize) -> Outcome {
    let out = Outcome::new(
        "two trainer processes race SetAlias (moto S3)",
        "exactly one winner per round, the loser FAILED_PRECONDITION, alias at the winner",
    );
    let _serial = SERIAL.lock().await;
    let local = dir.join("local");
    let v1 = shared_registry(&local);
    copy_version(&local, "goemotions", &v1, "left");
    copy_version(&local, "goemotions", &v1, "right");
    let moto = MotoServer::start(dir, "bucket");
    for (k, v) in moto.env() {
        std::env::set_var(k, v);
    }
    let root = Store::open(&moto.uri("registry")).expect("store");
    upload_dir(&root, &local).await;
    let registry = Registry::open(&moto.uri("registry")).expect("registry");
    let mut a = spawn_trainer(&moto.uri("registry"), &moto.env(), dir, "left");
    let mut b = spawn_trainer(&moto.uri("registry"), &moto.env(), dir, "right");
    let (ca, cb) = (connect(&mut a).await, connect(&mut b).await);
    let mut bad_rounds = Vec::new();
    for round in 0..rounds {
        let _ = registry.set_alias("goemotions", "latest", &v1, None).await;
        let call = |mut c: Authed, version: &'static str| {
            let expected = v1.clone();
            async move {
                c.set_alias(SetAliasRequest {
                    model_name: "goemotions".into(),
                    alias: "latest".into(),
                    version: version.into(),
                    expected_version: Some(expected),
                })
                .await
                .map(|_| version)
                .map_err(|s| s.code())
            }
        };
        let (left, right) = tokio::join!(call(ca.clone(), "left"), call(cb.clone(), "right"));
        let winners: Vec<&str> = [&left, &right]
            .iter()
            .filter_map(|r| r.as_ref().ok().copied())
            .collect();
        let loser_ok = [&left, &right]
            .iter()
            .all(|r| r.is_ok() || *r == &Err(Code::FailedPrecondition));
        let now = registry
            .resolve_alias("goemotions", "latest")
            .await
            .unwrap_or_default();
        if winners.len() != 1 || !loser_ok || now != winners[0] {
            bad_rounds.push(format!("round {round}: {left:?} {right:?} alias {now}"));
        }
    }
    out.saw(
        format!(
            "{} of {rounds} rounds wrong {bad_rounds:?}",
            bad_rounds.len()
        ),
        bad_rounds.is_empty(),
    )
}

/// Every trainer case, for the chaos report.
pub async fn all(root: &Path) -> Vec<Outcome> {
    let mut outcomes = Vec::new();
    macro_rules! run {
        ($case:ident $(, $arg:expr)*) => {{
            let dir = root.join(stringify!($case));
            std::fs::create_dir_all(&dir).expect("case dir");
            outcomes.push($case(&dir $(, $arg)*).await);
        }};
    }
    run!(invalid_specs_refused);
    run!(cancel_after_training);
    run!(restart_finishes_or_undoes_publishing);
    run!(sigterm_and_kill_resume);
    run!(resumed_job_keeps_its_start);
    run!(cross_process_alias_race, 50);
    outcomes
}
