//! The admin API used by `tlsgate queue list|show|retry|bounce|delete` and `tlsgate domains
//! reload`, and the CLI's client for it.
//!
//! JSON over HTTP/1.1, locked by default (issue 10 item 0b; S1, S4): the API listens on a Unix
//! socket (`admin.socket`, default `data_dir/admin.sock`, mode 0660) that only the service
//! user, root and members of `admin.socket_group` may use: the file mode keeps others from
//! connecting, and every request is checked again against the peer's `SO_PEERCRED` uid (a
//! socket made world-writable by mistake still refuses them). An optional TCP listener
//! (`admin.bind`) always needs the bearer token of `admin.token_file`, loopback included,
//! because any local user can reach loopback. Every request names its caller (uid and user, or
//! token name) and every state-changing action is written to the audit log with it.

use crate::audit::{AuditEvent, AuditLog};
use crate::config::{AdminSection, Config};
use crate::delivery::{AdminError, EngineHandle};
use crate::policy::domain_list::{DomainListHandle, ListError, Reloaded};
use crate::queue::message::{unix_now, QueueId};
use crate::reporting::tls::counters::{day_name, day_of, Day};
use crate::reporting::tls::{Sent, TlsReporting};
use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, FromRequestParts, Path as UrlPath, Query, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::IncomingStream;
use axum::Json;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, UnixListener};
use tokio_util::sync::CancellationToken;

/// One recipient in a queue listing.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecipientEntry {
    /// The recipient address.
    pub address: String,
    /// `pending`, `deferred`, `delivered` or `failed`.
    pub status: String,
    /// Delivery attempts so far.
    pub attempts: u32,
    /// The last reply or local reason; `None` before the first attempt.
    pub last_reply: Option<String>,
    /// Seconds until the next attempt (0: due now); absent when final.
    pub next_attempt_in: Option<u64>,
}

/// One message in a queue listing (never the body).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueueEntry {
    /// Queue id.
    pub id: String,
    /// Seconds since it was received.
    pub age_seconds: u64,
    /// Body size in octets.
    pub size: u64,
    /// The envelope sender, `<>` for the null sender.
    pub sender: String,
    /// RFC 8689 REQUIRETLS was requested.
    pub requiretls: bool,
    /// TLS version of the session it came in on; `None` for plaintext.
    pub received_tls: Option<String>,
    /// Its recipients, in order.
    pub recipients: Vec<RecipientEntry>,
}

/// Who may use the admin API besides root.
#[derive(Debug, Clone)]
pub struct Access {
    /// The uid tlsgate runs as (the service user).
    pub service_uid: u32,
    /// `admin.socket_group`: its gid and name.
    pub group: Option<(u32, String)>,
    /// The TCP listener's bearer token and its name (the token file's stem).
    pub token: Option<(String, String)>,
}

impl Access {
    /// Builds the rules from `[admin]`: reads the token file (permissions checked, S4) and
    /// looks the group up (an unknown group is a start-up error).
    pub fn from_config(admin: &AdminSection) -> Result<Access, AccessError> {
        let token = match &admin.token_file {
            Some(path) => {
                let name = path
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "token".into());
                Some((name, read_token(path).map_err(AccessError::Token)?))
            }
            None => None,
        };
        let group = match &admin.socket_group {
            Some(name) => {
                let group = nix::unistd::Group::from_name(name)
                    .map_err(|e| AccessError::Group(name.clone(), e.to_string()))?
                    .ok_or_else(|| AccessError::Group(name.clone(), "no such group".into()))?;
                Some((group.gid.as_raw(), name.clone()))
            }
            None => None,
        };
        Ok(Access {
            service_uid: nix::unistd::geteuid().as_raw(),
            group,
            token,
        })
    }

    /// Looks the local caller up once (the user database can be slow, e.g. over NSS/LDAP:
    /// call it off the async threads) and decides: root, the service user, and members of
    /// `admin.socket_group` (primary or supplementary) may use the socket. Returns the caller's
    /// name for logs and the audit log (`uid 1001 (kari)`) and whether it may proceed.
    pub fn check_local(&self, uid: u32, gid: u32) -> (String, bool) {
        let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .ok()
            .flatten();
        let who = format!(
            "uid {uid} ({})",
            user.as_ref().map_or("unknown user", |u| u.name.as_str())
        );
        (who, self.allows_local(uid, gid, user.as_ref()))
    }

    fn allows_local(&self, uid: u32, gid: u32, user: Option<&nix::unistd::User>) -> bool {
        if uid == 0 || uid == self.service_uid {
            return true;
        }
        let Some((admin_gid, _)) = &self.group else {
            return false;
        };
        if gid == *admin_gid {
            return true;
        }
        // Supplementary groups come from the group database, looked up per request so that
        // adding or removing an administrator needs no restart.
        let Some(user) = user else {
            return false;
        };
        let Ok(name) = std::ffi::CString::new(user.name.as_str()) else {
            return false;
        };
        nix::unistd::getgrouplist(&name, user.gid)
            .is_ok_and(|groups| groups.iter().any(|g| g.as_raw() == *admin_gid))
    }
}

