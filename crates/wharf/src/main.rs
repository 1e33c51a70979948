//! The `wharf` binary: command line, logging, wiring, signals and drain. The only
//! place that uses `anyhow`; every library crate has its own error type.

mod run;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// mimalloc: the request path allocates small, short-lived buffers (header maps,
/// body frames); measured faster than glibc malloc here (docs/benchmarks.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The config file used when `--config` is not given and it exists.
const DEFAULT_CONFIG: &str = "/etc/wharf/wharf.toml";

#[derive(Parser, Debug)]
#[command(
    name = "wharf",
    version,
    about = "A dynamic L7 reverse proxy for Docker Swarm"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(
        long,
        global = true,
        value_enum,
        env = "WHARF_LOG_FORMAT",
        default_value = "human"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the proxy.
    Run {
        /// Config file (default: /etc/wharf/wharf.toml if present, else built-in defaults).
        #[arg(long, env = "WHARF_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Validate a config file; exit 1 if it has errors.
    Check {
        #[arg(long, env = "WHARF_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Print the version.
    Version,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("WHARF_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// Loads the config: the named file, else the default file if present, else the
/// built-in defaults; `WHARF_*` overrides apply in every case.
fn load_config(path: Option<&Path>) -> Result<wharf_config::Config, wharf_config::ConfigError> {
    let vars = std::env::vars();
    match path {
        Some(p) => wharf_config::load(p, vars),
        None if Path::new(DEFAULT_CONFIG).exists() => {
            wharf_config::load(Path::new(DEFAULT_CONFIG), vars)
        }
        None => wharf_config::parse("", "built-in defaults", vars),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Version => {
            println!("wharf {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Check { config } => match load_config(config.as_deref()) {
            Ok(cfg) => {
                let files: Vec<_> = cfg
                    .tls
                    .iter()
                    .map(|c| (c.cert.clone(), c.key.clone()))
                    .collect();
                let bad = wharf_tls::check_files(&files);
                if !bad.is_empty() {
                    for e in &bad {
                        println!("tls.certificates: {e}");
                    }
                    return ExitCode::from(1);
                }
                for w in &cfg.warnings {
                    println!("warning: {w}");
                }
                println!(
                    "ok: {} entrypoint(s), {} route(s)",
                    cfg.entrypoints.len(),
                    cfg.routes.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                println!("{e}");
                ExitCode::from(1)
            }
        },
        Command::Run { config } => {
            init_logging(cli.log_format);
            let cfg = match load_config(config.as_deref()) {
                Ok(c) => c,
                Err(e) => {
                    // Validate before binding anything: a broken file never half-starts.
                    eprintln!("wharf: invalid configuration\n{e}");
                    return ExitCode::from(2);
                }
            };
            match run::run(cfg) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("wharf: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
    }
}
