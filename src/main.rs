//! The `tlsgate` command line: parses arguments and calls into the library.

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;
use tlsgate::config::{Config, LogFormat};

#[derive(Parser)]
#[command(
    name = "tlsgate",
    version,
    about = "SMTP relay enforcing tvungen TLS",
    after_help = "Every command reads /etc/tlsgate/tlsgate.toml unless --config FILE or the \
                  environment variable TLSGATE_CONFIG names another file."
)]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(Subcommand)]
enum Commands {
    /// Run the relay (the embedded development default when no --config is given and
    /// /etc/tlsgate/tlsgate.toml does not exist).
    Serve {
        #[arg(long, short, env = "TLSGATE_CONFIG", help = CONFIG_HELP)]
        config: Option<PathBuf>,
        /// How long sessions may take to finish after SIGTERM.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        grace: Duration,
    },
    /// Validate a configuration file and print what it would do.
    CheckConfig {
        #[arg(long, short, env = "TLSGATE_CONFIG", help = CONFIG_HELP)]
        config: Option<PathBuf>,
    },
    /// Print the effective configuration as TOML: only what differs from the defaults (like
    /// `postconf -n`), or every setting with --defaults (like `postconf`). Never a secret.
    ShowConfig {
        #[arg(long, short, env = "TLSGATE_CONFIG", help = CONFIG_HELP)]
        config: Option<PathBuf>,
        /// Every setting, defaults filled in.
        #[arg(long)]
        defaults: bool,
    },
    /// The tvungen TLS domain list: show it, or check every listed domain (T7).
    Domains {
        #[command(subcommand)]
        action: DomainsAction,
    },
    /// Resolve MX, connect, STARTTLS and validate one domain as delivery would, and print the
    /// policy it resolves to (like posttls-finger).
    Probe {
        #[arg(long, short, env = "TLSGATE_CONFIG", help = CONFIG_HELP)]
        config: Option<PathBuf>,
        domain: String,
        #[arg(long)]
        json: bool,
        /// Bound for every connect and reply.
        #[arg(long, default_value = "20s", value_parser = positive_duration)]
        timeout: Duration,
    },
    /// The queue of the running server, through its admin API.
    Queue {
        #[command(subcommand)]
        action: QueueAction,
    },
    /// SMTP TLS reports (RFC 8460) of the running server: its counters, or send due reports.
    TlsReport {
        #[command(subcommand)]
        action: ReportAction,
    },
    /// DMARC aggregate reports (RFC 7489 7.2) of the running server: its counters, or send
    /// due reports.
    DmarcReport {
        #[command(subcommand)]
        action: ReportAction,
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

/// Which messages a queue command is about (issue 14 item 2); every condition given must hold.
#[derive(clap::Args, Clone, Default)]
struct Select {
    /// Only messages from this envelope sender (`<>`: the null sender).
    #[arg(long)]
    from: Option<String>,
    /// Only messages to this recipient.
    #[arg(long)]
    to: Option<String>,
    /// Only messages with a recipient in this domain.
    #[arg(long)]
    domain: Option<String>,
    /// Only messages at least this old (e.g. 30m, 2h, 5d).
    #[arg(long, value_parser = parse_age)]
    older_than: Option<String>,
    /// Only messages with a recipient in this state.
    #[arg(long, value_parser = tlsgate::admin::STATUSES)]
    status: Option<String>,
}

/// Checks a duration on the command line, and passes it on as written.
/// A bound above zero (`--timeout`): a zero bound fails every connect and reply at once.
fn positive_duration(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(bound) if bound.is_zero() => Err("must be more than 0s".into()),
        parsed => parsed.map_err(|e| e.to_string()),
    }
}

/// A count of at least one (`--parallel`): zero would check nothing and wait for ever.
fn at_least_one(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        parsed => parsed.map_err(|e| e.to_string()),
    }
}

fn parse_age(text: &str) -> Result<String, String> {
    humantime::parse_duration(text)
        .map(|_| text.to_string())
        .map_err(|e| e.to_string())
}

impl Select {
    fn selection(&self) -> tlsgate::admin::Selection {
        tlsgate::admin::Selection {
            from: self.from.clone(),
            to: self.to.clone(),
            domain: self.domain.clone(),
            older_than: self.older_than.clone(),
            status: self.status.clone(),
            ..Default::default()
        }
    }
}

