//! Every file and directory a configuration key names, opened, parsed and checked in one place,
//! for `serve` and `check-config` alike: what `check-config` accepts, `serve` starts with
//! (non-negotiable 5: configuration errors are caught at start).
//!
//! Each error names the configuration file, the key and the reason, once:
//! `/etc/tlsgate/tlsgate.toml: tls.cert: /etc/tlsgate/server.pem: cannot read: No such file or
//! directory (os error 2)`. Causes are part of the messages and never also reported as
//! `source()`, so a chain printed link by link does not repeat them.
//!
//! [`ConfigFiles::load`] creates and writes nothing: a refused start leaves no trace behind (no
//! empty `data_dir`). `serve` creates its directories ([`create_directory`]) and, without
//! `[tls]`, its development certificate ([`tls_acceptors`]) only after everything here passed.

use crate::admin::AccessError;
use crate::audit::AuditError;
use crate::auth::{OutboundSigner, SignerError};
use crate::config::{Config, ListenerConfig};
use crate::domain::Domain;
use crate::policy::domain_list::{DomainListHandle, ListError};
use crate::policy::{self, PolicyTarget};
use crate::queue::{EncryptionError, QueueKey, StoreError};
use crate::tls::client::ClientTls;
use crate::tls::client_auth::{self, ClientCa};
use crate::tls::{keys, KeyError};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use tokio_rustls::TlsAcceptor;

/// A start-up problem: the configuration file, the key at fault, and what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {key}: {fault}")]
pub struct StartError {
    /// The configuration file (or the embedded default's name).
    pub file: String,
    /// The key whose value is at fault, e.g. `tls.cert` or `outbound.dkim[0].key`.
    pub key: String,
    pub fault: Fault,
}

/// What is wrong with the file, directory or address a key names. Each message starts with
/// that path or address.
#[derive(Debug, thiserror::Error)]
pub enum Fault {
    /// A certificate, private key or token file (S4 permissions included).
    #[error("{0}")]
    Key(KeyError),
    #[error("{0}")]
    Dkim(SignerError),
    #[error("group {name:?}: {reason}")]
    Group { name: String, reason: String },
    #[error("{0}")]
    DomainList(ListError),
    /// T3, T4: a `[[policy]]` may strengthen a listed domain, never weaken it.
    #[error("[[policy]] for {domain} sets tls = \"{level}\", but {domain} is on the tvungen TLS domain list: a listed domain is never below \"verify\" (T3, T4); it already gets DANE in addition to verify where it publishes TLSA records. Remove the entry, or set \"verify\" or \"secure\"")]
    WeakensList { domain: String, level: String },
    #[error("{path}: exists and is not a directory")]
    NotADirectory { path: String },
    #[error("{path}: cannot be used: {cause}")]
    Inaccessible { path: String, cause: std::io::Error },
    #[error("{path}: cannot create: {cause}")]
    Create { path: String, cause: std::io::Error },
    #[error("{path}: cannot open the queue: {cause}")]
    Queue { path: String, cause: StoreError },
    /// `queue.encryption_key` (S3, S4): unreadable, too open, or not 32 bytes.
    #[error("{0}")]
    QueueKey(EncryptionError),
    #[error("{0}")]
    Audit(AuditError),
    #[error("{addr}: cannot bind: {cause}")]
    Bind {
        addr: SocketAddr,
        cause: std::io::Error,
    },
}

impl StartError {
    /// An error of `key` in `config`'s file.
    pub fn new(config: &Config, key: impl Into<String>, fault: Fault) -> StartError {
        StartError {
            file: config.source.clone(),
            key: key.into(),
            fault,
        }
    }
}

