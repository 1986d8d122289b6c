//! The `tlsgate` command line: parses arguments and calls into the library.

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;
use tlsgate::config::{Config, LogFormat};

#[derive(Parser)]
#[command(name = "tlsgate", version, about = "SMTP relay enforcing tvungen TLS")]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(Subcommand)]
enum Commands {
    /// Run the relay (the embedded development default when no --config is given).
    Serve {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// How long sessions may take to finish after SIGTERM.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        grace: Duration,
    },
    /// Validate a configuration file and print what it would do.
    CheckConfig {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// The tvungen TLS domain list: show it, or check every listed domain (T7).
    Domains {
        #[command(subcommand)]
        action: DomainsAction,
    },
    /// Resolve MX, connect, STARTTLS and validate one domain as delivery would, and print the
    /// policy it resolves to (like posttls-finger).
    Probe {
        #[arg(long, short)]
        config: Option<PathBuf>,
        domain: String,
        #[arg(long)]
        json: bool,
        /// Bound for every connect and reply.
        #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// The queue of the running server, through its admin API.
    Queue {
        #[command(subcommand)]
        action: QueueAction,
    },
    /// The audit log (S1).
    Audit {
        #[command(subcommand)]
        action: AuditAction,
    },
    /// Write a self-signed certificate and key (mode 0600) for tests and first start.
    GenCert {
        /// Host names for the certificate (the first is the subject).
        #[arg(long = "host", required = true)]
        hosts: Vec<String>,
        /// Directory to write server.pem and server.key into.
        #[arg(long, default_value = ".")]
        out: PathBuf,
    },
    /// Write a new queue encryption key (S3): 32 random bytes, base64, in a new file of mode
    /// 0600; an existing file is never overwritten.
    GenKey {
        /// The key file to create.
        #[arg(long, default_value = "queue.key")]
        out: PathBuf,
    },
    /// Write the manual pages (tlsgate.1 and tlsgate-COMMAND.1 for every command) into a
    /// directory; the .deb installs them under /usr/share/man/man1.
    Man {
        /// Directory to write the pages into (created if missing).
        #[arg(long, default_value = ".")]
        out: PathBuf,
    },
    /// Print the shell completion script for SHELL (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
}

#[derive(Subcommand)]
enum QueueAction {
    /// One line per message (id, age, size, sender), then its recipients with state.
    List {
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// One message in detail (never its body).
    Show {
        #[arg(long, short)]
        config: Option<PathBuf>,
        id: String,
    },
    /// Make every undelivered recipient due now.
    Retry {
        #[arg(long, short)]
        config: Option<PathBuf>,
        id: String,
    },
    /// Fail every undelivered recipient now and send the sender a failure DSN.
    Bounce {
        #[arg(long, short)]
        config: Option<PathBuf>,
        id: String,
    },
    /// Remove the message without telling anyone.
    Delete {
        #[arg(long, short)]
        config: Option<PathBuf>,
        id: String,
    },
    /// Offline, with the relay stopped: re-seal the whole queue under the key in --new-key
    /// (S3), crash-safe. Then point queue.encryption_key at that file.
    Rekey {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The new key file (e.g. from `tlsgate gen-key`), mode 0600.
        #[arg(long)]
        new_key: PathBuf,
    },
}

#[derive(Subcommand)]
enum AuditAction {
    /// Check numbering and hash chain; exits non-zero at the first gap or broken link.
    Verify {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Files or directories (default: audit.dir of the configuration).
        paths: Vec<PathBuf>,
    },
}

#[derive(Subcommand)]
enum DomainsAction {
    /// Ask the running server to reload the domain list now (like SIGHUP).
    Reload {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Print the list in force (domain, company, organisation number, date joined).
    List {
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// T7 compliance check: every listed domain (or the --domain ones) checked exactly as
    /// delivery would; exits non-zero if any would fail.
    Check {
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[arg(long)]
        json: bool,
        /// Check only these domains (repeatable).
        #[arg(long = "domain")]
        domains: Vec<String>,
        /// Bound for every connect and reply.
        #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
        timeout: Duration,
        /// Domains checked at the same time.
        #[arg(long, default_value_t = 16)]
        parallel: usize,
    },
}

fn load_config(path: Option<&Path>) -> anyhow::Result<Config> {
    let config = match path {
        Some(path) => Config::load(path)?,
        None => Config::dev_default()?,
    };
    Ok(config)
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log.level));
    // Colour codes only for a person at a terminal: journald, files and log shippers get
    // plain text (issue 14 item 3).
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Commands::Serve { config, grace } => serve(config.as_deref(), grace),
        Commands::CheckConfig { config } => check_config(config.as_deref()),
        Commands::GenCert { hosts, out } => gen_cert(&hosts, &out),
        Commands::GenKey { out } => gen_key(&out),
        Commands::Man { out } => write_man_pages(&out),
        Commands::Completions { shell } => completions(shell),
        Commands::Domains {
            action: DomainsAction::List { config, json },
        } => domains_list(config.as_deref(), json),
        Commands::Domains {
            action:
                DomainsAction::Check {
                    config,
                    json,
                    domains,
                    timeout,
                    parallel,
                },
        } => domains_check(config.as_deref(), json, &domains, timeout, parallel),
        Commands::Domains {
            action: DomainsAction::Reload { config },
        } => admin_call(config.as_deref(), "POST", "/domains/reload", false),
        Commands::Queue { action } => match action {
            QueueAction::List { config, json } => queue_list(config.as_deref(), json),
            QueueAction::Show { config, id } => {
                admin_call(config.as_deref(), "GET", &format!("/queue/{id}"), true)
            }
            QueueAction::Retry { config, id } => admin_call(
                config.as_deref(),
                "POST",
                &format!("/queue/{id}/retry"),
                false,
            ),
            QueueAction::Bounce { config, id } => admin_call(
                config.as_deref(),
                "POST",
                &format!("/queue/{id}/bounce"),
                false,
            ),
            QueueAction::Delete { config, id } => admin_call(
                config.as_deref(),
                "POST",
                &format!("/queue/{id}/delete"),
                false,
            ),
            QueueAction::Rekey { config, new_key } => queue_rekey(config.as_deref(), &new_key),
        },
        Commands::Audit {
            action: AuditAction::Verify { config, paths },
        } => audit_verify(config.as_deref(), paths),
        Commands::Probe {
            config,
            domain,
            json,
            timeout,
        } => domains_check(config.as_deref(), json, &[domain], timeout, 1),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The whole chain, each link once: the library's errors either embed their cause
            // or report it as `source()`, never both.
            eprintln!("tlsgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(path: Option<&Path>, grace: Duration) -> anyhow::Result<()> {
    let config = load_config(path)?;
    init_logging(&config);
    tracing::info!(config = %config.source, hostname = %config.server.hostname, "starting tlsgate");
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        // The handlers are installed before anything listens: a SIGTERM that arrives while the
        // relay is starting (systemd stopping a slow start) is then a clean stop afterwards,
        // never the default action killing the process mid-start.
        let mut signals = StopSignals::install()?;
        let server = tlsgate::server::start(config).await?;
        tlsgate::ops::service::notify_ready("accepting mail");
        signals.wait(&server).await;
        tlsgate::ops::service::notify_stopping();
        tracing::info!(grace = %humantime::format_duration(grace), "stop signal received, shutting down");
        server.shutdown(grace).await;
        Ok(())
    })
}

/// SIGTERM and SIGINT stop the relay; SIGHUP reloads the certificate and the domain list.
struct StopSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn install() -> anyhow::Result<StopSignals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(StopSignals {
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            hup: signal(SignalKind::hangup()).context("installing the SIGHUP handler")?,
        })
    }