#[derive(Subcommand)]
enum QueueAction {
    /// Like mailq: a header row, one line per message (id, arrival time in UTC, size, sender)
    /// with its recipients below (state, attempts, next attempt, last reply), and a summary.
    List {
        #[arg(long, short, env = "TLSGATE_CONFIG", help = CONFIG_HELP)]
        config: Option<PathBuf>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        select: Select,
    },
    /// Like qshape: messages per destination domain and age bucket (minutes).
    Summary {
        #[arg(long, short, env = "TLSGATE_CONFIG", help = CONFIG_HELP)]
        config: Option<PathBuf>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        select: Select,
    },
    /// One message in detail (never its body).
    Show {
        #[arg(long, short, env = "TLSGATE_CONFIG", help = CONFIG_HELP)]
        config: Option<PathBuf>,
        id: String,
        /// Print the stored header section instead, like `postcat -hq` (audited).
        #[arg(long)]
        headers: bool,
    },
    /// Make every undelivered recipient due now.
    Retry {
        #[arg(long, short, env = "TLSGATE_CONFIG", help = CONFIG_HELP)]
        config: Option<PathBuf>,
        /// Queue ids; without them, the messages the conditions pick (or --all).
        ids: Vec<String>,
        #[command(flatten)]
        select: Select,
        /// Every message in the queue (required when neither ids nor a condition is given).
        #[arg(long)]
        all: bool,
    },
    /// Fail every undelivered recipient now and send the sender a failure DSN.
    Bounce {
        #[arg(long, short, env = "TLSGATE_CONFIG", help = CONFIG_HELP)]
        config: Option<PathBuf>,
        /// Queue ids; without them, the messages the conditions pick (or --all).
        ids: Vec<String>,
        #[command(flatten)]
        select: Select,
        /// Every message in the queue (required when neither ids nor a condition is given).
        #[arg(long)]
        all: bool,
    },
    /// Remove the message without telling anyone.
    Delete {
        #[arg(long, short, env = "TLSGATE_CONFIG", help = CONFIG_HELP)]
        config: Option<PathBuf>,
        /// Queue ids; without them, the messages the conditions pick (or --all).
        ids: Vec<String>,
        #[command(flatten)]
        select: Select,
        /// Every message in the queue (required when neither ids nor a condition is given).
        #[arg(long)]
        all: bool,
    },
    /// Keep the message from delivery (and expiry) until released, like postsuper -h.
    Hold {
        #[arg(long, short, env = "TLSGATE_CONFIG", help = CONFIG_HELP)]
        config: Option<PathBuf>,
        /// Queue ids; without them, the messages the conditions pick (or --all).
        ids: Vec<String>,
        #[command(flatten)]
        select: Select,
        /// Every message in the queue (required when neither ids nor a condition is given).
        #[arg(long)]
        all: bool,
    },
    /// Release held messages: due now, like postsuper -H.
    Release {
        #[arg(long, short, env = "TLSGATE_CONFIG", help = CONFIG_HELP)]
        config: Option<PathBuf>,
        /// Queue ids; without them, the messages the conditions pick (or --all).
        ids: Vec<String>,
        #[command(flatten)]
        select: Select,
        /// Every message in the queue (required when neither ids nor a condition is given).
        #[arg(long)]
        all: bool,
    },
    /// Offline, with the relay stopped: re-seal the whole queue under the key in --new-key
    /// (S3), crash-safe. Then point queue.encryption_key at that file.
    Rekey {
        #[arg(long, short, env = "TLSGATE_CONFIG", help = CONFIG_HELP)]
        config: Option<PathBuf>,
        /// The new key file (e.g. from `tlsgate gen-key`), mode 0600.
        #[arg(long)]
        new_key: PathBuf,
    },
    /// Offline, with the relay stopped: move the queue to the engine set in queue.engine
    /// (redb or sled), crash-safe, keeping its key.
    Migrate {
        #[arg(long, short, env = "TLSGATE_CONFIG", help = CONFIG_HELP)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ReportAction {
    /// The counters of the running day and of the days whose reports are not all sent.
    Show {
        #[arg(long, short, env = "TLSGATE_CONFIG", help = CONFIG_HELP)]
        config: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Send the due reports now (finished days not sent yet).
    Send {
        #[arg(long, short, env = "TLSGATE_CONFIG", help = CONFIG_HELP)]
        config: Option<PathBuf>,
        /// Also send the running day's report so far (it still goes out in full after
        /// midnight).
        #[arg(long)]
        include_today: bool,
    },
}

#[derive(Subcommand)]
enum AuditAction {
    /// Check numbering and hash chain; exits non-zero at the first gap or broken link.
    Verify {
        #[arg(long, short, env = "TLSGATE_CONFIG", help = CONFIG_HELP)]
        config: Option<PathBuf>,
        /// Files or directories (default: audit.dir of the configuration).
        paths: Vec<PathBuf>,
    },
}

#[derive(Subcommand)]
enum DomainsAction {
    /// Ask the running server to reload the domain list now (like SIGHUP).
    Reload {
        #[arg(long, short, env = "TLSGATE_CONFIG", help = CONFIG_HELP)]
        config: Option<PathBuf>,
    },
    /// Ask the running server for the list's source and last fetch, and the background
    /// partner check's latest verdicts (issue 15 items 3 and 5).
    Status {
        #[arg(long, short, env = "TLSGATE_CONFIG", help = CONFIG_HELP)]
        config: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Print the list in force (domain, company, organisation number, date joined).
    List {
        #[arg(long, short, env = "TLSGATE_CONFIG", help = CONFIG_HELP)]
        config: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// T7 compliance check: every listed domain (or the --domain ones) checked exactly as
    /// delivery would; exits non-zero if any would fail.
    Check {
        #[arg(long, short, env = "TLSGATE_CONFIG", help = CONFIG_HELP)]
        config: Option<PathBuf>,
        #[arg(long)]
        json: bool,
        /// Check only these domains (repeatable).
        #[arg(long = "domain")]
        domains: Vec<String>,
        /// Bound for every connect and reply.
        #[arg(long, default_value = "20s", value_parser = positive_duration)]
        timeout: Duration,
        /// Domains checked at the same time.
        #[arg(long, default_value_t = 16, value_parser = at_least_one)]
        parallel: usize,
        /// Also write the report for the auditor to FILE: one self-contained HTML page, dated,
        /// naming the list checked (Bits 5.2.6).
        #[arg(long, value_name = "FILE")]
        html: Option<PathBuf>,
    },
}

/// Where every command looks for its configuration when neither `--config` nor
/// `TLSGATE_CONFIG` names one (issue 14 item 1; Postfix's `/etc/postfix/main.cf`).
const DEFAULT_CONFIG: &str = "/etc/tlsgate/tlsgate.toml";

/// The `--config` help text, the same for every command.
const CONFIG_HELP: &str =
    "Configuration file [default: /etc/tlsgate/tlsgate.toml; `serve` without that file runs the embedded development default]";

/// Test seam only, never documented for operators: moves the *default* location, so that the
/// tests of "no --config given" never read a real /etc/tlsgate on the machine running them.
const DEFAULT_CONFIG_OVERRIDE_ENV: &str = "TLSGATE_DEFAULT_CONFIG_PATH";

/// The configuration file a command reads: `--config`/`TLSGATE_CONFIG` when given (clap fills
/// `path` from either; commands without the clap attribute still honour the variable here),
/// else the default location.
fn config_path(path: Option<&Path>) -> (PathBuf, bool) {
    if let Some(path) = path {
        return (path.to_path_buf(), true);
    }
    if let Some(path) = std::env::var_os("TLSGATE_CONFIG").filter(|p| !p.is_empty()) {
        return (PathBuf::from(path), true);
    }
    let default = std::env::var_os(DEFAULT_CONFIG_OVERRIDE_ENV)
        .filter(|p| !p.is_empty())
        .map_or_else(|| PathBuf::from(DEFAULT_CONFIG), PathBuf::from);
    (default, false)
}

/// Loads the configuration every command but `serve` uses: the named file, else the default
/// location. A missing default file is an error that says where it looked, never a silent
/// fall-back to the development default (issue 14 item 1).
fn load_config(path: Option<&Path>) -> anyhow::Result<Config> {
    let (path, explicit) = config_path(path);
    if !explicit && !path.exists() {
        anyhow::bail!(
            "no configuration at {} (name one with --config FILE or TLSGATE_CONFIG)",
            path.display()
        );
    }
    Ok(Config::load(&path)?)
}

/// `serve`'s configuration: as [`load_config`], except that without `--config` and without a
/// file at the default location it runs the embedded development default, and says so (the
/// README's quick start on a fresh machine). Returns the warning to log once logging is up.
fn load_serve_config(path: Option<&Path>) -> anyhow::Result<(Config, Option<String>)> {
    let (path, explicit) = config_path(path);
    if !explicit && !path.exists() {
        let warning = format!(
            "no configuration at {}: running the embedded development default (loopback \
             listeners, data in ./data); write that file or pass --config for production",
            path.display()
        );
        return Ok((Config::dev_default()?, Some(warning)));
    }
    Ok((Config::load(&path)?, None))
}

/// The configuration of the commands that talk to a running relay (`queue …`, `domains
/// status`, the report commands): the one `serve` would use, so that a relay started without
/// a configuration file (the embedded development default, the README's quick start) is found
/// by the same commands without one. Says so on standard error in that case; `check-config`
/// and the offline commands keep refusing to run without a file ([`load_config`]).
fn load_admin_config(path: Option<&Path>) -> anyhow::Result<Config> {
    let (config, default_used) = load_serve_config(path)?;
    if default_used.is_some() {
        eprintln!(
            "tlsgate: no configuration file; looking for the relay started with the embedded \
             development default (admin socket {})",
            config
                .admin
                .as_ref()
                .and_then(|a| a.socket.as_ref())
                .map_or_else(|| "none".to_string(), |p| p.display().to_string())
        );
    }
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
        // One quoting rule for every field (logfmt: free text quoted, plain words bare).
        LogFormat::Text => builder.fmt_fields(tlsgate::ops::logfmt::Logfmt).init(),
    }
}

/// `tlsgate queue list | head`: when the reader of standard output goes away, end as a Unix
/// filter does (killed by SIGPIPE, exit status 141 in the shell) instead of panicking in
/// `println!` with a backtrace (review finding). SIGPIPE itself stays ignored, as Rust sets it,
/// so that a socket whose peer went away (an MX host in `domains check`, the admin socket)
/// is an error to handle, not the end of the process.
fn end_quietly_when_stdout_closes() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("");
        // std's message for a failed `print!`: "failed printing to stdout: <io error>".
        if message.starts_with("failed printing to stdout")
            && message.contains(&std::io::Error::from_raw_os_error(libc::EPIPE).to_string())
        {
            // SAFETY: restoring the default action of SIGPIPE and raising it has no
            // preconditions; the process ends here as a filter killed by SIGPIPE does.
            unsafe {
                libc::signal(libc::SIGPIPE, libc::SIG_DFL);
                libc::raise(libc::SIGPIPE);
            }
        }
        default_hook(info)
    }));
}

