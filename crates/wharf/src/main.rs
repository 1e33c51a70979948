//! The `wharf` binary: command line, logging, wiring, signals and drain. The only
//! place that uses `anyhow`; every library crate has its own error type.

mod acme;
mod providers;
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
    /// Validate a config file and the wharf/traefik labels of compose or stack
    /// files; exit 1 if anything is an error.
    Check {
        #[arg(long, env = "WHARF_CONFIG")]
        config: Option<PathBuf>,
        /// Compose or stack files whose services' labels to check (together: a host
        /// and path claimed by two services is an error).
        #[arg(long, value_name = "FILE", num_args = 1..)]
        compose: Vec<PathBuf>,
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

/// `wharf check`: the config (named, default or built-in), then compose files with
/// the config's label options. One line per problem; exit 1 if any is an error.
fn check(config: Option<&Path>, compose: &[PathBuf]) -> ExitCode {
    let mut failed = false;
    let mut opts = wharf_config::LabelOptions::default();
    match load_config(config) {
        Ok(cfg) => {
            let files: Vec<_> = cfg
                .tls
                .iter()
                .map(|c| (c.cert.clone(), c.key.clone()))
                .collect();
            let bad = wharf_tls::check_files(&files);
            for e in &bad {
                println!("error: tls.certificates: {e}");
            }
            failed |= !bad.is_empty();
            for w in &cfg.warnings {
                println!("warning: {w}");
            }
            if bad.is_empty() {
                println!(
                    "ok: {} entrypoint(s), {} route(s)",
                    cfg.entrypoints.len(),
                    cfg.routes.len()
                );
            }
            opts = wharf_config::LabelOptions {
                exposed_by_default: cfg.docker.exposed_by_default,
                traefik_labels: cfg.docker.traefik_labels,
            };
        }
        Err(e) => {
            for line in e.to_string().lines() {
                println!("error: {line}");
            }
            failed = true;
        }
    }
    if compose.is_empty() {
        return if failed {
            ExitCode::from(1)
        } else {
            ExitCode::SUCCESS
        };
    }
    let mut files = Vec::new();
    for path in compose {
        let origin = path.display().to_string();
        match std::fs::read_to_string(path) {
            Ok(text) => files.push((origin, text)),
            Err(e) => {
                println!("error: {origin}: cannot read: {e}");
                failed = true;
            }
        }
    }
    let report = wharf_config::compose::check(&files, &opts);
    for line in &report.lines {
        println!("{}: {}", line.severity, line.text);
    }
    if !report.has_errors() {
        println!(
            "ok: {} compose service(s), {} labelled route(s)",
            report.services, report.routes
        );
    }
    if failed || report.has_errors() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Version => {
            println!("wharf {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Check { config, compose } => check(config.as_deref(), &compose),
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