    /// Waits for SIGTERM or SIGINT, reloading on every SIGHUP meanwhile.
    async fn wait(&mut self, server: &tlsgate::server::RunningServer) {
        loop {
            tokio::select! {
                _ = self.term.recv() => return,
                _ = self.int.recv() => return,
                _ = self.hup.recv() => {
                    tracing::info!("SIGHUP: reloading configuration, certificate and domain list");
                    tlsgate::ops::service::notify_reloading();
                    let _ = server.reload();
                    tlsgate::ops::service::notify_ready("accepting mail");
                }
            }
        }
    }
}

fn check_config(path: Option<&Path>) -> anyhow::Result<()> {
    let config = load_config(path)?;
    // Every file and directory a key names, checked by the very code `serve` starts with.
    let files = tlsgate::startup::ConfigFiles::load(&config)?;
    let list = &files.domain_list;
    if list.path().is_some() {
        println!("domain_list:       {} domains", list.current().len());
    }
    print!("{}", tlsgate::config::summary(&config));
    if config.dns.dnssec != tlsgate::dns::DnssecMode::Off {
        if config.dns.nameservers.is_empty() {
            // The system resolver may be anywhere: no network from check-config then.
            println!("dnssec self-check: run `tlsgate probe DOMAIN` to check the resolver path");
        } else {
            // The configured resolvers (loopback for `resolver`): D5 wants check-config to say
            // whether they carry DNSSEC at all.
            let resolver = tlsgate::dns::HickoryResolver::with_dnssec(
                &config.dns.nameservers,
                tlsgate::dns::QUERY_TIMEOUT,
                config.dns.dnssec,
                config.dns.trust_anchor.as_deref(),
            )?;
            let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            println!(
                "{}",
                runtime.block_on(dnssec_line(&config, &resolver, Duration::from_secs(10)))
            );
        }
    }
    println!("configuration ok");
    Ok(())
}

