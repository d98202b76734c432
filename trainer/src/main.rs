//! `trainer`: fine-tune, evaluate, run the baseline, benchmark, or serve training jobs over gRPC.
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::{Parser, Subcommand};
use common::checkpoint;
use common::registry::ModelRef;
use indicatif::{ProgressBar, ProgressStyle};
use trainer::cli::{BaseModelArgs, DataArgs, DeviceArgs, HyperArgs};
use trainer::job::{self, Dataset, JobSpec};
use trainer::report::{ModelResults, Report};
use trainer::train::{self, EpochRecord, Observer, Progress};

#[derive(Parser)]
#[command(
    name = "trainer",
    version,
    about = "Fine-tunes BERT encoders on GoEmotions and publishes checkpoints"
)]
struct Cli {
    /// Log format: text or json.
    #[arg(long, env = "LOG_FORMAT", default_value = "text", global = true)]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Fine-tune, tune thresholds, evaluate on test (+ baseline), write the report and publish.
    Train(TrainCmd),
    /// Evaluate a published checkpoint on a split.
    Eval(EvalCmd),
    /// Train and evaluate only the TF-IDF + logistic regression baseline.
    Baseline(BaselineCmd),
    /// Measure training throughput for a fixed number of steps (no evaluation, nothing published).
    Bench(BenchCmd),
    /// Run the gRPC Trainer service (jobs, registry versions and aliases).
    Serve(ServeCmd),
    /// Print a checkpoint's sigmoid scores for the given texts as JSON (for cross-checks).
    Score(ScoreCmd),
}

#[derive(clap::Args)]
struct ScoreCmd {
    /// Checkpoint URI: a version folder or an alias (…/models/NAME/aliases/A).
    #[arg(long, env = "GOEMOTIONS_CHECKPOINT")]
    checkpoint: String,
    #[command(flatten)]
    device: DeviceArgs,
    /// Texts to score.
    #[arg(required = true)]
    texts: Vec<String>,
}

#[derive(clap::Args)]
struct ServeCmd {
    /// gRPC listen address.
    #[arg(long, env = "TRAINER_LISTEN", default_value = "0.0.0.0:50052")]
    listen: std::net::SocketAddr,
    /// Registry root (file:///path, a path, or s3://bucket/prefix); job records and resume state live under jobs/.
    #[arg(long, env = "GOEMOTIONS_REGISTRY", default_value = "output/registry")]
    registry: String,
    /// Default base encoder for jobs that name none.
    #[arg(
        long,
        env = "GOEMOTIONS_BASE_MODEL",
        default_value = ".cache/models/all-MiniLM-L6-v2"
    )]
    base_model: String,
    /// Default data folder for jobs that name none.
    #[arg(
        long,
        env = "GOEMOTIONS_DATA_DIR",
        default_value = ".cache/data/goemotions"
    )]
    data_dir: PathBuf,
    #[command(flatten)]
    device: DeviceArgs,
    #[command(flatten)]
    hyper: HyperArgs,
    /// Save resumable training state every this many steps (and at every epoch end).
    #[arg(long, env = "TRAINER_STATE_EVERY_STEPS", default_value_t = 200)]
    state_every_steps: u64,
    /// Folder for each job's report (a sub-folder per job id).
    #[arg(long, env = "TRAINER_REPORT_ROOT")]
    report_root: Option<PathBuf>,
}

#[derive(clap::Args)]
struct TrainCmd {
    #[command(flatten)]
    data: DataArgs,
    #[command(flatten)]
    device: DeviceArgs,
    #[command(flatten)]
    hyper: HyperArgs,
    #[command(flatten)]
    base: BaseModelArgs,
    /// Registry root (file:///path, a path, or s3://bucket/prefix).
    #[arg(long, env = "GOEMOTIONS_REGISTRY", default_value = "output/registry")]
    registry: String,
    /// Model name in the registry.
    #[arg(long, env = "GOEMOTIONS_MODEL_NAME", default_value = "goemotions")]
    model_name: String,
    /// Alias to point at the new version; "-" for none.
    #[arg(long, env = "GOEMOTIONS_ALIAS", default_value = "latest")]
    alias: String,
    /// Also train and report the TF-IDF + logistic regression baseline.
    #[arg(long, env = "GOEMOTIONS_BASELINE", default_value_t = true, action = clap::ArgAction::Set)]
    baseline: bool,
    /// Folder for report.md, report.json and per_label_f1.svg.
    #[arg(long, env = "GOEMOTIONS_REPORT_DIR", default_value = "output/report")]
    report_dir: PathBuf,
}

