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

/// Every flag of every subcommand appears in `--help` with an explanation, and its environment
/// variable (when it has one) is shown.
#[test]
fn help_documents_every_flag() {
    use clap::CommandFactory;
    let cli = trainer::cli::Cli::command();
    let mut checked = 0;
    for sub in cli.get_subcommands() {
        let out = Command::new(env!("CARGO_BIN_EXE_trainer"))
            .args([sub.get_name(), "--help"])
            .output()
            .unwrap();
        assert!(out.status.success());
        let help = String::from_utf8_lossy(&out.stdout);
        for arg in sub.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if long == "help" || long == "version" {
                continue;
            }
            assert!(
                help.contains(&format!("--{long}")),
                "{}: --{long} missing from help",
                sub.get_name()
            );
            assert!(
                arg.get_help()
                    .is_some_and(|h| !h.to_string().trim().is_empty()),
                "{}: --{long} has no explanation",
                sub.get_name()
            );
            if let Some(env) = arg.get_env() {
                let env = env.to_string_lossy();
                assert!(
                    help.contains(&format!("env: {env}")),
                    "{}: {env} not shown for --{long}",
                    sub.get_name()
                );
            }
            checked += 1;
        }
    }
    assert!(checked > 60, "only {checked} flags found");
}
