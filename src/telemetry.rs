//! Logging: human-readable by default, JSON for log collectors. `RUST_LOG`
//! overrides the default filter.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::writer::BoxMakeWriter;

use crate::config::LogFormat;
use crate::store;

/// Herald at info; its libraries only when they warn.
const DEFAULT_FILTER: &str = "info,hyper=warn,reqwest=warn";

/// Sets up logging to standard output, or to standard error for a command
/// whose own output goes to standard output (`herald export`).
pub fn init(format: LogFormat, to_stderr: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(format!("{DEFAULT_FILTER},{}", store::embedded::LOG_FILTER))
    });
    let writer = if to_stderr {
        BoxMakeWriter::new(std::io::stderr)
    } else {
        BoxMakeWriter::new(std::io::stdout)
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let installed = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
    if let Err(error) = installed {
        eprintln!("logging was already set up: {error}");
    }
}