fn main() -> ExitCode {
    end_quietly_when_stdout_closes();
    let cli = Cli::parse();
    let result = match cli.command {
        Commands::Serve { config, grace } => serve(config.as_deref(), grace),
        Commands::CheckConfig { config } => check_config(config.as_deref()),
        Commands::ShowConfig { config, defaults } => load_config(config.as_deref())
            .map(|config| print!("{}", tlsgate::config::show(&config, defaults))),
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
                    html,
                },
        } => domains_check(
            config.as_deref(),
            (json, html.as_deref()),
            &domains,
            timeout,
            parallel,
        ),
        Commands::Domains {
            action: DomainsAction::Status { config, json },
        } => domains_status(config.as_deref(), json),
        Commands::Domains {
            action: DomainsAction::Reload { config },
        } => admin_call(config.as_deref(), "POST", "/domains/reload", false),
        Commands::Queue { action } => match action {
            QueueAction::List {
                config,
                json,
                select,
            } => queue_list(config.as_deref(), json, &select),
            QueueAction::Summary {
                config,
                json,
                select,
            } => queue_summary(config.as_deref(), json, &select),
            QueueAction::Show {
                config,
                id,
                headers: false,
            } => admin_call(config.as_deref(), "GET", &format!("/queue/{id}"), true),
            QueueAction::Show {
                config,
                id,
                headers: true,
            } => queue_headers(config.as_deref(), &id),
            QueueAction::Retry {
                config,
                ids,
                select,
                all,
            } => queue_action(config.as_deref(), "retry", &ids, &select, all),
            QueueAction::Bounce {
                config,
                ids,
                select,
                all,
            } => queue_action(config.as_deref(), "bounce", &ids, &select, all),
            QueueAction::Delete {
                config,
                ids,
                select,
                all,
            } => queue_action(config.as_deref(), "delete", &ids, &select, all),
            QueueAction::Hold {
                config,
                ids,
                select,
                all,
            } => queue_action(config.as_deref(), "hold", &ids, &select, all),
            QueueAction::Release {
                config,
                ids,
                select,
                all,
            } => queue_action(config.as_deref(), "release", &ids, &select, all),
            QueueAction::Rekey { config, new_key } => queue_rekey(config.as_deref(), &new_key),
            QueueAction::Migrate { config } => queue_migrate(config.as_deref()),
        },
        Commands::TlsReport {
            action: ReportAction::Show { config, json },
        } => tls_report_show(config.as_deref(), json),
        Commands::TlsReport {
            action:
                ReportAction::Send {
                    config,
                    include_today,
                },
        } => report_send(config.as_deref(), "/tls-report/send", include_today),
        Commands::DmarcReport {
            action: ReportAction::Show { config, json },
        } => dmarc_report_show(config.as_deref(), json),
        Commands::DmarcReport {
            action:
                ReportAction::Send {
                    config,
                    include_today,
                },
        } => report_send(config.as_deref(), "/dmarc-report/send", include_today),
        Commands::Audit {
            action: AuditAction::Verify { config, paths },
        } => audit_verify(config.as_deref(), paths),
        Commands::Probe {
            config,
            domain,
            json,
            timeout,
        } => domains_check(config.as_deref(), (json, None), &[domain], timeout, 1),
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
    let (config, warning) = load_serve_config(path)?;
    init_logging(&config);
    if let Some(warning) = warning {
        tracing::warn!("{warning}");
    }
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
        tracing::info!(
            grace = %humantime::format_duration(grace),
            "stop signal received, shutting down"
        );
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
    // Every file and directory a key names, checked by the very code `serve` starts with;
    // every problem listed, not only the first (issue 14 item 1).
    let mut problems = tlsgate::startup::every_problem(&config);
    if problems.len() == 1 {
        // One problem: the very error `serve` gives. (Not left to `ConfigFiles::load` below,
        // which does not look at the queue's engine and key: a single queue problem passed
        // unseen there, review finding.)
        return Err(problems.remove(0).into());
    }
    if problems.len() > 1 {
        let lines: Vec<String> = problems.iter().map(|p| format!("{p:#}")).collect();
        anyhow::bail!("{} problems:\n{}", problems.len(), lines.join("\n"));
    }
    let files = tlsgate::startup::ConfigFiles::load(&config)?;
    print!(
        "{}",
        tlsgate::config::summary(&config, Some(&files.domain_list.current()))
    );
    if let Some(warning) = tlsgate::reporting::tls::missing_key_warning(&config) {
        println!("warning: {warning}");
    }
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
        // `off` is the whole story: not `dnssec: off, off (…)`.
        Ok(Ok(DnssecStatus::Off)) => format!("dnssec: {}", DnssecStatus::Off),
        Ok(Ok(status @ DnssecStatus::Available)) => format!("dnssec: {mode}, {status}"),
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

