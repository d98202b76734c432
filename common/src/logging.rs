//! Structured logging set-up shared by the binaries: `RUST_LOG` filter (default info), text or JSON.

/// Logs to stderr; `format` is "json" for one JSON object per line, anything else for text
/// (coloured only when stderr is a terminal, so log files and collectors get plain lines).
pub fn init(format: &str) {
    use std::io::IsTerminal;
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}