/// Why the admin API's access rules could not be set up. The cause is part of the message,
/// not also a `source()` (it would be printed twice).
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    /// The token file could not be read or is readable by others (S4).
    #[error("admin.token_file: {0}")]
    Token(crate::tls::KeyError),
    /// The group does not exist or cannot be looked up (group name, reason).
    #[error("admin.socket_group: {0}: {1}")]
    Group(String, String),
}

/// What the admin API's handlers share.
#[derive(Clone)]
pub struct AdminState {
    /// Queue operations.
    pub engine: EngineHandle,
    /// The domain list in force.
    pub domain_list: Arc<DomainListHandle>,
    /// `tlsgate domains reload`: logged, counted and audited by the caller's reload
    /// (`ops::domain_list`); on error the old list stays in force.
    pub reload_list: Arc<dyn Fn() -> Result<Reloaded, ListError> + Send + Sync>,
    /// The audit log (S1); `None` in tests without one.
    pub audit: Option<Arc<AuditLog>>,
    /// TLS reporting (`tlsgate tls-report`); `None` when `[tls_reporting]` is off.
    pub tls_reporting: Option<Arc<TlsReporting>>,
    access: Arc<Access>,
}

impl AdminState {
    /// The state for `serve`; `access` decides who may call it.
    pub fn new(
        engine: EngineHandle,
        domain_list: Arc<DomainListHandle>,
        reload_list: Arc<dyn Fn() -> Result<Reloaded, ListError> + Send + Sync>,
        audit: Option<Arc<AuditLog>>,
        access: Access,
    ) -> AdminState {
        AdminState {
            engine,
            domain_list,
            reload_list,
            audit,
            tls_reporting: None,
            access: Arc::new(access),
        }
    }

    /// The same state, answering `tlsgate tls-report` with `reporting`.
    pub fn with_tls_reporting(mut self, reporting: Option<Arc<TlsReporting>>) -> AdminState {
        self.tls_reporting = reporting;
        self
    }
}

/// `tlsgate tls-report show`: the counters of the running day and of every day whose reports
/// are not all finished.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TlsReportView {
    /// The running UTC day, `YYYY-MM-DD`.
    pub today: String,
    /// Oldest first.
    pub days: Vec<Day>,
}

/// The other end of an admin connection, as the listener saw it.
#[derive(Debug, Clone)]
pub enum Peer {
    /// A process on the Unix socket, with its `SO_PEERCRED` credentials (`None` when the
    /// kernel could not tell: refused).
    Local(Option<(u32, u32)>),
    /// A TCP client.
    Network(SocketAddr),
}

impl Connected<IncomingStream<'_, UnixListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, UnixListener>) -> Peer {
        Peer::Local(stream.io().peer_cred().ok().map(|c| (c.uid(), c.gid())))
    }
}

impl Connected<IncomingStream<'_, TcpListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, TcpListener>) -> Peer {
        Peer::Network(*stream.remote_addr())
    }
}

/// An authorised caller, named for the log and the audit log: `uid 0 (root)` or
/// `token ops from 127.0.0.1:41234`. Extracting it is the one place access is decided.
pub struct Caller(pub String);