/// A rewrite of the queue that failed, with what to do when the relay holds the queue:
/// both engines lock their files, and their error text carries debug output.
fn offline_error(dir: &Path, command: &str, e: tlsgate::queue::StoreError) -> anyhow::Error {
    match e {
        tlsgate::queue::StoreError::Io(io)
            if io.kind() == std::io::ErrorKind::WouldBlock
                || io.to_string().contains("could not acquire lock") =>
        {
            anyhow::anyhow!(
                "{}: the queue is in use by a running relay: stop it first (systemctl stop \
                 tlsgate), then run {command} again",
                dir.display()
            )
        }
        e => anyhow::Error::new(e).context(format!("{}: {command} failed", dir.display())),
    }
}

/// `tlsgate queue migrate` (issue 16 item 2): offline, like `queue rekey`.
fn queue_migrate(path: Option<&Path>) -> anyhow::Result<()> {
    let config = load_config(path)?;
    let key = tlsgate::startup::queue_key(&config)?;
    let dir = config.queue_dir();
    let engine = config.queue.engine;
    let done = tlsgate::queue::at_rest::migrate(&dir, engine, key)
        .map_err(|e| offline_error(&dir, "queue migrate", e))?;
    match done {
        None => println!("{}: the queue is already {}", dir.display(), engine.name()),
        Some(done) => println!(
            "moved {} ({} records) in {} to {}; start the relay with queue.engine = \"{}\"",
            tlsgate::text::counted(done.messages, "message"),
            done.records,
            dir.display(),
            engine.name(),
            engine.name()
        ),
    }
    Ok(())
}