/// The DNSSEC self-check (D5) in one line: `dnssec: <mode>, <status>`, prefixed `warning:`
/// when DANE is unavailable or the check got no answer within `bound` (the check is bounded:
/// a validating resolver behind a dead nameserver would otherwise keep retrying).
async fn dnssec_line(
    config: &Config,
    resolver: &tlsgate::dns::HickoryResolver,
    bound: Duration,
) -> String {
    use tlsgate::dns::DnssecStatus;
    let mode = config.dns.dnssec;
    match tokio::time::timeout(bound, resolver.check_dnssec()).await {
        Ok(Ok(status @ (DnssecStatus::Available | DnssecStatus::Off))) => {
            format!("dnssec: {mode}, {status}")
        }
        Ok(Ok(status)) => format!("warning: dnssec: {mode}, {status}"),
        Ok(Err(e)) => format!(
            "warning: dnssec: {mode}, the self-check got no answer ({e}): check dns.nameservers; \
             until a check answers, DNSSEC counts as available"
        ),
        Err(_) => format!(
            "warning: dnssec: {mode}, the self-check got no answer within {}: check \
             dns.nameservers; until a check answers, DNSSEC counts as available",
            humantime::format_duration(bound)
        ),
    }
}

/// The manual pages, generated from the same clap definitions as `--help` (clap_mangen), so
/// they never drift from the binary.
fn write_man_pages(out: &Path) -> anyhow::Result<()> {
    use clap::CommandFactory;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    clap_mangen::generate_to(Cli::command(), out)
        .with_context(|| format!("writing the manual pages into {}", out.display()))?;
    println!("wrote the manual pages into {}", out.display());
    Ok(())
}

/// The completion script (clap_complete), built in memory first: clap_complete panics on a
/// write error, and a closed pipe (`| head`) is an error to report, not a crash.
fn completions(shell: clap_complete::Shell) -> anyhow::Result<()> {
    use clap::CommandFactory;
    use std::io::Write;
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "tlsgate", &mut script);
    std::io::stdout()
        .write_all(&script)
        .context("writing the completion script")
}

fn gen_cert(hosts: &[String], out: &Path) -> anyhow::Result<()> {
    let generated = tlsgate::tls::generate_self_signed(hosts)?;
    let (cert, key) = tlsgate::tls::keys::write_cert_files(out, &generated)?;
    println!("wrote {} and {} (mode 0600)", cert.display(), key.display());
    Ok(())
}

fn gen_key(out: &Path) -> anyhow::Result<()> {
    tlsgate::queue::seal::write_new_key(out)?;
    println!(
        "wrote a new queue key to {} (mode 0600). Keep a copy where the queue's backups are \
         not: without it the queue cannot be read",
        out.display()
    );
    Ok(())
}

/// `tlsgate queue rekey`: offline (sled locks the store, so a running relay makes this fail
/// before anything is written), like Postfix's `postsuper` maintenance.
fn queue_rekey(path: Option<&Path>, new_key: &Path) -> anyhow::Result<()> {
    let config = load_config(path)?;
    let current = tlsgate::startup::queue_key(&config)?;
    let new = std::sync::Arc::new(tlsgate::queue::QueueKey::load(new_key)?);
    let dir = config.queue_dir();
    let done = tlsgate::queue::at_rest::rekey(&dir, current, Some(new)).with_context(|| {
        format!(
            "{}: cannot re-seal the queue (stop the relay first: the store is locked while it runs)",
            dir.display()
        )
    })?;
    println!(
        "re-sealed {} records in {} under {}. Now set queue.encryption_key = \"{}\" in {} \
         (or copy the file over the old key) before starting the relay; keep the old key only as \
         long as backups sealed under it exist",
        done.records,
        dir.display(),
        new_key.display(),
        new_key.display(),
        config.source
    );
    Ok(())
}