/// What the files named by the configuration hold, loaded once at start.
pub struct ConfigFiles {
    /// `tls.cert` and `tls.key`; `None` when `[tls]` is not configured (`serve` then generates a
    /// self-signed pair into `data_dir/certs`, development only).
    pub server_tls: Option<Arc<rustls::ServerConfig>>,
    /// Each `[[listener]]`'s `client_ca` trust anchors, in listener order (`None` where the
    /// listener has none; S2).
    pub client_cas: Vec<Option<ClientCa>>,
    /// The public roots plus `outbound.extra_trust_roots`.
    pub client_tls: ClientTls,
    /// `[[outbound.dkim]]` signers by sender domain (shared by outbound sessions and TLS
    /// reports).
    pub dkim: HashMap<Domain, Arc<OutboundSigner>>,
    /// `domain_list.path`, already checked against `[[policy]]`.
    pub domain_list: DomainListHandle,
    /// `[admin]`'s access rules: the token read from `admin.token_file` (S4) and the
    /// `admin.socket_group` looked up.
    pub admin_access: Option<crate::admin::Access>,
    /// `queue.encryption_key`, read and checked (S3, S4); `None`: plaintext queue.
    pub queue_key: Option<Arc<QueueKey>>,
}

impl ConfigFiles {
    /// Checks the directories and opens every file the configuration names, in the order of
    /// the example configuration; the first problem is returned.
    pub fn load(config: &Config) -> Result<ConfigFiles, StartError> {
        check_directory(config, "server.data_dir", &config.server.data_dir)?;
        let server_tls = server_tls(config)?;
        let client_cas = client_cas(config, &config.listeners)?;
        let client_tls = client_tls(config)?;
        let dkim = dkim_signers(config)?;
        let domain_list = domain_list(config)?;
        let queue_key = queue_key(config)?;
        let admin_access = admin_access(config)?;
        if let Some(socket) = config.admin.as_ref().and_then(|a| a.socket.as_deref()) {
            // `serve` creates the socket's directory if needed, as it does data_dir.
            if let Some(parent) = socket.parent().filter(|p| !p.as_os_str().is_empty()) {
                check_directory(config, "admin.socket", parent)?;
            }
        }
        check_directory(config, "audit.dir", &config.audit.dir)?;
        Ok(ConfigFiles {
            server_tls,
            client_cas,
            client_tls,
            dkim,
            domain_list,
            admin_access,
            queue_key,
        })
    }
}

/// Every problem [`ConfigFiles::load`] would find, not only the first (issue 14 item 1:
/// `check-config` lists them all); each check runs on its own, in the same order.
pub fn every_problem(config: &Config) -> Vec<StartError> {
    let mut problems = Vec::new();
    let mut note = |result: Result<(), StartError>| {
        if let Err(e) = result {
            problems.push(e);
        }
    };
    let data_dir = &config.server.data_dir;
    let data_dir_ok = check_directory(config, "server.data_dir", data_dir);
    // A directory inside an unusable data_dir fails for the same reason: said once.
    let data_dir_failed = data_dir_ok.is_err();
    let inside_data_dir = |dir: &Path| data_dir_failed && dir.starts_with(data_dir);
    note(data_dir_ok);
    note(server_tls(config).map(drop));
    note(client_tls(config).map(drop));
    note(dkim_signers(config).map(drop));
    note(domain_list(config).map(drop));
    note(admin_access(config).map(drop));
    // The key must open a sealed queue (or a key be given for one): what `serve` checks
    // first when it opens the queue, read-only, so that ExecStartPre catches it (S3).
    note(queue_key(config).and_then(|key| {
        let dir = config.queue_dir();
        crate::queue::engine::check_key(&dir, key.as_deref()).map_err(|cause| {
            let path = dir.display().to_string();
            StartError::new(config, "queue.encryption_key", Fault::Queue { path, cause })
        })
    }));
    // A queue written by another engine than queue.engine is refused by `serve` (issue 16
    // item 2); check-config says so first.
    note({
        let dir = config.queue_dir();
        crate::queue::engine::check_engine(&dir, config.queue.engine).map_err(|cause| {
            let path = dir.display().to_string();
            StartError::new(config, "queue.engine", Fault::Queue { path, cause })
        })
    });
    if let Some(socket) = config.admin.as_ref().and_then(|a| a.socket.as_deref()) {
        if let Some(parent) = socket.parent().filter(|p| !p.as_os_str().is_empty()) {
            if !inside_data_dir(parent) {
                note(check_directory(config, "admin.socket", parent));
            }
        }
    }
    if !inside_data_dir(&config.audit.dir) {
        note(check_directory(config, "audit.dir", &config.audit.dir));
    }
    problems
}