/// `tlsgate queue rekey`: offline (sled locks the store, so a running relay makes this fail
/// before anything is written), like Postfix's `postsuper` maintenance.
fn queue_rekey(path: Option<&Path>, new_key: &Path) -> anyhow::Result<()> {
    let config = load_config(path)?;
    let current = tlsgate::startup::queue_key(&config)?;
    let new = std::sync::Arc::new(tlsgate::queue::QueueKey::load(new_key)?);
    let dir = config.queue_dir();
    let done = tlsgate::queue::at_rest::rekey(&dir, config.queue.engine, current, Some(new))
        .map_err(|e| offline_error(&dir, "queue rekey", e))?;
    // The path is to be copied into the config, where a relative one would be read from the
    // config file's directory, not from where this ran: absolute, then (the key was just
    // read, so it exists; the given path is the fallback all the same).
    let new_key = std::fs::canonicalize(new_key).unwrap_or_else(|_| new_key.to_path_buf());
    println!(
        "re-sealed {} ({} records) in {} under {}. Now set queue.encryption_key = \"{}\" in {} \
         (or copy the file over the old key) before starting the relay; keep the old key only as \
         long as backups sealed under it exist",
        tlsgate::text::counted(done.messages, "message"),
        done.records,
        dir.display(),
        new_key.display(),
        new_key.display(),
        config.source
    );
    Ok(())
}