impl FromRequestParts<AdminState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AdminState) -> Result<Caller, ApiError> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<Peer>>()
            .map(|c| c.0.clone())
            .ok_or_else(|| error(StatusCode::FORBIDDEN, "unknown peer"))?;
        match peer {
            Peer::Local(Some((uid, gid))) => {
                let access = state.access.clone();
                let (who, allowed) =
                    tokio::task::spawn_blocking(move || access.check_local(uid, gid))
                        .await
                        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
                if allowed {
                    Ok(Caller(who))
                } else {
                    tracing::warn!(caller = %who, "admin API: local user refused");
                    refused(state, parts, &who);
                    Err(error(
                        StatusCode::FORBIDDEN,
                        format!("{who} may not use the admin API (not root, the service user or in admin.socket_group)"),
                    ))
                }
            }
            Peer::Local(None) => Err(error(
                StatusCode::FORBIDDEN,
                "the caller's credentials are unknown",
            )),
            Peer::Network(addr) => {
                let given = parts
                    .headers
                    .get(axum::http::header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .unwrap_or("");
                match &state.access.token {
                    Some((name, expected)) if constant_time_eq(given, expected) => {
                        Ok(Caller(format!("token {name} from {addr}")))
                    }
                    _ => {
                        tracing::warn!(peer = %addr, "admin API: bad or missing token");
                        refused(state, parts, &format!("bad or missing token from {addr}"));
                        Err(error(StatusCode::UNAUTHORIZED, "bad or missing token"))
                    }
                }
            }
        }
    }
}

/// A refused admin request is a security event too (S1): who tried what.
fn refused(state: &AdminState, parts: &Parts, client: &str) {
    crate::audit::submit(
        &state.audit,
        AuditEvent::AdminRefused {
            request: format!("{} {}", parts.method, parts.uri.path()),
            client: client.to_string(),
        },
    );
}