/// The queue key from `queue.encryption_key` (S3), its file held to mode 0600 or stricter
/// (S4); `None` when not configured.
pub fn queue_key(config: &Config) -> Result<Option<Arc<QueueKey>>, StartError> {
    let Some(path) = &config.queue.encryption_key else {
        return Ok(None);
    };
    QueueKey::load(path)
        .map(|key| Some(Arc::new(key)))
        .map_err(|e| StartError::new(config, "queue.encryption_key", Fault::QueueKey(e)))
}

/// The STARTTLS server configuration from `tls.cert` and `tls.key` (`None`: not configured).
pub fn server_tls(config: &Config) -> Result<Option<Arc<rustls::ServerConfig>>, StartError> {
    let Some((cert, key)) = &config.tls.cert_and_key else {
        return Ok(None);
    };
    let chain = keys::load_cert_chain(cert).map_err(key_fault(config, "tls.cert"))?;
    let key_der = keys::load_private_key(key).map_err(key_fault(config, "tls.key"))?;
    let server = crate::tls::server_config_from(chain, key_der, key)
        .map_err(key_fault(config, "tls.key"))?;
    Ok(Some(server))
}

/// The `client_ca` file of every listener in `listeners` (S2), checked like every certificate
/// file; an error names `listener[i].client_ca`.
pub fn client_cas(
    config: &Config,
    listeners: &[ListenerConfig],
) -> Result<Vec<Option<ClientCa>>, StartError> {
    listeners
        .iter()
        .enumerate()
        .map(|(i, l)| match &l.client_auth {
            Some(auth) => client_auth::load_client_ca(&auth.ca)
                .map(Some)
                .map_err(|e| {
                    StartError::new(config, format!("listener[{i}].client_ca"), Fault::Key(e))
                }),
            None => Ok(None),
        })
        .collect()
}

fn key_fault<'a>(config: &'a Config, key: &'a str) -> impl FnOnce(KeyError) -> StartError + 'a {
    move |e| StartError::new(config, key, Fault::Key(e))
}

/// Client TLS with the public roots and `outbound.extra_trust_roots`.
pub fn client_tls(config: &Config) -> Result<ClientTls, StartError> {
    ClientTls::new(&config.outbound.extra_trust_roots)
        .map_err(key_fault(config, "outbound.extra_trust_roots"))
}

/// One signer per `[[outbound.dkim]]` entry; key files are held to S4 like the TLS key.
fn dkim_signers(config: &Config) -> Result<HashMap<Domain, Arc<OutboundSigner>>, StartError> {
    let mut signers = HashMap::new();
    for (i, k) in config.outbound.dkim.iter().enumerate() {
        let key = format!("outbound.dkim[{i}].key");
        keys::check_key_permissions(&k.key)
            .map_err(|e| StartError::new(config, key.as_str(), Fault::Key(e)))?;
        let signer = OutboundSigner::load(k.domain.as_str(), &k.selector, &k.key, &k.headers)
            .map_err(|e| StartError::new(config, key.as_str(), Fault::Dkim(e)))?;
        signers.insert(k.domain.clone(), Arc::new(signer));
    }
    Ok(signers)
}

