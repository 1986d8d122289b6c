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
    /// Write a self-signed certificate and key (mode 0600) for tests and first start.
    GenCert {
        /// Host names for the certificate (the first is the subject).
        #[arg(long = "host", required = true)]
        hosts: Vec<String>,
        /// Directory to write server.pem and server.key into.
        #[arg(long, default_value = ".")]
        out: PathBuf,
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
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
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
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
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
        let server = tlsgate::server::start(config).await?;
        wait_for_stop_signal().await?;
        tracing::info!(grace = ?grace, "stop signal received, shutting down");
        server.shutdown(grace).await;
        Ok(())
    })
}

async fn wait_for_stop_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

fn check_config(path: Option<&Path>) -> anyhow::Result<()> {
    let config = load_config(path)?;
    // Certificates and keys are checked now too, as `serve` would.
    if let Some((cert, key)) = &config.tls.cert_and_key {
        tlsgate::tls::server_config(cert, key)?;
    }
    print!("{}", tlsgate::config::summary(&config));
    println!("configuration ok");
    Ok(())
}

fn gen_cert(hosts: &[String], out: &Path) -> anyhow::Result<()> {
    let generated = tlsgate::tls::generate_self_signed(hosts)?;
    let (cert, key) = tlsgate::tls::keys::write_cert_files(out, &generated)?;
    println!("wrote {} and {} (mode 0600)", cert.display(), key.display());
    Ok(())
}