fn domains_list(path: Option<&Path>, json: bool) -> anyhow::Result<()> {
    let config = load_config(path)?;
    let handle = tlsgate::startup::domain_list(&config)?;
    let list = handle.current();
    if json {
        let rows: Vec<serde_json::Value> = list
            .iter()
            .map(|d| {
                serde_json::json!({
                    "domain": d.domain.as_str(),
                    "company": d.company,
                    "org_number": d.org_number,
                    "joined_days_since_epoch": d.joined,
                    "supports_5_2_4": d.supports_5_2_4,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    for d in list.iter() {
        println!("{:<32} {:<32} {}", d.domain, d.company, d.org_number);
    }
    println!("{} domains", list.len());
    Ok(())
}

fn domains_check(
    path: Option<&Path>,
    json: bool,
    only: &[String],
    timeout: Duration,
    parallel: usize,
) -> anyhow::Result<()> {
    let config = load_config(path)?;
    let handle = tlsgate::startup::domain_list(&config)?;
    let list = handle.current();
    let domains: Vec<tlsgate::domain::Domain> = if only.is_empty() {
        list.iter().map(|d| d.domain.clone()).collect()
    } else {
        only.iter()
            .map(|d| tlsgate::domain::Domain::parse(d).with_context(|| format!("{d:?}")))
            .collect::<anyhow::Result<_>>()?
    };
    if domains.is_empty() {
        anyhow::bail!("no domain to check: the domain list is empty and no --domain was given");
    }
    let tls = tlsgate::startup::client_tls(&config)?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let reports = runtime.block_on(async {
        let resolver = tlsgate::dns::HickoryResolver::with_dnssec(
            &config.dns.nameservers,
            timeout,
            config.dns.dnssec,
            config.dns.trust_anchor.as_deref(),
        )?;
        // The DNSSEC self-check first (D5): where the resolver path carries no DNSSEC, DANE is
        // unavailable and every answer below is insecure. On stderr with --json, so that
        // stdout stays JSON.
        let dnssec = dnssec_line(&config, &resolver, timeout).await;
        if json {
            eprintln!("{dnssec}");
        } else {
            println!("{dnssec}");
        }
        anyhow::Ok(
            tlsgate::compliance::check_domains(
                std::sync::Arc::new(config),
                list,
                std::sync::Arc::new(resolver),
                tls,
                domains,
                timeout,
                parallel,
            )
            .await,
        )
    })?;
    if json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        print!("{}", tlsgate::compliance::render_table(&reports));
    }
    let failed: Vec<&str> = reports
        .iter()
        .filter(|r| !r.pass)
        .map(|r| r.domain.as_str())
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        anyhow::bail!(
            "{} domain(s) would fail: {}",
            failed.len(),
            failed.join(", ")
        )
    }
}

fn admin_request(path: Option<&Path>, method: &str, url: &str) -> anyhow::Result<String> {
    let config = load_config(path)?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let (status, body) = runtime.block_on(tlsgate::admin::request(&config, method, url))?;
    if !(200..300).contains(&status) {
        let message = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or(body);
        anyhow::bail!("{method} {url}: {status}: {message}");
    }
    Ok(body)
}

fn admin_call(path: Option<&Path>, method: &str, url: &str, pretty: bool) -> anyhow::Result<()> {
    let body = admin_request(path, method, url)?;
    let value: serde_json::Value = serde_json::from_str(&body).unwrap_or(serde_json::Value::Null);
    if pretty || value.is_null() {
        println!("{}", serde_json::to_string_pretty(&value).unwrap_or(body));
    } else if let Some(result) = value["result"].as_str() {
        println!("{result}");
    } else {
        println!("ok");
    }
    Ok(())
}

fn queue_list(path: Option<&Path>, json: bool) -> anyhow::Result<()> {
    let body = admin_request(path, "GET", "/queue")?;
    if json {
        println!("{body}");
        return Ok(());
    }
    let entries: Vec<tlsgate::admin::QueueEntry> =
        serde_json::from_str(&body).context("the admin API answered something unexpected")?;
    print!("{}", tlsgate::admin::render_queue(&entries));
    Ok(())
}

fn audit_verify(path: Option<&Path>, paths: Vec<PathBuf>) -> anyhow::Result<()> {
    let paths = if paths.is_empty() {
        vec![load_config(path)?.audit.dir]
    } else {
        paths
    };
    let report = tlsgate::audit::verify(&paths)?;
    match &report.first_problem {
        None => {
            println!(
                "audit log ok: {} lines in {} files, seq {}..{}",
                report.lines,
                report.files,
                report.first_seq.unwrap_or(0),
                report.last_seq.unwrap_or(0)
            );
            Ok(())
        }
        Some(problem) => anyhow::bail!("audit log broken at {problem}"),
    }
}
