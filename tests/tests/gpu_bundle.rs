//! The GPU bundle never rots: built from this checkout (debug binaries) and run end to end on
//! CPU with small limits — training, both throughput benchmarks, the predictor benchmark and a
//! two-run quality sweep (scripts/quality_sweep.py, two runs at a time) — its summary holds every
//! figure.
use std::process::Command;

use goemotions_tests::workspace_root;

#[test]
fn gpu_bundle_runs_end_to_end_on_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle");
    let root = workspace_root();
    let built = Command::new(root.join("scripts/gpu-bundle.sh"))
        .args(["--debug", "--no-build"])
        .arg(&bundle)
        .current_dir(&root)
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let libtorch = std::env::var("LIBTORCH").expect("LIBTORCH (source .cache/env.sh)");
    let results = dir.path().join("results");
    let run = Command::new(bundle.join("run.sh"))
        .arg(&results)
        .args(["--device", "cpu", "--small", "--sweep"])
        .env("TORCH_LIB", format!("{libtorch}/lib"))
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(results.join("summary.json")).unwrap()).unwrap();
    let training = &summary["training"];
    assert!(
        training["wall_seconds"].as_f64().unwrap() > 0.0,
        "{summary}"
    );
    assert!(training["test_macro_f1_per_label"].as_f64().is_some());
    assert_eq!(training["examples"]["train"], 200);
    let throughput = summary["train_throughput"].as_array().unwrap();
    for batching in ["bucketed", "plain"] {
        let row = throughput
            .iter()
            .find(|r| r["side"] == "rust" && r["batching"] == batching && r["variant"] == "fp32")
            .unwrap_or_else(|| panic!("no rust {batching} row: {summary}"));
        let median = |key: &str| row[key]["median"].as_f64().unwrap();
        assert!(median("samples_per_second") > 0.0);
        assert!(median("padded_tokens_per_second") >= median("real_tokens_per_second"));
    }
    let predictor = &summary["predictor"][0];
    assert_eq!(predictor["precision"], "fp32", "{summary}");
    assert!(
        predictor["texts_per_second_8_streams"]["median"]
            .as_f64()
            .unwrap()
            > 0.0,
        "{summary}"
    );
    assert!(predictor["idle_p99_ms"]["median"].as_f64().unwrap() > 0.0);
    let mut runs: Vec<&str> = summary["sweep"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["run"].as_str().unwrap_or_default())
        .collect();
    runs.sort();
    assert_eq!(runs, ["default-s1", "focal-s1"], "{summary}");
    let md = std::fs::read_to_string(results.join("summary.md")).unwrap();
    assert!(
        md.contains("## Training throughput")
            && md.contains("## Predictor")
            && md.contains("## Quality sweep"),
        "{md}"
    );
}
