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

/// What `wharf healthcheck` asks by default: the admin listener of deploy/wharf.toml.
const HEALTHCHECK_URL: &str = "http://127.0.0.1:8082/ping";

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
    /// One HTTP GET of the admin listener (for the image's HEALTHCHECK, which has
    /// no shell): exit 0 on 200, 1 on anything else or after 2 seconds.
    Healthcheck {
        /// An http:// URL; `/ping` needs no token.
        #[arg(long, default_value = HEALTHCHECK_URL)]
        url: String,
        /// Bearer token sent with the request (`[admin] token`), for paths other
        /// than `/ping`.
        #[arg(long, env = "WHARF_ADMIN_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Print the response body on stdout, e.g. `/metrics` of an admin listener
        /// bound to the container's loopback.
        #[arg(long)]
        body: bool,
    },
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
    let mut rules = wharf_config::compose::HostRules::default();
    match load_config(config) {
        Ok(cfg) => {
            let files: Vec<_> = cfg
                .tls
                .iter()
                .map(|c| (c.cert.clone(), c.key.clone()))
                .collect();
            let mut bad: Vec<String> = wharf_tls::check_files(&files)
                .iter()
                .map(|e| format!("tls.certificates: {e}"))
                .collect();
            // TLS to backends: the files must not only open but parse and match,
            // as `wharf run` needs them (the same builder it uses).
            for r in cfg
                .routes
                .iter()
                .filter(|r| r.scheme == wharf_table::Scheme::Https)
            {
                let t = &r.backend_tls;
                let spec = wharf_tls::BackendTlsSpec {
                    ca: t.ca.clone(),
                    insecure: t.insecure,
                    client_cert: t.client_cert.clone(),
                    client_key: t.client_key.clone(),
                };
                if let Err(e) = wharf_tls::backend_client_config(&spec) {
                    bad.push(format!("route `{}`: {e}", r.name));
                }
            }
            for e in &bad {
                println!("error: {e}");
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
                traefik_rules_enable: cfg.docker.traefik_rules_enable,
                entrypoints: cfg
                    .entrypoints
                    .iter()
                    .map(|e| (e.name.clone(), e.tls))
                    .collect(),
            };
            rules = wharf_config::compose::HostRules {
                allowed_domains: cfg.docker.allowed_domains.clone(),
                allow_wildcards: cfg.docker.allow_wildcards,
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
    let report = wharf_config::compose::check_with(&files, &opts, &rules);
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

/// `wharf healthcheck`: one blocking HTTP/1.1 GET, all of it within 2 seconds.
fn healthcheck(url: &str, token: Option<&str>, print_body: bool) -> ExitCode {
    use std::io::Write;
    match http_get(url, token, std::time::Duration::from_secs(2)) {
        Ok((200, body)) => {
            if print_body {
                let mut out = std::io::stdout().lock();
                if out.write_all(&body).and_then(|()| out.flush()).is_err() {
                    return ExitCode::from(1);
                }
            }
            ExitCode::SUCCESS
        }
        Ok((status, _)) => {
            eprintln!("wharf healthcheck: {url}: HTTP {status}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("wharf healthcheck: {url}: {e}");
            ExitCode::from(1)
        }
    }
}

/// GET `url` (`http://host[:port][/path]`) over a plain TcpStream with
/// `Connection: close`; returns the status and the (de-chunked) body.
fn http_get(
    url: &str,
    token: Option<&str>,
    budget: std::time::Duration,
) -> Result<(u16, Vec<u8>), String> {
    use std::io::{Read, Write};
    use std::net::{TcpStream, ToSocketAddrs};
    use std::time::Instant;
    const MAX: u64 = 64 << 20;
    let deadline = Instant::now() + budget;
    let left = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| format!("no answer within {budget:?}"))
    };
    let rest = url
        .strip_prefix("http://")
        .ok_or("only http:// URLs are supported")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !p.contains(']') => {
            (h, p.parse::<u16>().map_err(|_| format!("bad port `{p}`"))?)
        }
        _ => (authority, 80),
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if bare.is_empty() {
        return Err("no host in URL".into());
    }
    // The C library's resolver has no timeout of its own: it runs on a thread that
    // is abandoned when the budget runs out (the process exits right after).
    let (tx, rx) = std::sync::mpsc::channel();
    let name = (bare.to_string(), port);
    std::thread::spawn(move || {
        let _ = tx.send(name.to_socket_addrs().map(|a| a.collect::<Vec<_>>()));
    });
    let addrs = rx
        .recv_timeout(left()?)
        .map_err(|_| format!("{bare}: not resolved within {budget:?}"))?
        .map_err(|e| format!("{bare}: {e}"))?;
    let mut last = format!("{bare}: no address");
    let mut stream = None;
    for a in addrs {
        match TcpStream::connect_timeout(&a, left()?) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = format!("connect {a}: {e}"),
        }
    }
    let mut s = stream.ok_or(last)?;
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: wharf-healthcheck\r\n\
         Accept: */*\r\nConnection: close\r\n"
    );
    if let Some(t) = token.filter(|t| !t.is_empty()) {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    req.push_str("\r\n");
    s.set_write_timeout(Some(left()?))
        .map_err(|e| e.to_string())?;
    s.write_all(req.as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    loop {
        s.set_read_timeout(Some(left()?))
            .map_err(|e| e.to_string())?;
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) if buf.len() as u64 + n as u64 > MAX => {
                return Err(format!("response larger than {MAX} bytes"))
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no complete response head")?;
    let head = String::from_utf8_lossy(&buf[..end]);
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .filter(|l| l.starts_with("HTTP/1."))
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or("not an HTTP/1.x response")?;
    let mut chunked = false;
    let mut length = None;
    for l in lines {
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim(), v.trim());
        if k.eq_ignore_ascii_case("transfer-encoding") {
            chunked = v.to_ascii_lowercase().contains("chunked");
        } else if k.eq_ignore_ascii_case("content-length") {
            length = v.parse::<usize>().ok();
        }
    }
    let raw = &buf[end + 4..];
    let body = if chunked {
        dechunk(raw).ok_or("malformed chunked body")?
    } else {
        match length {
            Some(n) if n <= raw.len() => raw[..n].to_vec(),
            Some(_) => return Err("body shorter than its Content-Length".into()),
            None => raw.to_vec(),
        }
    };
    Ok((status, body))
}

/// Decodes an HTTP/1.1 chunked body (trailers ignored).
fn dechunk(mut raw: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = raw.windows(2).position(|w| w == b"\r\n")?;
        let line = std::str::from_utf8(&raw[..eol]).ok()?;
        let size = usize::from_str_radix(line.split(';').next()?.trim(), 16).ok()?;
        raw = &raw[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(raw.get(..size)?);
        raw = raw.get(size + 2..)?;
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
        Command::Healthcheck { url, token, body } => healthcheck(&url, token.as_deref(), body),
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

#[cfg(test)]
mod tests {
    #[test]
    fn dechunk_joins_chunks_and_rejects_truncation() {
        let body = b"4\r\nwhar\r\n1;ext=1\r\nf\r\n0\r\nTrailer: x\r\n\r\n";
        assert_eq!(super::dechunk(body).as_deref(), Some(&b"wharf"[..]));
        assert_eq!(super::dechunk(b"5\r\nwha"), None);
        assert_eq!(super::dechunk(b"zz\r\n"), None);
    }

    #[test]
    fn healthcheck_refuses_other_schemes_and_fails_fast_on_a_closed_port() {
        let d = std::time::Duration::from_secs(2);
        assert!(super::http_get("https://127.0.0.1/ping", None, d).is_err());
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let t = std::time::Instant::now();
        assert!(super::http_get(&format!("http://127.0.0.1:{port}/ping"), None, d).is_err());
        assert!(t.elapsed() < d);
    }
}