/// `domain_list.path` (none configured: an empty list), refused when a `[[policy]]` entry
/// would weaken a listed domain (T3, T4).
pub fn domain_list(config: &Config) -> Result<DomainListHandle, StartError> {
    let handle = DomainListHandle::load(config.domain_list.path.as_deref())
        .map_err(|e| StartError::new(config, "domain_list.path", Fault::DomainList(e)))?;
    let list = handle.current();
    if let Some((domain, level)) = policy::weakening_entries(&config.policies, &list)
        .into_iter()
        .next()
    {
        let target = PolicyTarget::Exact(domain.clone());
        let index = config
            .policies
            .iter()
            .position(|p| p.target == target)
            .unwrap_or_default();
        let fault = Fault::WeakensList {
            domain: domain.to_string(),
            level: level.to_string(),
        };
        return Err(StartError::new(
            config,
            format!("policy[{index}].tls"),
            fault,
        ));
    }
    Ok(handle)
}

/// The admin API's access rules: the token file is held to S4 like a private key.
fn admin_access(config: &Config) -> Result<Option<crate::admin::Access>, StartError> {
    let Some(admin) = &config.admin else {
        return Ok(None);
    };
    crate::admin::Access::from_config(admin)
        .map(Some)
        .map_err(|e| match e {
            AccessError::Token(e) => StartError::new(config, "admin.token_file", Fault::Key(e)),
            AccessError::Group(name, reason) => {
                StartError::new(config, "admin.socket_group", Fault::Group { name, reason })
            }
        })
}