/// Compares without an early exit, so the time taken says nothing about the token.
fn constant_time_eq(given: &str, expected: &str) -> bool {
    given.len() == expected.len()
        && given
            .bytes()
            .zip(expected.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// Reads the token file (permissions checked like a private key, S4).
pub fn read_token(path: &std::path::Path) -> Result<String, crate::tls::KeyError> {
    crate::tls::keys::check_key_permissions(path)?;
    let text = std::fs::read_to_string(path).map_err(|e| crate::tls::KeyError::Rejected {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    let token = text.trim().to_string();
    if token.len() < 16 {
        return Err(crate::tls::KeyError::Rejected {
            path: path.display().to_string(),
            reason: "the admin token must be at least 16 characters".into(),
        });
    }
    Ok(token)
}

/// An error answer: status and a message, sent as `{"error": "..."}`.
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> ApiError {
    ApiError(status, message.into())
}

fn admin_error(e: AdminError) -> ApiError {
    match e {
        AdminError::NotFound => error(StatusCode::NOT_FOUND, e.to_string()),
        AdminError::Busy => error(StatusCode::CONFLICT, e.to_string()),
        AdminError::Store(_) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

fn audit(state: &AdminState, action: &str, target: &str, client: &str) {
    tracing::info!(action, target, client, "admin action");
    if let Some(log) = &state.audit {
        if let Err(e) = log.record(AuditEvent::AdminAction {
            action: action.to_string(),
            target: target.to_string(),
            client: client.to_string(),
        }) {
            tracing::error!(error = %e, "audit log write failed");
        }
    }
}

/// Reads the whole queue for a listing (blocking: run off the async threads).
fn list_queue(store: &dyn crate::queue::Store) -> Result<Vec<QueueEntry>, String> {
    let now = unix_now();
    let mut out = Vec::new();
    for id in store.message_ids().map_err(|e| e.to_string())? {
        let Some(meta) = store.message(&id).map_err(|e| e.to_string())? else {
            continue;
        };
        let states = store.recipient_states(&id).map_err(|e| e.to_string())?;
        let recipients = meta
            .recipients
            .iter()
            .zip(states.iter())
            .map(|(r, s)| RecipientEntry {
                address: r.address.clone(),
                status: s.status.to_string(),
                attempts: s.attempts,
                last_reply: s.last_reply.clone(),
                next_attempt_in: (!s.status.is_final()).then(|| s.next_attempt.saturating_sub(now)),
            })
            .collect();
        out.push(QueueEntry {
            id: id.to_string(),
            age_seconds: now.saturating_sub(meta.reception.received_at),
            size: meta.size,
            sender: meta.sender.clone().unwrap_or_else(|| "<>".into()),
            requiretls: meta.requiretls,
            received_tls: meta.reception.tls.as_ref().map(|t| t.version.clone()),
            recipients,
        });
    }
    Ok(out)
}

async fn queue(state: &AdminState) -> Result<Vec<QueueEntry>, ApiError> {
    let store = state.engine.store();
    tokio::task::spawn_blocking(move || list_queue(store.as_ref()))
        .await
        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e))
}

fn parse_id(id: &str) -> Result<QueueId, ApiError> {
    QueueId::parse(id).ok_or_else(|| error(StatusCode::BAD_REQUEST, "not a queue id"))
}

type AdminResult = Result<Response, ApiError>;

async fn get_queue(State(state): State<AdminState>, _caller: Caller) -> AdminResult {
    Ok(Json(queue(&state).await?).into_response())
}

async fn get_message(
    State(state): State<AdminState>,
    _caller: Caller,
    UrlPath(id): UrlPath<String>,
) -> AdminResult {
    let id = parse_id(&id)?;
    let entry = queue(&state)
        .await?
        .into_iter()
        .find(|e| e.id == id.as_str())
        .ok_or_else(|| error(StatusCode::NOT_FOUND, "no such message in the queue"))?;
    Ok(Json(entry).into_response())
}

async fn act(
    State(state): State<AdminState>,
    Caller(caller): Caller,
    UrlPath((id, action)): UrlPath<(String, String)>,
) -> AdminResult {
    let qid = parse_id(&id)?;
    let result = match action.as_str() {
        "retry" => state.engine.retry_now(&qid).await,
        "bounce" => {
            state
                .engine
                .bounce(&qid, "returned to the sender by the mail administrator")
                .await
        }
        "delete" => state.engine.delete(&qid).await,
        _ => return Err(error(StatusCode::NOT_FOUND, "unknown action")),
    };
    result.map_err(admin_error)?;
    audit(&state, &format!("queue {action}"), &id, &caller);
    Ok(Json(serde_json::json!({ "ok": true, "id": id, "action": action })).into_response())
}

async fn get_domains(State(state): State<AdminState>, _caller: Caller) -> AdminResult {
    let list = state.domain_list.current();
    let names: Vec<&str> = list.iter().map(|d| d.domain.as_str()).collect();
    Ok(Json(names).into_response())
}

async fn reload_domains(State(state): State<AdminState>, Caller(caller): Caller) -> AdminResult {
    let outcome = (state.reload_list)();
    audit(&state, "domains reload", "domain list", &caller);
    match outcome {
        Ok(done) => {
            let result = done.to_string();
            Ok(Json(serde_json::json!({ "ok": true, "result": result })).into_response())
        }
        Err(e) => Err(error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string())),
    }
}

fn tls_reporting(state: &AdminState) -> Result<&Arc<TlsReporting>, ApiError> {
    state.tls_reporting.as_ref().ok_or_else(|| {
        error(
            StatusCode::NOT_FOUND,
            "TLS reporting is off ([tls_reporting] enabled = true turns it on)",
        )
    })
}

async fn get_tls_report(State(state): State<AdminState>, _caller: Caller) -> AdminResult {
    let reporting = tls_reporting(&state)?;
    let today = day_of(std::time::SystemTime::now());
    let days = reporting
        .counters()
        .days()
        .into_iter()
        .filter(|(n, d)| *n >= today || d.domains.values().any(|x| !x.report.finished))
        .map(|(_, d)| d)
        .collect();
    let view = TlsReportView {
        today: day_name(today),
        days,
    };
    Ok(Json(view).into_response())
}

/// `?include_today=true`: also the running day so far.
#[derive(Debug, Deserialize)]
struct SendOptions {
    #[serde(default)]
    include_today: bool,
}

async fn send_tls_report(
    State(state): State<AdminState>,
    Caller(caller): Caller,
    Query(options): Query<SendOptions>,
) -> AdminResult {
    let reporting = tls_reporting(&state)?;
    let target = if options.include_today {
        "due reports and today's so far"
    } else {
        "due reports"
    };
    audit(&state, "tls-report send", target, &caller);
    let sent: Vec<Sent> = reporting.send_due(options.include_today).await;
    Ok(Json(sent).into_response())
}

fn router(state: AdminState) -> axum::Router {
    axum::Router::new()
        .route("/queue", get(get_queue))
        .route("/queue/{id}", get(get_message))
        .route("/queue/{id}/{action}", post(act))
        .route("/domains", get(get_domains))
        .route("/domains/reload", post(reload_domains))
        .route("/tls-report", get(get_tls_report))
        .route("/tls-report/send", post(send_tls_report))
        .with_state(state)
}

/// Where the admin API listens.
pub enum AdminListener {
    /// The Unix socket and its path (removed again at shutdown).
    Socket(UnixListener, PathBuf),
    /// A TCP listener (`admin.bind`; every request needs the bearer token).
    Tcp(TcpListener),
}

/// Serves the admin API on one listener until `shutdown`.
pub async fn serve(listener: AdminListener, state: AdminState, shutdown: CancellationToken) {
    let app = router(state);
    let stop = async move { shutdown.cancelled().await };
    let result = match listener {
        AdminListener::Socket(listener, path) => {
            let result = axum::serve(listener, app.into_make_service_with_connect_info::<Peer>())
                .with_graceful_shutdown(stop)
                .await;
            let _ = std::fs::remove_file(&path);
            result
        }
        AdminListener::Tcp(listener) => {
            axum::serve(listener, app.into_make_service_with_connect_info::<Peer>())
                .with_graceful_shutdown(stop)
                .await
        }
    };
    if let Err(e) = result {
        tracing::error!(error = %e, "admin API stopped");
    }
}

/// Creates the admin socket at `path` with `mode` and (when given) group `gid`, without a
/// moment in which it has wider permissions: it is bound under a temporary name, restricted,
/// then renamed into place. A stale socket from a crash is replaced; a live one (another
/// tlsgate answers on it) or a file that is not a socket is an error.
pub async fn bind_socket(
    path: &Path,
    mode: u32,
    gid: Option<u32>,
) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let fail = |what: &str, e: std::io::Error| {
        std::io::Error::new(e.kind(), format!("{}: {what}: {e}", path.display()))
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| fail("cannot create its directory", e))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if tokio::net::UnixStream::connect(path).await.is_ok() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    format!(
                        "{}: another tlsgate is serving this admin socket",
                        path.display()
                    ),
                ));
            }
            std::fs::remove_file(path).map_err(|e| fail("cannot remove the stale socket", e))?;
        }
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{}: exists and is not a socket", path.display()),
            ))
        }
        Err(_) => {}
    }
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".new");
    let temporary = PathBuf::from(temporary);
    let _ = std::fs::remove_file(&temporary);
    // Until the rename, the socket has the umask's mode under a name no client uses; anyone who
    // connects there anyway is still refused by the per-request SO_PEERCRED check.
    let listener = UnixListener::bind(&temporary).map_err(|e| fail("cannot bind", e))?;
    let setup = || -> std::io::Result<()> {
        if let Some(gid) = gid {
            std::os::unix::fs::chown(&temporary, None, Some(gid))?;
        }
        std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(mode))?;
        std::fs::rename(&temporary, path)
    };
    if let Err(e) = setup() {
        let _ = std::fs::remove_file(&temporary);
        return Err(fail("cannot set up", e));
    }
    Ok(listener)
}

