//! End-to-end: a real S3 server (s3s-fs), the trainer service and the predictor as processes on
//! 127.0.0.1. Jobs run over gRPC, publish to S3, and the predictor following `latest` switches.
use std::process::Command;
use std::time::{Duration, Instant};

use common::checkpoint;
use common::registry::Registry;
use common::store::Store;
use goemotions_tests::*;
use proto::v1::trainer_client::TrainerClient;
use proto::v1::{
    stream_classify_response::Outcome, CancelJobRequest, Hyperparameters, Job, JobState,
    ListModelVersionsRequest, SetAliasRequest, StreamClassifyRequest, TrainingSpec,
    WatchJobRequest,
};
use tonic::transport::Channel;

/// These tests train models and point AWS_* at their own S3 server: run them one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct TrainerProc {
    proc: Proc,
    addr: String,
}

fn spawn_trainer(s3: &S3Server, dir: &std::path::Path, tag: &str) -> TrainerProc {
    let port = free_port();
    let mut cmd = Command::new(bin("trainer"));
    cmd.args([
        "serve",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--registry",
        &s3.uri("registry"),
    ])
    .args([
        "--device",
        "cpu",
        "--threads",
        "2",
        "--state-every-steps",
        "4",
    ])
    .arg("--base-model")
    .arg(base_model())
    .arg("--data-dir")
    .arg(data_dir())
    .env("RUST_LOG", "info");
    for (k, v) in s3.env() {
        cmd.env(k, v);
    }
    TrainerProc {
        proc: Proc::spawn(cmd, dir.join(format!("trainer-{tag}.log"))),
        addr: format!("http://127.0.0.1:{port}"),
    }
}

