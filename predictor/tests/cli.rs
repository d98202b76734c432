//! Every predictor flag is explained in `--help`, with its environment variable.
use std::process::Command;

#[test]
fn help_documents_every_flag() {
    use clap::CommandFactory;
    let cli = predictor::cli::Cli::command();
    let mut checked = 0;
    for sub in cli.get_subcommands() {
        let out = Command::new(env!("CARGO_BIN_EXE_predictor"))
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
                "{}: --{long} missing",
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
                    "{}: {env} not shown",
                    sub.get_name()
                );
            }
            checked += 1;
        }
    }
    assert!(checked > 30, "only {checked} flags found");
}