#[derive(clap::Args)]
struct EvalCmd {
    /// Checkpoint URI: a version folder (…/models/NAME/versions/V) or an alias (…/models/NAME/aliases/A).
    #[arg(long, env = "GOEMOTIONS_CHECKPOINT")]
    checkpoint: String,
    /// Split to evaluate: train, dev or test.
    #[arg(long, default_value = "test", value_parser = ["train", "dev", "test"])]
    split: String,
    #[command(flatten)]
    data: DataArgs,
    #[command(flatten)]
    device: DeviceArgs,
    /// Inference batch size.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Write report.md / report.json / per_label_f1.svg here.
    #[arg(long)]
    report_dir: Option<PathBuf>,
}

#[derive(clap::Args)]
struct BaselineCmd {
    #[command(flatten)]
    data: DataArgs,
    /// Folder for the baseline's report.
    #[arg(long, default_value = "output/baseline")]
    report_dir: PathBuf,
}

#[derive(clap::Args)]
struct BenchCmd {
    #[command(flatten)]
    data: DataArgs,
    #[command(flatten)]
    device: DeviceArgs,
    #[command(flatten)]
    hyper: HyperArgs,
    #[command(flatten)]
    base: BaseModelArgs,
    /// Optimizer steps to time (after 3 warm-up steps).
    #[arg(long, default_value_t = 30)]
    steps: u64,
    /// Disable length bucketing (plain shuffled batches, dynamic padding) for comparison.
    #[arg(long)]
    no_bucketing: bool,
}

/// Progress bar over training steps.
struct BarObserver {
    bar: ProgressBar,
}

impl BarObserver {
    fn new() -> Self {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} epoch {prefix} [{bar:30}] {pos}/{len} steps {msg} ETA {eta}",
            )
            .expect("template")
            .progress_chars("=> "),
        );
        Self { bar }
    }
}