/// `tlsgate domains list`: the list in force, as the running relay has it (it keeps the last
/// good list when a changed file is refused). Only when no relay answers (or its admin API is
/// off) the file as the relay would load it, and a line on standard error says so.
fn domains_list(path: Option<&Path>, json: bool) -> anyhow::Result<()> {
    use tlsgate::ops::domain_list::render_entries;
    use tlsgate::policy::domain_list::DomainEntry;
    let config = load_config(path)?;
    let file = config.domain_list.path.clone();
    let asked = match config.admin {
        Some(_) => admin_request_to(&config, "GET", "/domains/entries").map(Some),
        None => Ok(None),
    };
    let (entries, header): (Vec<DomainEntry>, Option<String>) = match asked {
        Ok(Some(body)) => {
            let entries = serde_json::from_str(&body)
                .context("the server's answer to GET /domains/entries")?;
            let header = match &file {
                Some(file) => format!("in force in the running relay, from {}", file.display()),
                None => "in force in the running relay".to_string(),
            };
            (entries, Some(header))
        }
        outcome => {
            // Any other failure (refused access, a relay that does not answer) is said as it
            // is: the file would be a guess at what a running relay has in force.
            let note = match outcome {
                Ok(_) => "admin API off",
                Err(e) if e.downcast_ref::<tlsgate::admin::NotRunning>().is_some() => {
                    "relay not running"
                }
                Err(e) => return Err(e),
            };
            eprintln!("{note}: showing the list file as it would load");
            let handle = tlsgate::startup::domain_list(&config)?;
            let header = handle.path().map(|p| p.display().to_string());
            (DomainEntry::all(&handle.current()), header)
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&entries)?);
    } else {
        print!("{}", render_entries(header.as_deref(), &entries));
    }
    Ok(())
}

