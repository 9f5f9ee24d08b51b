//! Logging setup shared by every binary: JSON lines on Lambda, readable text locally.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber once; later calls are no-ops.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let on_lambda = std::env::var_os("AWS_LAMBDA_FUNCTION_NAME").is_some();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    let _ = if on_lambda {
        builder.json().without_time().try_init()
    } else {
        // Colours only on a terminal: a log file or a pipe gets plain text.
        use std::io::IsTerminal;
        builder
            .with_ansi(std::io::stdout().is_terminal())
            .try_init()
    };
}