/// A directory `serve` will create or write: it must be a directory if it exists, and this
/// user must be able to write it or, if it does not exist yet, the ancestor it would be
/// created in.
fn check_directory(config: &Config, key: &str, dir: &Path) -> Result<(), StartError> {
    let fail = |fault| Err(StartError::new(config, key, fault));
    let mut existing = dir;
    loop {
        match std::fs::metadata(existing) {
            Ok(meta) if meta.is_dir() => break,
            Ok(_) => {
                return fail(Fault::NotADirectory {
                    path: existing.display().to_string(),
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                existing = match existing.parent() {
                    Some(parent) if !parent.as_os_str().is_empty() => parent,
                    // A relative path's first component is created in the working directory.
                    _ => Path::new("."),
                };
            }
            Err(cause) => {
                return fail(Fault::Inaccessible {
                    path: existing.display().to_string(),
                    cause,
                })
            }
        }
    }
    if let Err(cause) = writable(existing) {
        return fail(Fault::Inaccessible {
            path: existing.display().to_string(),
            cause,
        });
    }
    Ok(())
}

/// access(2) for write and search permission, as the user running tlsgate.
fn writable(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other("the path contains a NUL byte"))?;
    // SAFETY: access(2) reads the NUL-terminated string, which lives until the call returns.
    let rc = unsafe { libc::access(c_path.as_ptr(), libc::W_OK | libc::X_OK) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The STARTTLS acceptors for `serve` and SIGHUP, one per listener of `listeners`, in order.
/// All present the pair `tls.cert` and `tls.key` name (`configured`, from [`server_tls`]), or
/// without `[tls]` a self-signed pair in `data_dir/certs`, generated on first start
/// (development only; needs `data_dir` to exist). A listener with a `client_ca` (its entry in
/// `client_cas`, from [`client_cas`]) also asks for a client certificate chaining to it (S2).
pub fn tls_acceptors(
    config: &Config,
    configured: Option<Arc<rustls::ServerConfig>>,
    listeners: &[ListenerConfig],
    client_cas: &[Option<ClientCa>],
) -> Result<Vec<TlsAcceptor>, StartError> {
    let server = match configured {
        Some(server) => server,
        None => generated_tls(config)?,
    };
    let mut acceptors = Vec::with_capacity(listeners.len());
    for (i, listener) in listeners.iter().enumerate() {
        let with_ca = listener
            .client_auth
            .as_ref()
            .zip(client_cas.get(i).and_then(Option::as_ref));
        let listener_server = match with_ca {
            Some((auth, ca)) => client_auth::server_config_with_client_ca(&server, ca, &auth.ca)
                .map_err(|e| {
                    StartError::new(config, format!("listener[{i}].client_ca"), Fault::Key(e))
                })?,
            None => server.clone(),
        };
        acceptors.push(TlsAcceptor::from(listener_server));
    }
    Ok(acceptors)
}

/// Reads `[tls]` and the `client_ca` files of `listeners` (the running ones: listener changes
/// wait for a restart) again (SIGHUP) and builds the acceptors from them.
pub fn load_tls(
    config: &Config,
    listeners: &[ListenerConfig],
) -> Result<Vec<TlsAcceptor>, StartError> {
    let cas = client_cas(config, listeners)?;
    tls_acceptors(config, server_tls(config)?, listeners, &cas)
}

/// Sets `tlsgate_tls_certificate_expiry_timestamp_seconds` from the certificate the listeners
/// present: `tls.cert`, or the generated one in `data_dir/certs` (issue 14 item 4). Called at
/// start and after every reload that installed a certificate; a leaf that x509-parser cannot
/// read (rustls took it) leaves the gauge unchanged and logs a warning.
pub fn record_certificate_expiry(config: &Config, metrics: &crate::metrics::Metrics) {
    let path = match &config.tls.cert_and_key {
        Some((cert, _)) => cert.clone(),
        None => config.generated_cert_dir().join("server.pem"),
    };
    match keys::certificate_not_after(&path) {
        Ok(not_after) => metrics.tls_certificate_expiry.set(not_after),
        Err(e) => tracing::warn!(error = %e, "the certificate's expiry could not be read"),
    }
}

/// No `[tls]`: a self-signed pair in `data_dir/certs`, generated on first start.
fn generated_tls(config: &Config) -> Result<Arc<rustls::ServerConfig>, StartError> {
    let fault = |e| StartError::new(config, "server.data_dir", Fault::Key(e));
    let (cert, key) =
        keys::ensure_self_signed(&config.generated_cert_dir(), &config.server.hostname)
            .map_err(fault)?;
    tracing::warn!(
        cert = %cert.display(),
        "no [tls] certificate configured: using a self-signed one (development only)"
    );
    crate::tls::server_config(&cert, &key).map_err(fault)
}

/// `serve`: creates a directory that [`ConfigFiles::load`] checked.
pub fn create_directory(config: &Config, key: &str, dir: &Path) -> Result<(), StartError> {
    std::fs::create_dir_all(dir).map_err(|cause| {
        StartError::new(
            config,
            key,
            Fault::Create {
                path: dir.display().to_string(),
                cause,
            },
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error;

    /// The error as the CLI prints it: every link of the chain (anyhow's `{:#}`).
    fn printed(e: impl Error + Send + Sync + 'static) -> String {
        format!("{:#}", anyhow::Error::from(e))
    }

    /// The error of a call that must fail (its success value need not be `Debug`).
    fn error_of<T, E>(result: Result<T, E>) -> E {
        match result {
            Ok(_) => panic!("expected an error"),
            Err(e) => e,
        }
    }

    fn enoent() -> std::io::Error {
        std::io::Error::from_raw_os_error(libc::ENOENT)
    }

    fn config(dir: &Path, extra: &str) -> Config {
        let text = format!(
            "[server]\ndata_dir = \"{}\"\n[[listener]]\nbind = \"127.0.0.1:0\"\nrole = \"inbound\"\n\
             [inbound]\nlocal_domains = [\"example.no\"]\n{extra}",
            dir.join("data").display()
        );
        let file = dir.join("tlsgate.toml");
        Config::from_toml(&text, &file.display().to_string()).expect("valid configuration")
    }

    fn load_err(config: &Config) -> StartError {
        match ConfigFiles::load(config) {
            Ok(_) => panic!("ConfigFiles::load accepted a broken configuration"),
            Err(e) => e,
        }
    }

    #[test]
    fn every_error_with_an_io_cause_says_it_once() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let missing = dir.path().join("missing");
        let mut printed_errors = vec![
            printed(Config::load(&missing).expect_err("no such file")),
            printed(keys::load_cert_chain(&missing).expect_err("no such file")),
            printed(error_of(OutboundSigner::load(
                "example.no",
                "s",
                &missing,
                &[],
            ))),
            printed(error_of(DomainListHandle::load(Some(&missing)))),
            printed(StoreError::from(enoent())),
            printed(crate::inbound::connection::ConnError::from(enoent())),
            printed(crate::delivery::AdminError::from(
                StoreError::from(enoent()),
            )),
        ];
        // The audit log cannot create its directory below the missing one's place if that is
        // a file: ENOTDIR instead of ENOENT.
        std::fs::write(&missing, "").expect("write a plain file");
        let audit = crate::audit::AuditLog::open(crate::audit::AuditConfig {
            dir: missing.join("audit"),
            max_file_bytes: 4096,
            retention: std::time::Duration::from_secs(86_400),
        });
        printed_errors.push(printed(error_of(audit)));
        for text in &printed_errors {
            assert_eq!(text.matches("(os error").count(), 1, "{text}");
        }
    }

    #[test]
    fn missing_files_name_the_file_key_and_reason() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let missing = dir.path().join("missing.pem");
        let cases = [
            (
                format!("[tls]\ncert = \"{0}\"\nkey = \"{0}\"\n", missing.display()),
                "tls.cert",
            ),
            (
                format!(
                    "[outbound]\nextra_trust_roots = [\"{}\"]\n",
                    missing.display()
                ),
                "outbound.extra_trust_roots",
            ),
            (
                format!(
                    "[[outbound.dkim]]\ndomain = \"example.no\"\nselector = \"s1\"\nkey = \"{}\"\n",
                    missing.display()
                ),
                "outbound.dkim[0].key",
            ),
            (
                format!("[domain_list]\npath = \"{}\"\n", missing.display()),
                "domain_list.path",
            ),
            (
                format!("[admin]\ntoken_file = \"{}\"\n", missing.display()),
                "admin.token_file",
            ),
        ];
        for (extra, key) in cases {
            let config = config(dir.path(), &extra);
            let e = load_err(&config);
            assert_eq!(e.key, key);
            assert_eq!(
                e.file,
                dir.path().join("tlsgate.toml").display().to_string()
            );
            let text = e.to_string();
            assert!(
                text.starts_with(&format!("{}: {key}: {}: ", e.file, missing.display())),
                "{text}"
            );
            assert_eq!(text.matches("(os error 2)").count(), 1, "{text}");
        }
        // Nothing was created on the way.
        assert!(!dir.path().join("data").exists());
    }

    #[test]
    fn a_file_in_place_of_a_directory_is_refused_before_anything_is_created() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let blocker = dir.path().join("blocker");
        std::fs::write(&blocker, "").expect("write a plain file");
        let config = config(
            dir.path(),
            &format!("[audit]\ndir = \"{}\"\n", blocker.join("audit").display()),
        );
        let e = load_err(&config);
        assert_eq!(e.key, "audit.dir");
        assert!(
            matches!(
                e.fault,
                Fault::NotADirectory { .. } | Fault::Inaccessible { .. }
            ),
            "{e}"
        );
        assert!(!dir.path().join("data").exists(), "data_dir was created");
    }

    #[test]
    fn a_policy_weakening_a_listed_domain_names_its_entry() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let list = dir.path().join("list.txt");
        std::fs::write(&list, "partner.no\n").expect("write the list");
        let config = config(
            dir.path(),
            &format!(
                "[domain_list]\npath = \"{}\"\n[[policy]]\ndomain = \"other.no\"\ntls = \"may\"\n\
                 [[policy]]\ndomain = \"partner.no\"\ntls = \"may\"\n",
                list.display()
            ),
        );
        let e = load_err(&config);
        assert_eq!(e.key, "policy[1].tls");
        assert!(e.to_string().contains("never below \"verify\""), "{e}");
    }
}