/// The CLI side: one request to the admin API of the configured server, on its Unix socket
/// when it has one, else on TCP with the token. Returns the HTTP status code and the body.
/// Every step is bounded (30 s); errors say what to check (is it running, who may connect).
pub async fn request(config: &Config, method: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let admin = config.admin.as_ref().ok_or_else(|| {
        anyhow::anyhow!(
            "{}: admin.enabled = false: the admin API is off, so the queue cannot be managed",
            config.source
        )
    })?;
    let limit = Duration::from_secs(30);
    let call = async {
        if let Some(socket) = &admin.socket {
            let stream = tokio::net::UnixStream::connect(socket).await.map_err(|e| {
                let hint = match e.kind() {
                    std::io::ErrorKind::PermissionDenied => {
                        " (run as root, the service user or a member of admin.socket_group)"
                    }
                    _ => " (is tlsgate running with this config?)",
                };
                anyhow::anyhow!("admin socket {}: {e}{hint}", socket.display())
            })?;
            send(stream, method, path, None).await
        } else if let Some(addr) = admin.bind {
            let token = admin.token_file.as_deref().map(read_token).transpose()?;
            let stream = tokio::net::TcpStream::connect(addr)
                .await
                .map_err(|e| anyhow::anyhow!("admin API at {addr}: {e} (is tlsgate running?)"))?;
            send(stream, method, path, token.as_deref()).await
        } else {
            anyhow::bail!("{}: [admin] has neither socket nor bind", config.source)
        }
    };
    tokio::time::timeout(limit, call)
        .await
        .map_err(|_| anyhow::anyhow!("the admin API did not answer within {limit:?}"))?
}

