//! End-to-end: a real S3 server (s3s-fs), the trainer service and the predictor as processes on
//! 127.0.0.1. Jobs run over gRPC, publish to S3, and the predictor following `latest` switches.
use std::time::Duration;

use common::checkpoint;
use common::registry::Registry;
use common::store::Store;
use goemotions_tests::cases::trainer::{
    self as cases, connect, small_spec, spawn_trainer, watch_to_end,
};
use goemotions_tests::*;
use proto::v1::{
    stream_classify_response::Outcome, JobState, ListModelVersionsRequest, SetAliasRequest,
    StreamClassifyRequest, WatchJobRequest,
};

async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    cases::SERIAL.lock().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_over_grpc_publishes_to_s3_and_predictor_switches() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let s3 = S3Server::start(&dir.path().join("s3"), "bucket");
    s3.export_env();
    let mut trainer = spawn_trainer(&s3.uri("registry"), &s3.env(), dir.path(), "a");
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
async fn s3_outage_during_publish_never_leaves_an_alias_on_an_incomplete_version() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let mut s3 = S3Server::start(&dir.path().join("s3"), "bucket");
    s3.export_env();
    let mut trainer = spawn_trainer(&s3.uri("registry"), &s3.env(), dir.path(), "a");
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
    let mut injected = false;
    while let Some(e) = stream.message().await.unwrap() {
        let job = e.job.unwrap();
        if job.state == JobState::Publishing as i32 && !injected {
            s3.stop();
            injected = true;
        }
        last = Some(job);
    }
    let last = last.unwrap();
    // Watchers see every state, so PUBLISHING cannot be merged into the end: the outage happened.
    assert!(injected, "the job was never seen PUBLISHING: {last:?}");
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
    let _serial = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("local");
    let v1 = shared_registry(&local);
    for v in ["v2", "v3", "v4", "v5"] {
        copy_version(&local, "goemotions", &v1, v);
    }
    let s3 = S3Server::start(&dir.path().join("s3"), "bucket");
    s3.export_env();
    upload_dir(&Store::open(&s3.uri("registry")).unwrap(), &local).await;
    let mut trainer = spawn_trainer(&s3.uri("registry"), &s3.env(), dir.path(), "a");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_specs_refused() {
    let dir = tempfile::tempdir().unwrap();
    cases::invalid_specs_refused(dir.path()).await.assert();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_after_training() {
    let dir = tempfile::tempdir().unwrap();
    cases::cancel_after_training(dir.path()).await.assert();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_finishes_or_undoes_publishing() {
    let dir = tempfile::tempdir().unwrap();
    cases::restart_finishes_or_undoes_publishing(dir.path())
        .await
        .assert();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_and_kill_resume() {
    let dir = tempfile::tempdir().unwrap();
    cases::sigterm_and_kill_resume(dir.path()).await.assert();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumed_job_keeps_its_start() {
    let dir = tempfile::tempdir().unwrap();
    cases::resumed_job_keeps_its_start(dir.path())
        .await
        .assert();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_process_alias_race() {
    let dir = tempfile::tempdir().unwrap();
    cases::cross_process_alias_race(dir.path(), 20)
        .await
        .assert();
}