/// `tlsgate domains check` (T7): the table or `--json` on standard output, the HTML report to
/// `html` when given; progress and the summary line on standard error (issue 15 items 1, 2).
fn domains_check(
    path: Option<&Path>,
    (json, html): (bool, Option<&Path>),
    only: &[String],
    timeout: Duration,
    parallel: usize,
) -> anyhow::Result<()> {
    let started = std::time::SystemTime::now();
    let clock = std::time::Instant::now();
    let config = load_config(path)?;
    let handle = tlsgate::startup::domain_list(&config)?;
    let list = handle.current();
    let domains: Vec<tlsgate::domain::Domain> = if only.is_empty() {
        list.iter().map(|d| d.domain.clone()).collect()
    } else {
        let mut domains: Vec<tlsgate::domain::Domain> = Vec::with_capacity(only.len());
        for d in only {
            let domain = tlsgate::domain::Domain::parse(d).with_context(|| format!("{d:?}"))?;
            // `--domain a --domain A` is one domain, checked and counted once.
            if !domains.contains(&domain) {
                domains.push(domain);
            }
        }
        domains
    };
    if domains.is_empty() {
        anyhow::bail!("no domain to check: the domain list is empty and no --domain was given");
    }
    let tls = tlsgate::startup::client_tls(&config)?;
    // The report file is opened before the run, so that an unwritable path is said at once
    // rather than after every domain was checked; it is removed again if the run fails.
    let mut html_file = html
        .map(|out| {
            std::fs::File::create(out)
                .with_context(|| format!("creating the HTML report {}", out.display()))
        })
        .transpose()?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let run = runtime.block_on(async {
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
        let resolver: std::sync::Arc<dyn tlsgate::dns::Resolver> = std::sync::Arc::new(resolver);
        // MTA-STS as delivery sees it (RFC 8461): the relay's cache is read, never written
        // (the relay owns it), and nothing is reported from here.
        let mta_sts = config.mta_sts.enabled.then(|| {
            std::sync::Arc::new(
                tlsgate::mta_sts::MtaSts::new(
                    &config.mta_sts,
                    tlsgate::mta_sts::open_cache(&config, false),
                    resolver.clone(),
                    tls.clone(),
                    None,
                    std::sync::Arc::new(tlsgate::tls_report::NoReports),
                )
                .with_fetch_timeout(timeout),
            )
        });
        // Drawn only when standard error is a terminal (issue 15 item 1).
        let progress = tlsgate::compliance::progress::Progress::on_stderr(domains.len());
        let reports = tlsgate::compliance::check_domains_with_progress(
            std::sync::Arc::new(config.clone()),
            list,
            resolver,
            (tls, mta_sts),
            domains,
            (timeout, parallel),
            &|report| progress.done(report),
        )
        .await;
        progress.finish();
        anyhow::Ok(reports)
    });
    let reports = match run {
        Ok(reports) => reports,
        Err(e) => {
            if let Some(out) = html {
                let _ = std::fs::remove_file(out);
            }
            return Err(e);
        }
    };
    let took = clock.elapsed();
    if json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        print!("{}", tlsgate::compliance::render_table(&reports));
    }
    if let (Some(out), Some(file)) = (html, html_file.as_mut()) {
        use std::io::Write;
        use tlsgate::compliance::html;
        let context = html::ReportContext {
            started,
            took,
            version: env!("CARGO_PKG_VERSION").to_string(),
            server_hostname: config.server.hostname.clone(),
            machine_hostname: html::machine_hostname(),
            config_source: config.source.clone(),
            list: html::ListFacts::of(&handle, config.domain_list.age_from, started),
            selected_domains: !only.is_empty(),
        };
        file.write_all(html::render(&reports, &context).as_bytes())
            .and_then(|()| file.sync_all())
            .with_context(|| format!("writing the HTML report to {}", out.display()))?;
    }
    // The summary on standard error with --json, so that standard output stays JSON.
    let summary = tlsgate::compliance::summary_line(&reports, took);
    if json {
        eprintln!("{summary}");
    } else {
        println!("{summary}");
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

/// `tlsgate domains status`: `GET /domains/status`, as JSON or as a table.
fn domains_status(path: Option<&Path>, json: bool) -> anyhow::Result<()> {
    let body = admin_request(path, "GET", "/domains/status")?;
    let status: tlsgate::ops::domains_status::DomainsStatus =
        serde_json::from_str(&body).context("the server's answer to GET /domains/status")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", tlsgate::ops::domains_status::render(&status));
    }
    Ok(())
}

fn admin_request(path: Option<&Path>, method: &str, url: &str) -> anyhow::Result<String> {
    admin_request_to(&load_admin_config(path)?, method, url)
}