async fn connect(t: &mut TrainerProc) -> TrainerClient<Channel> {
    let start = Instant::now();
    loop {
        if let Ok(c) = TrainerClient::connect(t.addr.clone()).await {
            return c;
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

fn small_spec(train_limit: u32, epochs: u32) -> TrainingSpec {
    TrainingSpec {
        hyperparameters: Some(Hyperparameters {
            epochs: Some(epochs),
            train_limit: Some(train_limit),
            dev_limit: Some(100),
            batch_size: Some(16),
            learning_rate: Some(2e-4),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Polls a job until it reports at least `step` training steps.
async fn wait_for_step(c: &mut TrainerClient<Channel>, id: &str, step: u64, timeout: Duration) {
    let start = Instant::now();
    loop {
        let job = c
            .get_job(proto::v1::GetJobRequest { job_id: id.into() })
            .await
            .unwrap()
            .into_inner();
        if job.progress.map(|p| p.step >= step).unwrap_or(false) {
            return;
        }
        assert!(
            start.elapsed() < timeout,
            "job {id} never reached step {step}: {job:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Watches a job to its end; returns every event's job snapshot.
async fn watch_to_end(c: &mut TrainerClient<Channel>, id: &str, timeout: Duration) -> Vec<Job> {
    let mut stream = c
        .watch_job(WatchJobRequest { job_id: id.into() })
        .await
        .unwrap()
        .into_inner();
    let mut events = Vec::new();
    let run = async {
        while let Some(e) = stream.message().await.unwrap() {
            events.push(e.job.unwrap());
        }
    };
    tokio::time::timeout(timeout, run)
        .await
        .expect("job did not finish in time");
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_over_grpc_publishes_to_s3_and_predictor_switches() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let s3 = S3Server::start(&dir.path().join("s3"), "bucket");
    s3.export_env();
    let mut trainer = spawn_trainer(&s3, dir.path(), "a");
    let mut c = connect(&mut trainer).await;
    // The predictor follows an alias that does not exist yet.
    let (mut predictor, paddr, _) = spawn_predictor(
        &s3.uri("registry/models/goemotions/aliases/latest"),
        &["--poll-interval-secs", "0.3"],
        &s3.env(),
        dir.path().join("predictor.log"),
    );

    let id = c
        .start_training(small_spec(200, 1))
        .await
        .unwrap()
        .into_inner()
        .job_id;
    // A second job while one runs is refused.
    let second = c.start_training(small_spec(200, 1)).await.unwrap_err();
    assert_eq!(second.code(), tonic::Code::FailedPrecondition);
    // Two watchers at once; the late one first gets the current state.
    let mut c2 = c.clone();
    let id2 = id.clone();
    let other =
        tokio::spawn(async move { watch_to_end(&mut c2, &id2, Duration::from_secs(300)).await });
    let events = watch_to_end(&mut c, &id, Duration::from_secs(300)).await;
    let last = events.last().unwrap();
    assert_eq!(
        last.state,
        JobState::Succeeded as i32,
        "{last:?}\n{}",
        trainer.proc.log_text()
    );
    assert!(
        events
            .iter()
            .any(|e| e.progress.map(|p| p.step > 0).unwrap_or(false)),
        "progress was streamed"
    );
    assert_eq!(last.epochs.len(), 1);
    assert!(last.device.starts_with("cpu"));
    let version = last.model_version.clone();
    assert_eq!(other.await.unwrap().last().unwrap().model_version, version);

    // The version is in S3 with a valid manifest, and `latest` points at it.
    let registry = Registry::open(&s3.uri("registry")).unwrap();
    let ck = checkpoint::read(&registry.version_store("goemotions", &version))
        .await
        .unwrap();
    assert_eq!(ck.manifest.labels.len(), 28);
    assert_eq!(
        registry
            .resolve_alias("goemotions", "latest")
            .await
            .unwrap(),
        version
    );
    let versions = c
        .list_model_versions(ListModelVersionsRequest {
            model_name: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(versions.versions.len(), 1);
    assert_eq!(versions.versions[0].aliases, vec!["latest"]);

    // The predictor picks it up and classifies over a stream.
    wait_serving(&mut predictor, &paddr, Duration::from_secs(60)).await;
    let mut p = client(&paddr).await;
    let items = (0..5).map(|i| StreamClassifyRequest {
        id: i.to_string(),
        text: "thank you so much!".into(),
        options: None,
    });
    let mut s = p
        .classify_stream(tokio_stream::iter(items))
        .await
        .unwrap()
        .into_inner();
    let mut n = 0;
    while let Some(m) = s.message().await.unwrap() {
        assert!(matches!(m.outcome, Some(Outcome::Result(_))));
        assert_eq!(m.model_version, version);
        n += 1;
    }
    assert_eq!(n, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_trainer_resumes_its_job_and_cancel_publishes_nothing() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let s3 = S3Server::start(&dir.path().join("s3"), "bucket");
    s3.export_env();
    let mut trainer = spawn_trainer(&s3, dir.path(), "first");
    let mut c = connect(&mut trainer).await;
    let id = c
        .start_training(small_spec(320, 2))
        .await
        .unwrap()
        .into_inner()
        .job_id;
    // Wait until a resumable state exists past step 8, then kill -9.
    let state = Store::open(&s3.uri(&format!("registry/jobs/{id}"))).unwrap();
    wait_for_step(&mut c, &id, 8, Duration::from_secs(240)).await;
    let start = Instant::now();
    while !state.exists("state.json").await.unwrap() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no state saved:\n{}",
            trainer.proc.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    trainer.proc.signal(libc::SIGKILL);
    trainer
        .proc
        .wait_timeout(Duration::from_secs(10))
        .expect("killed");

    let mut restarted = spawn_trainer(&s3, dir.path(), "second");
    let mut c = connect(&mut restarted).await;
    let events = watch_to_end(&mut c, &id, Duration::from_secs(400)).await;
    let last = events.last().unwrap();
    assert_eq!(
        last.state,
        JobState::Succeeded as i32,
        "{last:?}\n{}",
        restarted.proc.log_text()
    );
    assert_eq!(
        last.epochs.len(),
        2,
        "both epochs recorded across the restart"
    );
    assert!(
        restarted.proc.log_text().contains("resuming"),
        "{}",
        restarted.proc.log_text()
    );
    let registry = Registry::open(&s3.uri("registry")).unwrap();
    assert_eq!(
        registry
            .resolve_alias("goemotions", "latest")
            .await
            .unwrap(),
        last.model_version
    );

    // Cancel: stops at the next step, publishes nothing, the alias stays.
    let id = c
        .start_training(TrainingSpec {
            model_name: "cancelled".into(),
            ..small_spec(320, 2)
        })
        .await
        .unwrap()
        .into_inner()
        .job_id;
    wait_for_step(&mut c, &id, 2, Duration::from_secs(120)).await;
    c.cancel_job(CancelJobRequest { job_id: id.clone() })
        .await
        .unwrap();
    let events = watch_to_end(&mut c, &id, Duration::from_secs(120)).await;
    assert_eq!(events.last().unwrap().state, JobState::Cancelled as i32);
    assert!(registry
        .list_versions("cancelled")
        .await
        .unwrap()
        .is_empty());
    assert!(registry
        .get_alias("cancelled", "latest")
        .await
        .unwrap()
        .is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_outage_during_publish_never_leaves_an_alias_on_an_incomplete_version() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let mut s3 = S3Server::start(&dir.path().join("s3"), "bucket");
    s3.export_env();
    let mut trainer = spawn_trainer(&s3, dir.path(), "a");
    let mut c = connect(&mut trainer).await;
    let id = c
        .start_training(small_spec(120, 1))
        .await
        .unwrap()
        .into_inner()
        .job_id;
    let mut stream = c
        .watch_job(WatchJobRequest { job_id: id.clone() })
        .await
        .unwrap()
        .into_inner();
    let mut last = None;
    while let Some(e) = stream.message().await.unwrap() {
        let job = e.job.unwrap();
        if job.state == JobState::Publishing as i32 && s3.proc.child.try_wait().unwrap().is_none() {
            s3.stop();
        }
        last = Some(job);
    }
    let last = last.unwrap();
    eprintln!(
        "job under S3 outage ended {:?}: {}",
        JobState::try_from(last.state),
        last.error
    );
    s3.restart();
    let registry = Registry::open(&s3.uri("registry")).unwrap();
    if last.state == JobState::Failed as i32 {
        // A clear failure naming the store.
        assert!(
            last.error.contains("publishing failed") || last.error.contains("s3://"),
            "{}",
            last.error
        );
    } else {
        assert_eq!(last.state, JobState::Succeeded as i32, "{last:?}");
    }
    // Whatever happened, the alias points only at a complete, verifiable version (or nowhere).
    if let Some(alias) = registry.get_alias("goemotions", "latest").await.unwrap() {
        checkpoint::read(&registry.version_store("goemotions", &alias.version))
            .await
            .unwrap();
    }
    for m in registry.list_versions("goemotions").await.unwrap() {
        checkpoint::read(&registry.version_store("goemotions", &m.version))
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_alias_updates_exactly_one_wins() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("local");
    let v1 = shared_registry(&local);
    for v in ["v2", "v3", "v4", "v5"] {
        copy_version(&local, "goemotions", &v1, v);
    }
    let s3 = S3Server::start(&dir.path().join("s3"), "bucket");
    s3.export_env();
    upload_dir(&Store::open(&s3.uri("registry")).unwrap(), &local).await;
    let mut trainer = spawn_trainer(&s3, dir.path(), "a");
    let c = connect(&mut trainer).await;
    // Everyone saw `latest` at v1 and races to move it.
    let calls = ["v2", "v3", "v4", "v5"].map(|v| {
        let mut c = c.clone();
        let v1 = v1.clone();
        tokio::spawn(async move {
            c.set_alias(SetAliasRequest {
                model_name: "goemotions".into(),
                alias: "latest".into(),
                version: v.into(),
                expected_version: Some(v1),
            })
            .await
            .map(|_| v)
        })
    });
    let results: Vec<_> = futures::future::join_all(calls)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    let winners: Vec<&str> = results
        .iter()
        .filter_map(|r| r.as_ref().ok().copied())
        .collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    for r in &results {
        if let Err(s) = r {
            assert_eq!(s.code(), tonic::Code::FailedPrecondition, "{s:?}");
            assert!(s.message().contains("nothing changed"), "{}", s.message());
        }
    }
    let registry = Registry::open(&s3.uri("registry")).unwrap();
    assert_eq!(
        registry
            .resolve_alias("goemotions", "latest")
            .await
            .unwrap(),
        winners[0]
    );
    // The S3 server itself enforces the condition: a write with a stale ETag is refused.
    let aliases = Store::open(&s3.uri("registry/models/goemotions/aliases")).unwrap();
    let (_, seen) = aliases.get_versioned("latest.json").await.unwrap();
    aliases
        .put(
            "latest.json",
            bytes::Bytes::from_static(b"{\"version\": \"v2\", \"updated_at\": \"x\"}"),
        )
        .await
        .unwrap();
    let stale = aliases
        .put_if(
            "latest.json",
            bytes::Bytes::from_static(b"{}"),
            common::store::Expect::Version(seen),
        )
        .await;
    assert!(
        matches!(stale, Err(common::store::StoreError::Conflict { .. })),
        "{stale:?}"
    );
    let absent = aliases
        .put_if(
            "latest.json",
            bytes::Bytes::from_static(b"{}"),
            common::store::Expect::Absent,
        )
        .await;
    assert!(
        matches!(absent, Err(common::store::StoreError::Conflict { .. })),
        "{absent:?}"
    );
    // Unknown versions are refused.
    let mut c = c.clone();
    let err = c
        .set_alias(SetAliasRequest {
            model_name: "goemotions".into(),
            alias: "latest".into(),
            version: "nope".into(),
            expected_version: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
}