/// One HTTP/1.1 request over an open stream, with hyper's client connection.
async fn send<S>(
    stream: S,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> anyhow::Result<(u16, String)>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use http_body_util::BodyExt;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    let driver = tokio::spawn(connection);
    let mut request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, "tlsgate-admin");
    if let Some(token) = token {
        request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = request.body(http_body_util::Empty::<bytes::Bytes>::new())?;
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    driver.abort();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// `tlsgate tls-report show` as text: per day and policy domain, each policy's counts, its
/// failures by result type, and where the report stands.
pub fn render_tls_report(view: &TlsReportView) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    if view.days.is_empty() {
        let _ = writeln!(out, "no TLS report counters (today is {})", view.today);
        return out;
    }
    for day in &view.days {
        let running = if day.day == view.today {
            " (running)"
        } else {
            ""
        };
        let _ = writeln!(out, "{}{running}", day.day);
        for (domain, d) in &day.domains {
            let state = if d.report.finished {
                "finished".to_string()
            } else if day.day == view.today {
                "sent after the day ends".to_string()
            } else {
                format!("due ({} tries)", d.report.tries)
            };
            let sent = if d.report.sent_to.is_empty() {
                String::new()
            } else {
                format!(", sent to {}", d.report.sent_to.join(" "))
            };
            let note = d
                .report
                .note
                .as_deref()
                .map(|n| format!(", {n}"))
                .unwrap_or_default();
            let _ = writeln!(out, "  {domain}  report: {state}{sent}{note}");
            for p in &d.policies {
                let _ = writeln!(
                    out,
                    "    {:<16} successful {:>6}  failed {:>6}",
                    p.policy.policy_type.as_str(),
                    p.successes,
                    p.failures
                );
                for f in &p.failure_details {
                    let _ = writeln!(
                        out,
                        "      {:>6} {} {} {}",
                        f.count,
                        f.result_type.as_str(),
                        f.receiving_mx_hostname,
                        f.receiving_ip.map(|i| i.to_string()).unwrap_or_default()
                    );
                }
            }
        }
    }
    out
}

/// `mailq`-style rendering of a queue listing.
pub fn render_queue(entries: &[QueueEntry]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    if entries.is_empty() {
        out.push_str("Mail queue is empty\n");
        return out;
    }
    for e in entries {
        let _ = writeln!(
            out,
            "{}  {:>8}  {:>9}  {}{}",
            e.id,
            humantime::format_duration(Duration::from_secs(e.age_seconds)).to_string(),
            e.size,
            e.sender,
            if e.requiretls { "  REQUIRETLS" } else { "" }
        );
        for r in &e.recipients {
            let next = r
                .next_attempt_in
                .map(|s| format!(", next in {s}s"))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "    {}  ({}, {} attempts{}){}",
                r.address,
                r.status,
                r.attempts,
                next,
                r.last_reply
                    .as_deref()
                    .map(|l| format!(": {l}"))
                    .unwrap_or_default()
            );
        }
    }
    let _ = writeln!(out, "-- {} messages", entries.len());
    out
}
