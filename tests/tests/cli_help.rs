//! Every flag of every subcommand of both binaries appears in `--help` with an explanation, and
//! its environment variable (when it has one) is shown.
use std::process::Command;

use clap::CommandFactory;
use goemotions_tests::bin;

/// Checks `binary SUB --help` for each subcommand of `cli`; returns how many flags were checked.
fn assert_every_flag_documented(cli: clap::Command, binary: &str) -> usize {
    let mut checked = 0;
    for sub in cli.get_subcommands() {
        let name = sub.get_name();
        let out = Command::new(bin(binary))
            .args([name, "--help"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{binary} {name} --help failed");
        let help = String::from_utf8_lossy(&out.stdout);
        for arg in sub.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if long == "help" || long == "version" {
                continue;
            }
            assert!(
                help.contains(&format!("--{long}")),
                "{binary} {name}: --{long} missing from help"
            );
            assert!(
                arg.get_help()
                    .is_some_and(|h| !h.to_string().trim().is_empty()),
                "{binary} {name}: --{long} has no explanation"
            );
            if let Some(env) = arg.get_env() {
                let env = env.to_string_lossy();
                assert!(
                    help.contains(&format!("env: {env}")),
                    "{binary} {name}: {env} not shown for --{long}"
                );
            }
            checked += 1;
        }
    }
    checked
}

#[test]
fn trainer_help_documents_every_flag() {
    let checked = assert_every_flag_documented(trainer::cli::Cli::command(), "trainer");
    assert!(checked > 60, "only {checked} flags found");
}

#[test]
fn predictor_help_documents_every_flag() {
    let checked = assert_every_flag_documented(predictor::cli::Cli::command(), "predictor");
    assert!(checked > 30, "only {checked} flags found");
}