impl Observer for BarObserver {
    fn progress(&mut self, p: &Progress) {
        self.bar.set_length(p.total_steps);
        self.bar.set_position(p.step);
        self.bar.set_prefix(format!("{}/{}", p.epoch, p.epochs));
        self.bar.set_message(format!(
            "loss {:.4} lr {:.2e} {:.1} samples/s",
            p.loss, p.learning_rate, p.samples_per_second
        ));
    }
    fn epoch_end(&mut self, r: &EpochRecord) {
        self.bar.println(format!(
            "epoch {}: train loss {:.4}, dev macro-F1 {:.4} (tuned), dev micro-F1 {:.4} ({:.0}s)",
            r.epoch, r.train_loss, r.dev_macro_f1, r.dev_micro_f1, r.seconds
        ));
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    common::logging::init(&cli.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    match cli.command {
        Command::Train(cmd) => train_cmd(cmd, runtime.handle()),
        Command::Eval(cmd) => eval_cmd(cmd, runtime.handle()),
        Command::Baseline(cmd) => baseline_cmd(cmd),
        Command::Bench(cmd) => bench_cmd(cmd, runtime.handle()),
        Command::Serve(cmd) => runtime.block_on(serve_cmd(cmd)),
        Command::Score(cmd) => score_cmd(cmd, runtime.handle()),
    }
}

fn train_cmd(cmd: TrainCmd, handle: &tokio::runtime::Handle) -> anyhow::Result<()> {
    let device = cmd.device.init()?;
    let spec = JobSpec {
        base_model: cmd.base.base_model,
        data_dir: cmd.data.data_dir,
        registry: cmd.registry,
        model_name: cmd.model_name,
        alias: (cmd.alias != "-").then_some(cmd.alias),
        train: cmd.hyper.config(),
        train_limit: cmd.data.train_limit,
        dev_limit: cmd.data.dev_limit,
        test_limit: cmd.data.test_limit,
        run_baseline: cmd.baseline,
        report_dir: Some(cmd.report_dir),
        device,
        version: None,
    };
    let mut observer = BarObserver::new();
    let out = job::run(&spec, handle, &mut observer, None)?;
    observer.bar.finish_and_clear();
    let r = &out.report;
    let ft = &r.fine_tuned;
    println!(
        "published {}/{} — test macro-F1 {:.4} (per-label thresholds), micro-F1 {:.4} (global {:.2})",
        out.manifest.model_name,
        out.manifest.version,
        ft.at_per_label.macro_f1,
        ft.at_global.micro_f1,
        ft.global_threshold
    );
    if let Some(b) = &r.baseline {
        println!(
            "baseline — test micro-F1 {:.4} @0.5, macro-F1 {:.4} (per-label thresholds)",
            b.at_half.micro_f1, b.at_per_label.macro_f1
        );
    }
    Ok(())
}

fn eval_cmd(cmd: EvalCmd, handle: &tokio::runtime::Handle) -> anyhow::Result<()> {
    let device = cmd.device.init()?;
    let reference = ModelRef::parse(&cmd.checkpoint)?;
    let (store, _) = handle.block_on(reference.resolve())?;
    let ck = handle
        .block_on(checkpoint::read(&store))
        .with_context(|| format!("reading {}", store.uri()))?;
    let loaded = ck.load_model(device)?;
    let limits = match cmd.split.as_str() {
        "train" => [cmd.data.train_limit, Some(1), Some(1)],
        "dev" => [Some(1), cmd.data.dev_limit, Some(1)],
        _ => [Some(1), Some(1), cmd.data.test_limit],
    };
    let data = Dataset::load(&cmd.data.data_dir, limits, 42)?;
    let examples = match cmd.split.as_str() {
        "train" => &data.train,
        "dev" => &data.dev,
        _ => &data.test,
    };
    let texts: Vec<&str> = examples.iter().map(|e| e.text.as_str()).collect();
    let started = Instant::now();
    let encoded = loaded.tokenizer.encode_all(&texts)?;
    let scores = train::score(&loaded.model, &loaded.tokenizer, &encoded, cmd.batch_size);
    let rate = examples.len() as f64 / started.elapsed().as_secs_f64();
    let targets = train::targets(examples, data.labels.len());
    let m = &loaded.manifest;
    let results = ModelResults::evaluate(
        "checkpoint",
        &scores,
        &targets,
        &data.labels,
        &m.thresholds,
        m.global_threshold,
        0.0,
        0.0,
        rate,
    );
    println!(
        "{} on {} ({} examples): macro-F1 {:.4} / micro-F1 {:.4} (per-label thresholds), micro-F1 {:.4} (global {:.2}), micro-F1 {:.4} @0.5; {:.1} texts/s",
        m.version,
        cmd.split,
        examples.len(),
        results.at_per_label.macro_f1,
        results.at_per_label.micro_f1,
        results.at_global.micro_f1,
        m.global_threshold,
        results.at_half.micro_f1,
        rate
    );
    if let Some(dir) = cmd.report_dir {
        let report = Report {
            created_at: chrono::Utc::now().to_rfc3339(),
            split: cmd.split,
            examples: examples.len(),
            model_version: Some(m.version.clone()),
            device: common::device::describe(device),
            hyperparameters: m.hyperparameters.clone(),
            history: vec![],
            best_epoch: None,
            fine_tuned: results,
            baseline: None,
        };
        report.write(&dir)?;
    }
    Ok(())
}

fn baseline_cmd(cmd: BaselineCmd) -> anyhow::Result<()> {
    let data = Dataset::load(
        &cmd.data.data_dir,
        [
            cmd.data.train_limit,
            cmd.data.dev_limit,
            cmd.data.test_limit,
        ],
        42,
    )?;
    let targets = train::targets(&data.test, data.labels.len());
    let results = job::run_baseline(&data, &targets);
    println!(
        "baseline on test ({} examples): micro-F1 {:.4} @0.5, macro-F1 {:.4} @0.5, micro-F1 {:.4} @global {:.2}, macro-F1 {:.4} per-label; fit {:.1}s",
        data.test.len(),
        results.at_half.micro_f1,
        results.at_half.macro_f1,
        results.at_global.micro_f1,
        results.global_threshold,
        results.at_per_label.macro_f1,
        results.train_seconds
    );
    let report = Report {
        created_at: chrono::Utc::now().to_rfc3339(),
        split: "test".into(),
        examples: data.test.len(),
        model_version: None,
        device: "cpu".into(),
        hyperparameters: serde_json::json!({"max_features": 5000, "C": 1.0}),
        history: vec![],
        best_epoch: None,
        fine_tuned: results,
        baseline: None,
    };
    report.write(&cmd.report_dir)?;
    Ok(())
}

fn bench_cmd(cmd: BenchCmd, handle: &tokio::runtime::Handle) -> anyhow::Result<()> {
    let device = cmd.device.init()?;
    let data = Dataset::load(
        &cmd.data.data_dir,
        [cmd.data.train_limit, Some(64), Some(1)],
        42,
    )?;
    let base = handle.block_on(checkpoint::read_base(&common::store::Store::open(
        &cmd.base.base_model,
    )?))?;
    let mut cfg = cmd.hyper.config();
    let report =
        trainer::train::throughput(&base, &data, &mut cfg, device, cmd.steps, !cmd.no_bucketing)?;
    println!(
        "rust-tch train: {:.1} samples/s over {} steps (batch {}, max-len {}, threads {}, bucketing {}, device {})",
        report.samples_per_second,
        cmd.steps,
        cfg.batch_size,
        cfg.max_length,
        tch::get_num_threads(),
        !cmd.no_bucketing,
        common::device::describe(device)
    );
    Ok(())
}

async fn serve_cmd(cmd: ServeCmd) -> anyhow::Result<()> {
    use proto::v1::trainer_server::TrainerServer;
    use tonic_health::ServingStatus;
    let device = cmd.device.init()?;
    let service = trainer::service::TrainerService::new(trainer::service::ServiceConfig {
        registry: cmd.registry.clone(),
        base_model: cmd.base_model,
        data_dir: cmd.data_dir,
        device,
        defaults: cmd.hyper.config(),
        state_every_steps: cmd.state_every_steps,
        report_root: cmd.report_root,
    })?;
    service
        .recover()
        .await
        .map_err(|s| anyhow::anyhow!("reading job records: {}", s.message()))?;
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_service_status("", ServingStatus::Serving).await;
    health
        .set_service_status("goemotions.v1.Trainer", ServingStatus::Serving)
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    tracing::info!(addr = %cmd.listen, registry = %cmd.registry, device = common::device::describe(device), "trainer service listening");
    tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(reflection)
        .add_service(TrainerServer::new(service))
        .serve_with_shutdown(cmd.listen, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

fn score_cmd(cmd: ScoreCmd, handle: &tokio::runtime::Handle) -> anyhow::Result<()> {
    let device = cmd.device.init()?;
    let (store, _) = handle.block_on(ModelRef::parse(&cmd.checkpoint)?.resolve())?;
    let ck = handle
        .block_on(checkpoint::read(&store))
        .with_context(|| format!("reading {}", store.uri()))?;
    let loaded = ck.load_model(device)?;
    let encoded = loaded.tokenizer.encode_all(&cmd.texts)?;
    let l = loaded.manifest.labels.len();
    let scores = train::score(&loaded.model, &loaded.tokenizer, &encoded, 32);
    let rows: Vec<&[f32]> = scores.chunks(l).collect();
    let out = serde_json::json!({"version": loaded.manifest.version, "labels": loaded.manifest.labels, "scores": rows});
    println!("{out}");
    Ok(())
}
