//! The trainer binary's errors name the file and line of bad input.
use std::process::Command;

fn write_data(dir: &std::path::Path, train: &str) {
    let src = std::env::var("GOEMOTIONS_DATA_DIR")
        .unwrap_or_else(|_| format!("{}/../.cache/data/goemotions", env!("CARGO_MANIFEST_DIR")));
    for f in [
        "emotions.txt",
        "ekman_mapping.json",
        "sentiment_dict.json",
        "dev.tsv",
        "test.tsv",
    ] {
        std::fs::copy(format!("{src}/{f}"), dir.join(f)).unwrap();
    }
    std::fs::write(dir.join("train.tsv"), train).unwrap();
}

#[test]
fn malformed_training_data_is_reported_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    write_data(dir.path(), "fine text\t27\tid1\nanother\t3,99\tid2\n");
    let out = Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(["baseline", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("train.tsv:2:") && stderr.contains("label id 99"),
        "{stderr}"
    );
}
