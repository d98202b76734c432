//! The chaos report: runs every adversarial case against real processes on 127.0.0.1 (bounded in
//! count and time) and prints case → expected → observed as a markdown table. Exits non-zero if
//! any case failed. Usage: `chaos [predictor|trainer|all] [WORK_DIR]` (see scripts/chaos.sh).
use goemotions_tests::cases::{self, predictor, trainer};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let which = args.first().map(String::as_str).unwrap_or("all");
    let work = match args.get(1) {
        Some(dir) => std::path::PathBuf::from(dir),
        None => std::env::temp_dir().join(format!("goemotions-chaos-{}", std::process::id())),
    };
    std::fs::create_dir_all(&work).expect("work dir");
    let mut outcomes = Vec::new();
    if matches!(which, "predictor" | "all") {
        outcomes.extend(predictor::all(&work.join("predictor")).await);
    }
    if matches!(which, "trainer" | "all") {
        outcomes.extend(trainer::all(&work.join("trainer")).await);
    }
    print!("{}", cases::table(&outcomes));
    let failed = outcomes.iter().filter(|o| !o.pass).count();
    println!(
        "\n{} cases, {} passed, {failed} failed (logs under {})",
        outcomes.len(),
        outcomes.len() - failed,
        work.display()
    );
    std::process::exit(if failed == 0 { 0 } else { 1 });
}