/// One admin API request to the relay `config` describes: the body of a 2xx answer, else the
/// error (a [`tlsgate::admin::NotRunning`] when nothing listens).
fn admin_request_to(config: &Config, method: &str, url: &str) -> anyhow::Result<String> {
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let (status, body) = runtime.block_on(tlsgate::admin::request(config, method, url))?;
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

/// `GET /queue` with the selection's conditions.
fn queue_entries(
    path: Option<&Path>,
    select: &Select,
) -> anyhow::Result<(String, Vec<tlsgate::admin::QueueEntry>)> {
    let query = select.selection().to_query();
    let url = if query.is_empty() {
        "/queue".to_string()
    } else {
        format!("/queue?{query}")
    };
    let body = admin_request(path, "GET", &url)?;
    let entries =
        serde_json::from_str(&body).context("the admin API answered something unexpected")?;
    Ok((body, entries))
}

fn queue_list(path: Option<&Path>, json: bool, select: &Select) -> anyhow::Result<()> {
    let (body, entries) = queue_entries(path, select)?;
    let selection = select.selection();
    if json {
        println!("{body}");
    } else if entries.is_empty() && selection.has_conditions() {
        // Not "the queue is empty": only nothing matched what was asked.
        println!("no message matches ({})", selection.describe());
    } else {
        print!("{}", tlsgate::admin::render_queue(&entries));
    }
    Ok(())
}

fn tls_report_show(path: Option<&Path>, json: bool) -> anyhow::Result<()> {
    let body = admin_request(path, "GET", "/tls-report")?;
    if json {
        println!("{body}");
        return Ok(());
    }
    let view: tlsgate::admin::TlsReportView =
        serde_json::from_str(&body).context("the admin API answered something unexpected")?;
    print!("{}", tlsgate::admin::render_tls_report(&view));
    Ok(())
}

fn dmarc_report_show(path: Option<&Path>, json: bool) -> anyhow::Result<()> {
    let body = admin_request(path, "GET", "/dmarc-report")?;
    if json {
        println!("{body}");
        return Ok(());
    }
    let view: tlsgate::admin::DmarcReportView =
        serde_json::from_str(&body).context("the admin API answered something unexpected")?;
    print!("{}", tlsgate::admin::render_dmarc_report(&view));
    Ok(())
}

/// `tls-report send` and `dmarc-report send`: one line per target; non-zero when a report
/// was not sent for a reason the next run may overcome.
fn report_send(path: Option<&Path>, endpoint: &str, include_today: bool) -> anyhow::Result<()> {
    let url = if include_today {
        format!("{endpoint}?include_today=true")
    } else {
        endpoint.to_string()
    };
    let url = url.as_str();
    let body = admin_request(path, "POST", url)?;
    let sent: Vec<tlsgate::reporting::Sent> =
        serde_json::from_str(&body).context("the admin API answered something unexpected")?;
    if sent.is_empty() {
        println!("no report due");
    }
    for s in &sent {
        println!(
            "{}  {}  {}  {}: {}",
            s.day,
            s.domain,
            if s.rua.is_empty() { "-" } else { &s.rua },
            s.result,
            s.detail
        );
    }
    if sent
        .iter()
        .any(|s| s.result == "failed" || s.result == "no_dkim_key")
    {
        anyhow::bail!("some reports were not sent (they are tried again at the next daily run)");
    }
    Ok(())
}

fn queue_summary(path: Option<&Path>, json: bool, select: &Select) -> anyhow::Result<()> {
    let (_, entries) = queue_entries(path, select)?;
    let rows = tlsgate::admin::summarize(&entries);
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        print!("{}", tlsgate::admin::render_summary(&rows));
    }
    Ok(())
}

fn queue_headers(path: Option<&Path>, id: &str) -> anyhow::Result<()> {
    let body = admin_request(path, "GET", &format!("/queue/{id}/headers"))?;
    let value: serde_json::Value =
        serde_json::from_str(&body).context("the admin API answered something unexpected")?;
    print!("{}", value["headers"].as_str().unwrap_or_default());
    Ok(())
}

/// `queue retry|bounce|delete|hold|release`: one id through `/queue/{id}/{action}` (its 404
/// and 409 as they are), anything else through `/queue/bulk/{action}`, which refuses to act on
/// everything without --all. Prints how many messages it touched; fails when any could not be.
fn queue_action(
    path: Option<&Path>,
    action: &str,
    ids: &[String],
    select: &Select,
    all: bool,
) -> anyhow::Result<()> {
    let mut selection = select.selection();
    if let [id] = ids {
        if !selection.has_conditions() && !all {
            admin_request(path, "POST", &format!("/queue/{id}/{action}"))?;
            println!("{action}: 1 message ({id})");
            return Ok(());
        }
    }
    if !ids.is_empty() {
        selection.ids = Some(ids.join(","));
    }
    selection.all = all;
    let url = format!("/queue/bulk/{action}?{}", selection.to_query());
    let body = admin_request(path, "POST", &url)?;
    let result: tlsgate::admin::BulkResult =
        serde_json::from_str(&body).context("the admin API answered something unexpected")?;
    println!(
        "{action}: {} of {} messages ({})",
        result.done, result.matched, result.selection
    );
    // What was not done, and why.
    let problems: Vec<String> = [
        ("being delivered right now, try again", &result.busy, ", "),
        ("not in the queue", &result.missing, ", "),
        ("held: release it first", &result.held, ", "),
        ("not held", &result.not_held, ", "),
        ("failed", &result.failed, "; "),
    ]
    .into_iter()
    .filter(|(_, ids, _)| !ids.is_empty())
    .map(|(why, ids, separator)| format!("{why}: {}", ids.join(separator)))
    .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("{action}: {}", problems.join("; "))
    }
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
