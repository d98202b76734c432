//! `predictor`: serve a GoEmotions checkpoint over gRPC, or call a running predictor.
use anyhow::Context;
use clap::Parser;
use common::registry::ModelRef;
use predictor::cli::{Cli, Command};
use predictor::{client, server};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    common::logging::init(&cli.log_format);
    // The inference threads do the heavy work; on small pods more runtime threads only compete
    // with them for cores.
    let runtime_threads = match &cli.command {
        Command::Serve(args) => args.runtime_threads.max(1),
        _ => 2,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(runtime_threads)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => {
                let threads = common::device::init_threads(args.threads);
                if args.device != "cpu" {
                    common::device::allow_tf32();
                }
                let device = common::device::select(&args.device)?;
                let model = ModelRef::parse(&args.model)
                    .with_context(|| format!("--model {}", args.model))?;
                tracing::info!(device = common::device::describe(device), model = %args.model, "starting predictor");
                server::serve(model, args.options(device, threads)?).await?;
            }
            Command::Classify(args) => client::classify(args).await?,
            Command::Explain(args) => client::explain(args).await?,
            Command::Info(args) => client::info(args).await?,
            Command::Bench(args) => client::bench(args).await?,
            Command::Batch(args) => {
                let summary = predictor::batch::run(*args).await?;
                println!("{summary}");
            }
            Command::Health(args) => {
                common::grpc::check_health(&args, "127.0.0.1:50051").await?;
                println!("SERVING");
            }
        }
        Ok(())
    })
}
