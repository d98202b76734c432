//! `trainer`: fine-tune, evaluate, run the baseline, benchmark, or serve training jobs over gRPC.
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use common::data::Dataset;
use trainer::cli::{Cli, Command};
use trainer::{bench, evaluate, job, progress, server, service, validate};

fn main() -> anyhow::Result<()> {
    let malloc = trainer::malloc::keep_freed_buffers_for_reuse();
    let cli = Cli::parse();
    common::logging::init(&cli.log_format);
    if !matches!(cli.command, Command::Health(_) | Command::Score(_)) {
        malloc.log();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let handle = runtime.handle();
    match cli.command {
        Command::Train(cmd) => {
            let device = cmd.device.init()?;
            let mut spec = cmd.job_spec(device);
            handle
                .block_on(async {
                    validate::pin_checkpoints(&mut spec.train).await?;
                    validate::check_job(&spec).await
                })
                .context("invalid training job")?;
            let mut observer = progress::ConsoleObserver::new(cmd.progress.interval());
            let out = job::run(&spec, handle, &mut observer, None)?;
            observer.finish();
            let ft = &out.report.fine_tuned;
            println!(
                "published {}/{} — test macro-F1 {:.4} (per-label thresholds), micro-F1 {:.4} (global {:.2})",
                out.manifest.model_name,
                out.manifest.version,
                ft.at_per_label.macro_f1,
                ft.at_global.micro_f1,
                ft.global_threshold
            );
            if let Some(b) = &out.report.baseline {
                println!(
                    "baseline — test micro-F1 {:.4} @0.5, macro-F1 {:.4} (per-label thresholds)",
                    b.at_half.micro_f1, b.at_per_label.macro_f1
                );
            }
        }
        Command::Eval(cmd) => {
            let device = cmd.device.init()?;
            let loaded = handle.block_on(evaluate::load_checkpoint(
                &cmd.checkpoint,
                device,
                cmd.scoring.precision,
            ))?;
            let report = evaluate::checkpoint_report(
                &loaded,
                &cmd.data.data_dir,
                cmd.split,
                cmd.limit(),
                cmd.scoring.batch_size,
                device,
            )?;
            let r = &report.fine_tuned;
            println!(
                "{} on {} ({} examples, {}): macro-F1 {:.4} / micro-F1 {:.4} (per-label thresholds), micro-F1 {:.4} (global {:.2}), micro-F1 {:.4} @0.5; {:.1} texts/s",
                loaded.manifest.version,
                report.split,
                report.examples,
                report.precision,
                r.at_per_label.macro_f1,
                r.at_per_label.micro_f1,
                r.at_global.micro_f1,
                r.global_threshold,
                r.at_half.micro_f1,
                r.inference_texts_per_second
            );
            if let Some(dir) = &cmd.report_dir {
                report
                    .write(dir)
                    .with_context(|| format!("writing {}", dir.display()))?;
            }
        }
        Command::Ensemble(cmd) => {
            let device = cmd.device.init()?;
            let result = evaluate::ensemble(
                handle,
                &cmd.checkpoints,
                &cmd.data.data_dir,
                cmd.data.limits(),
                cmd.test,
                device,
                cmd.scoring.precision,
                cmd.scoring.batch_size,
            )?;
            println!(
                "ensemble of {} — dev macro-F1 {:.4} (per-label thresholds), micro-F1 {:.4} (global)",
                result.versions.join(" + "),
                result.dev_macro_f1,
                result.dev_micro_f1_global
            );
            if let Some(t) = &result.test {
                println!(
                    "test: macro-F1 {:.4} / micro-F1 {:.4} (per-label thresholds), micro-F1 {:.4} (global {:.2})",
                    t.macro_f1, t.micro_f1_per_label, t.micro_f1_global, t.global_threshold
                );
            }
            if let Some(path) = &cmd.json {
                std::fs::write(path, serde_json::to_vec_pretty(&result)?)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
        }
        Command::Baseline(cmd) => {
            let data = Dataset::load(&cmd.data.data_dir, cmd.data.limits(), 42)?;
            let report = evaluate::baseline_report(&data);
            let r = &report.fine_tuned;
            println!(
                "baseline on test ({} examples): micro-F1 {:.4} @0.5, macro-F1 {:.4} @0.5, micro-F1 {:.4} @global {:.2}, macro-F1 {:.4} per-label; fit {:.1}s",
                report.examples,
                r.at_half.micro_f1,
                r.at_half.macro_f1,
                r.at_global.micro_f1,
                r.global_threshold,
                r.at_per_label.macro_f1,
                r.train_seconds
            );
            report
                .write(&cmd.report_dir)
                .with_context(|| format!("writing {}", cmd.report_dir.display()))?;
        }
        Command::Bench(cmd) => {
            let device = cmd.device.init()?;
            let mut limits = cmd.data.limits();
            limits.dev = Some(limits.dev.unwrap_or(64));
            limits.test = Some(limits.test.unwrap_or(1));
            let data = Dataset::load(&cmd.data.data_dir, limits, 42)?;
            let base = handle.block_on(common::checkpoint::read_base(
                &common::store::Store::open(&cmd.base.base_model)?,
            ))?;
            let cfg = cmd.hyper.config();
            let opts = bench::BenchOptions {
                steps: cmd.steps,
                repeats: cmd.repeats,
                bucketing: !cmd.no_bucketing,
                layout: cmd.optimizer_layout,
                attention: cmd.attention,
                pad_multiple: cmd.pad_to_multiple_of as usize,
            };
            let r = bench::throughput(&base, &data, &cfg, device, opts)?;
            if let Some(path) = &cmd.write_batches {
                std::fs::write(path, serde_json::to_vec(&r.batches)?)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            for w in &r.windows {
                eprintln!("time per phase: {}", w.profile.shares(w.seconds));
                println!(
                    "rust-tch train: {:.1} samples/s, {:.0} real tokens/s, {:.0} padded tokens/s over {} steps (batch {}, max-len {}, threads {}, bucketing {}, precision {}, device {})",
                    w.samples_per_second,
                    w.real_tokens_per_second,
                    w.padded_tokens_per_second,
                    cmd.steps,
                    cfg.batch_size,
                    cfg.max_length,
                    tch::get_num_threads(),
                    !cmd.no_bucketing,
                    r.precision,
                    common::device::describe(device)
                );
            }
        }
        Command::Serve(cmd) => {
            let device = cmd.device.init()?;
            let access = common::grpc::Access::from_args(&cmd.access, cmd.listen)?;
            let grace = Duration::from_secs_f64(cmd.shutdown_grace_secs.max(0.0));
            runtime.block_on(async {
                let service = service::TrainerService::new(cmd.service_config(device))?;
                server::serve(service, cmd.listen, access, grace).await
            })?;
        }
        Command::Score(cmd) => {
            let device = cmd.device.init()?;
            let loaded = handle.block_on(evaluate::load_checkpoint(
                &cmd.checkpoint,
                device,
                cmd.precision,
            ))?;
            let scores = evaluate::score_texts(&loaded, &cmd.texts)?;
            println!("{}", serde_json::to_string(&scores)?);
        }
        Command::Health(args) => {
            handle.block_on(common::grpc::check_health(&args, "127.0.0.1:50052"))?;
            println!("SERVING");
        }
    }
    Ok(())
}
