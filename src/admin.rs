//! The admin API used by `tlsgate queue list|show|retry|bounce|delete` and `tlsgate domains
//! reload|status`, and the CLI's client for it.
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
use crate::queue::message::{unix_now, QueueId, RecipientStatus};
use crate::reporting::dmarc::DmarcReporting;
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
    /// The RFC 3463 enhanced status code of the last result (`4.2.1`); `None` before the first
    /// attempt.
    #[serde(default)]
    pub last_status: Option<String>,
    /// Seconds until the next attempt (0: due now); absent when final.
    pub next_attempt_in: Option<u64>,
    /// The next attempt as RFC 3339 UTC; absent when final or held.
    #[serde(default)]
    pub next_attempt_at: Option<String>,
}

/// One message in a queue listing (never the body).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueueEntry {
    /// Queue id.
    pub id: String,
    /// Seconds since it was received.
    pub age_seconds: u64,
    /// When it was received, RFC 3339 UTC.
    #[serde(default)]
    pub received_at: String,
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

/// Which messages a listing or an action is about (issue 14 item 2): the query parameters of
/// `GET /queue` and `POST /queue/bulk/{action}`, and the `tlsgate queue` options. Every
/// condition given must hold; none given means every message.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Selection {
    /// The envelope sender, exactly (case-insensitive); `<>` for the null sender.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// A recipient address, exactly (case-insensitive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// A recipient domain (case-insensitive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// At least this old (a duration: `30m`, `2h`, `5d`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub older_than: Option<String>,
    /// A recipient in this state: one of [`STATUSES`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// These queue ids, comma-separated (actions only; not together with the conditions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ids: Option<String>,
    /// Every message: required for an action without ids or conditions, so that a forgotten
    /// filter never touches the whole queue.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub all: bool,
}

/// The recipient states `--status` takes (as [`crate::queue::RecipientStatus`] prints them).
pub const STATUSES: [&str; 5] = ["pending", "deferred", "held", "delivered", "failed"];

/// The queue actions (`POST /queue/{id}/{action}` and `POST /queue/bulk/{action}`).
pub const ACTIONS: [&str; 5] = ["retry", "bounce", "delete", "hold", "release"];

impl Selection {
    /// True when a condition (not ids, not `all`) is given.
    pub fn has_conditions(&self) -> bool {
        self.from.is_some()
            || self.to.is_some()
            || self.domain.is_some()
            || self.older_than.is_some()
            || self.status.is_some()
    }

    /// Checks the values: a duration that parses, a known status. Returns the age bound.
    pub fn check(&self) -> Result<Option<Duration>, String> {
        if let Some(status) = &self.status {
            if !STATUSES.contains(&status.as_str()) {
                return Err(format!(
                    "status {status:?}: use one of {}",
                    STATUSES.join(", ")
                ));
            }
        }
        self.older_than
            .as_deref()
            .map(|d| {
                humantime::parse_duration(d)
                    .map_err(|e| format!("older_than {d:?}: not a duration ({e})"))
            })
            .transpose()
    }

    /// Does `entry` meet every condition? `older_than` is the checked age bound.
    pub fn matches(&self, entry: &QueueEntry, older_than: Option<Duration>) -> bool {
        let same = |a: &str, b: &str| a.eq_ignore_ascii_case(b.trim_end_matches('.'));
        if let Some(ids) = &self.ids {
            if !ids.split(',').any(|id| id.trim() == entry.id) {
                return false;
            }
        }
        if let Some(from) = &self.from {
            if !same(&entry.sender, from) {
                return false;
            }
        }
        if let Some(to) = &self.to {
            if !entry.recipients.iter().any(|r| same(&r.address, to)) {
                return false;
            }
        }
        if let Some(domain) = &self.domain {
            let in_domain = |r: &RecipientEntry| {
                r.address
                    .rsplit_once('@')
                    .is_some_and(|(_, d)| same(d, domain))
            };
            if !entry.recipients.iter().any(in_domain) {
                return false;
            }
        }
        if let Some(age) = older_than {
            if entry.age_seconds < age.as_secs() {
                return false;
            }
        }
        if let Some(status) = &self.status {
            if !entry.recipients.iter().any(|r| &r.status == status) {
                return false;
            }
        }
        true
    }

    /// The ids and conditions given, as (query name, value), in one fixed order.
    fn given(&self) -> impl Iterator<Item = (&'static str, &String)> {
        [
            ("ids", &self.ids),
            ("from", &self.from),
            ("to", &self.to),
            ("domain", &self.domain),
            ("older_than", &self.older_than),
            ("status", &self.status),
        ]
        .into_iter()
        .filter_map(|(name, value)| value.as_ref().map(|v| (name, v)))
    }

    /// How the selection reads in the log and the audit log: `domain=partner.no
    /// older_than=2h`, `ids=…` or `all`.
    pub fn describe(&self) -> String {
        let parts: Vec<String> = self
            .given()
            .map(|(name, value)| format!("{name}={value}"))
            .collect();
        if parts.is_empty() {
            "all".to_string()
        } else {
            parts.join(" ")
        }
    }

    /// As [`Selection::describe`], for the audit log and the log: the local parts of
    /// `from`/`to` addresses are left out (`to=…@partner.no`), as the audit log records
    /// domains, hosts and queue ids, never addresses (S1 with data minimisation).
    pub fn describe_without_addresses(&self) -> String {
        let masked = |value: &Option<String>| {
            value.as_ref().map(|v| match v.rsplit_once('@') {
                Some((_, domain)) => format!("…@{domain}"),
                None if v == "<>" || v.is_empty() => v.clone(),
                None => "…".to_string(),
            })
        };
        Selection {
            from: masked(&self.from),
            to: masked(&self.to),
            ..self.clone()
        }
        .describe()
    }

    /// The query string (`from=…&all=true`), percent-encoded; empty when nothing is selected.
    pub fn to_query(&self) -> String {
        let mut parts: Vec<String> = self
            .given()
            .map(|(name, value)| format!("{name}={}", percent_encode(value)))
            .collect();
        if self.all {
            parts.push("all=true".to_string());
        }
        parts.join("&")
    }
}

/// Percent-encodes everything but the unreserved characters (RFC 3986 2.3).
fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
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
    /// DMARC reporting (`tlsgate dmarc-report`); `None` when `[dmarc_reporting]` is off.
    pub dmarc_reporting: Option<Arc<DmarcReporting>>,
    /// `tlsgate domains status` (issue 15 items 3 and 5): the list's source, its last fetch
    /// and the partner check's verdicts, as JSON (`ops::domains_status::DomainsStatus`, made
    /// by `server`: `ops` uses `startup`, which uses this module, so the type is not named
    /// here). Without [`AdminState::with_domains_status`]: the list in force only.
    pub domains_status: Arc<dyn Fn() -> serde_json::Value + Send + Sync>,
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
        let list = domain_list.clone();
        let domains_status = Arc::new(move || {
            serde_json::json!({
                "path": list.path().map(|p| p.display().to_string()),
                "domains": list.current().len(),
                "partners": [],
            })
        });
        AdminState {
            engine,
            domain_list,
            reload_list,
            audit,
            tls_reporting: None,
            dmarc_reporting: None,
            domains_status,
            access: Arc::new(access),
        }
    }

    /// The same state, answering `tlsgate tls-report` with `reporting`.
    pub fn with_tls_reporting(mut self, reporting: Option<Arc<TlsReporting>>) -> AdminState {
        self.tls_reporting = reporting;
        self
    }

    /// The same state, answering `tlsgate dmarc-report` with `reporting`.
    pub fn with_dmarc_reporting(mut self, reporting: Option<Arc<DmarcReporting>>) -> AdminState {
        self.dmarc_reporting = reporting;
        self
    }

    /// The same state, answering `tlsgate domains status` with what `status` returns.
    pub fn with_domains_status(
        mut self,
        status: Arc<dyn Fn() -> serde_json::Value + Send + Sync>,
    ) -> AdminState {
        self.domains_status = status;
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

/// `tlsgate dmarc-report show`: the counters of the running day and of every day whose
/// reports are not all finished.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DmarcReportView {
    /// The running UTC day, `YYYY-MM-DD`.
    pub today: String,
    /// Oldest first.
    pub days: Vec<crate::reporting::dmarc::counters::Day>,
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
        AdminError::Busy | AdminError::Held | AdminError::NotHeld => {
            error(StatusCode::CONFLICT, e.to_string())
        }
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
        // Removed since the ids were read: not listed.
        out.extend(queue_entry(store, &id, now)?);
    }
    Ok(out)
}

/// One message's listing entry, `None` when it is not queued (blocking). `GET /queue/{id}`
/// reads only this message, not the whole queue.
fn queue_entry(
    store: &dyn crate::queue::Store,
    id: &QueueId,
    now: u64,
) -> Result<Option<QueueEntry>, String> {
    let Some(meta) = store.message(id).map_err(|e| e.to_string())? else {
        return Ok(None);
    };
    let states = store.recipient_states(id).map_err(|e| e.to_string())?;
    let recipients = meta
        .recipients
        .iter()
        .zip(states.iter())
        .map(|(r, s)| {
            let open = !s.status.is_final();
            let planned = open && s.status != RecipientStatus::Held;
            RecipientEntry {
                address: r.address.clone(),
                status: s.status.to_string(),
                attempts: s.attempts,
                last_reply: s.last_reply.clone(),
                last_status: s.last_status.clone(),
                next_attempt_in: open.then(|| s.next_attempt.saturating_sub(now)),
                next_attempt_at: planned.then(|| rfc3339(s.next_attempt.max(now))),
            }
        })
        .collect();
    Ok(Some(QueueEntry {
        id: id.to_string(),
        age_seconds: now.saturating_sub(meta.reception.received_at),
        received_at: rfc3339(meta.reception.received_at),
        size: meta.size,
        sender: meta.sender.clone().unwrap_or_else(|| "<>".into()),
        requiretls: meta.requiretls,
        received_tls: meta.reception.tls.as_ref().map(|t| t.version.clone()),
        recipients,
    }))
}

/// RFC 3339 UTC of a Unix second (issue 14 item 2: absolute times in listings).
fn rfc3339(unix_seconds: u64) -> String {
    let at = std::time::UNIX_EPOCH + Duration::from_secs(unix_seconds);
    // Whole seconds: the queue records nothing finer.
    let text = crate::datetime::format_rfc3339(at);
    match text.split_once('.') {
        Some((seconds, _)) => format!("{seconds}Z"),
        None => text,
    }
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

/// The messages `selection` picks, or `400` when its values do not parse.
async fn selected(state: &AdminState, selection: &Selection) -> Result<Vec<QueueEntry>, ApiError> {
    let older_than = selection
        .check()
        .map_err(|e| error(StatusCode::BAD_REQUEST, e))?;
    let mut entries = queue(state).await?;
    entries.retain(|e| selection.matches(e, older_than));
    Ok(entries)
}

async fn get_queue(
    State(state): State<AdminState>,
    _caller: Caller,
    Query(selection): Query<Selection>,
) -> AdminResult {
    Ok(Json(selected(&state, &selection).await?).into_response())
}

/// What a bulk action did (issue 14 item 2: how many it touched).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BulkResult {
    /// The action.
    pub action: String,
    /// The selection, as [`Selection::describe`] writes it.
    pub selection: String,
    /// Messages the selection picked.
    pub matched: usize,
    /// Messages the action was done to.
    pub done: usize,
    /// Ids being delivered at that moment (not touched; try again).
    pub busy: Vec<String>,
    /// Ids no longer (or never) in the queue.
    pub missing: Vec<String>,
    /// Ids the store failed on, with the error.
    pub failed: Vec<String>,
    /// `retry`: held ids, not retried (release them first).
    #[serde(default)]
    pub held: Vec<String>,
    /// `release`: ids that were not held, so not released.
    #[serde(default)]
    pub not_held: Vec<String>,
}

/// Runs one queue action on one message.
async fn run_action(state: &AdminState, action: &str, id: &QueueId) -> Result<(), AdminError> {
    match action {
        "retry" => state.engine.retry_now(id).await,
        "bounce" => {
            state
                .engine
                .bounce(id, "returned to the sender by the mail administrator")
                .await
        }
        "delete" => state.engine.delete(id).await,
        "hold" => state.engine.hold(id).await,
        _ => state.engine.release_held(id).await,
    }
}

/// `POST /queue/bulk/{action}?…`: the action on the given ids, or on every message the
/// conditions pick; without either, only with `all=true`. Audited once, with the selection.
async fn bulk(
    State(state): State<AdminState>,
    Caller(caller): Caller,
    UrlPath(action): UrlPath<String>,
    Query(selection): Query<Selection>,
) -> AdminResult {
    if !ACTIONS.contains(&action.as_str()) {
        return Err(error(StatusCode::NOT_FOUND, "unknown action"));
    }
    if selection.ids.is_some() && (selection.has_conditions() || selection.all) {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "give queue ids or conditions (--from, --to, --domain, --older-than, --status), \
             not both",
        ));
    }
    if selection.ids.is_none() && !selection.has_conditions() && !selection.all {
        return Err(error(
            StatusCode::BAD_REQUEST,
            format!(
                "refusing to {action} every message without --all: give queue ids, a \
                 condition (--from, --to, --domain, --older-than, --status) or --all"
            ),
        ));
    }
    let mut result = BulkResult {
        action: action.clone(),
        selection: selection.describe(),
        ..BulkResult::default()
    };
    let targets: Vec<String> = match &selection.ids {
        Some(ids) => ids
            .split(',')
            .map(str::trim)
            .filter(|id| !id.is_empty())
            .map(str::to_string)
            .collect(),
        None => {
            // Only held mail can be released (postsuper -H): a condition picks among the held
            // messages, so the count says how many were released, not how many matched.
            let mut picking = selection.clone();
            if action == "release" && picking.status.is_none() {
                picking.status = Some(RecipientStatus::Held.to_string());
            }
            selected(&state, &picking)
                .await?
                .into_iter()
                .map(|e| e.id)
                .collect()
        }
    };
    // Every id is checked before anything is done: a bad id among good ones used to fail the
    // request half way, after the ids before it had been acted on — and without the audit
    // entry, which is written at the end (review finding; S1). The same id twice is one message.
    let mut ids: Vec<QueueId> = Vec::with_capacity(targets.len());
    let mut seen = std::collections::HashSet::with_capacity(targets.len());
    for id in &targets {
        let qid = QueueId::parse(id).ok_or_else(|| {
            error(
                StatusCode::BAD_REQUEST,
                format!("{id:?} is not a queue id; nothing was done"),
            )
        })?;
        if seen.insert(qid.clone()) {
            ids.push(qid);
        }
    }
    result.matched = ids.len();
    for qid in ids {
        let id = qid.to_string();
        match run_action(&state, &action, &qid).await {
            Ok(()) => result.done += 1,
            Err(AdminError::Busy) => result.busy.push(id),
            Err(AdminError::NotFound) => result.missing.push(id),
            Err(AdminError::Held) => result.held.push(id),
            Err(AdminError::NotHeld) => result.not_held.push(id),
            Err(e) => result.failed.push(format!("{id}: {e}")),
        }
    }
    audit(
        &state,
        &format!("queue {action}"),
        &format!(
            "{} ({} of {} messages)",
            selection.describe_without_addresses(),
            result.done,
            result.matched
        ),
        &caller,
    );
    Ok(Json(result).into_response())
}

/// `GET /queue/{id}/headers`: the stored header section, `Received:` line first (like
/// `postcat -hq`). It shows content (subjects, names), so it is audited (S1).
async fn get_headers(
    State(state): State<AdminState>,
    Caller(caller): Caller,
    UrlPath(id): UrlPath<String>,
) -> AdminResult {
    let qid = parse_id(&id)?;
    let store = state.engine.store();
    let read = tokio::task::spawn_blocking(move || {
        let Some(meta) = store.message(&qid)? else {
            return Ok(None);
        };
        let body = store.body(&qid)?.unwrap_or_default();
        let header = crate::smtp::headers::header_section(&body);
        let mut text = meta.received_header.clone();
        text.push_str(&String::from_utf8_lossy(header));
        Ok::<_, crate::queue::StoreError>(Some(text))
    })
    .await
    .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let headers =
        read.ok_or_else(|| error(StatusCode::NOT_FOUND, "no such message in the queue"))?;
    audit(&state, "queue show --headers", &id, &caller);
    Ok(Json(serde_json::json!({ "id": id, "headers": headers })).into_response())
}

async fn get_message(
    State(state): State<AdminState>,
    _caller: Caller,
    UrlPath(id): UrlPath<String>,
) -> AdminResult {
    let id = parse_id(&id)?;
    let store = state.engine.store();
    let entry = tokio::task::spawn_blocking(move || queue_entry(store.as_ref(), &id, unix_now()))
        .await
        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e))?
        .ok_or_else(|| error(StatusCode::NOT_FOUND, "no such message in the queue"))?;
    Ok(Json(entry).into_response())
}

async fn act(
    State(state): State<AdminState>,
    Caller(caller): Caller,
    UrlPath((id, action)): UrlPath<(String, String)>,
) -> AdminResult {
    let qid = parse_id(&id)?;
    if !ACTIONS.contains(&action.as_str()) {
        return Err(error(StatusCode::NOT_FOUND, "unknown action"));
    }
    run_action(&state, &action, &qid)
        .await
        .map_err(admin_error)?;
    audit(&state, &format!("queue {action}"), &id, &caller);
    Ok(Json(serde_json::json!({ "ok": true, "id": id, "action": action })).into_response())
}

async fn get_domains(State(state): State<AdminState>, _caller: Caller) -> AdminResult {
    let list = state.domain_list.current();
    let names: Vec<&str> = list.iter().map(|d| d.domain.as_str()).collect();
    Ok(Json(names).into_response())
}

/// `GET /domains/entries`: every entry of the list in force (not the file, which may have
/// changed since, or been refused), for the same callers as `GET /domains`.
async fn get_domain_entries(State(state): State<AdminState>, _caller: Caller) -> AdminResult {
    let entries = crate::policy::domain_list::DomainEntry::all(&state.domain_list.current());
    Ok(Json(entries).into_response())
}

/// `GET /domains/status`: a read endpoint like `GET /domains`, for any allowed caller.
async fn get_domains_status(State(state): State<AdminState>, _caller: Caller) -> AdminResult {
    Ok(Json((state.domains_status)()).into_response())
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

fn dmarc_reporting(state: &AdminState) -> Result<&Arc<DmarcReporting>, ApiError> {
    state.dmarc_reporting.as_ref().ok_or_else(|| {
        error(
            StatusCode::NOT_FOUND,
            "DMARC reporting is off ([dmarc_reporting] enabled = true turns it on)",
        )
    })
}

async fn get_dmarc_report(State(state): State<AdminState>, _caller: Caller) -> AdminResult {
    let reporting = dmarc_reporting(&state)?;
    let today = day_of(std::time::SystemTime::now());
    let days = reporting
        .counters()
        .days()
        .into_iter()
        .filter(|(n, d)| *n >= today || d.domains.values().any(|x| !x.report.finished))
        .map(|(_, d)| d)
        .collect();
    let view = DmarcReportView {
        today: day_name(today),
        days,
    };
    Ok(Json(view).into_response())
}

async fn send_dmarc_report(
    State(state): State<AdminState>,
    Caller(caller): Caller,
    Query(options): Query<SendOptions>,
) -> AdminResult {
    let reporting = dmarc_reporting(&state)?;
    let target = if options.include_today {
        "due DMARC reports and today's so far"
    } else {
        "due DMARC reports"
    };
    audit(&state, "dmarc-report send", target, &caller);
    let sent: Vec<Sent> = reporting.send_due(options.include_today).await;
    Ok(Json(sent).into_response())
}

fn router(state: AdminState) -> axum::Router {
    axum::Router::new()
        .route("/queue", get(get_queue))
        .route("/queue/{id}", get(get_message))
        .route("/queue/{id}/headers", get(get_headers))
        .route("/queue/{id}/{action}", post(act))
        .route("/queue/bulk/{action}", post(bulk))
        .route("/domains", get(get_domains))
        .route("/domains/entries", get(get_domain_entries))
        .route("/domains/reload", post(reload_domains))
        .route("/domains/status", get(get_domains_status))
        .route("/tls-report", get(get_tls_report))
        .route("/tls-report/send", post(send_tls_report))
        .route("/dmarc-report", get(get_dmarc_report))
        .route("/dmarc-report/send", post(send_dmarc_report))
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
                unreachable_or(&e, format!("admin socket {}: {e}{hint}", socket.display()))
            })?;
            send(stream, method, path, None).await
        } else if let Some(addr) = admin.bind {
            let token = admin.token_file.as_deref().map(read_token).transpose()?;
            let stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| {
                unreachable_or(
                    &e,
                    format!("admin API at {addr}: {e} (is tlsgate running?)"),
                )
            })?;
            send(stream, method, path, token.as_deref()).await
        } else {
            anyhow::bail!("{}: [admin] has neither socket nor bind", config.source)
        }
    };
    tokio::time::timeout(limit, call)
        .await
        .map_err(|_| anyhow::anyhow!("the admin API did not answer within {limit:?}"))?
}

/// The admin API of the configured server could not be reached because nothing listens
/// there (no socket, connection refused): the relay is not running. [`request`]'s error is
/// this type then (`downcast_ref`), so that a reading command may fall back to the files.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NotRunning(pub String);

/// `message` as [`NotRunning`] when `e` says nothing listens, else as a plain error.
fn unreachable_or(e: &std::io::Error, message: String) -> anyhow::Error {
    match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
            NotRunning(message).into()
        }
        _ => anyhow::anyhow!(message),
    }
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

/// `tlsgate dmarc-report show` as text: per day and author domain, where the report stands,
/// then one line per row: count, source address, disposition, DKIM and SPF alignment.
pub fn render_dmarc_report(view: &DmarcReportView) -> String {
    use mail_auth::report::{ActionDisposition, DmarcResult};
    use std::fmt::Write;
    let mut out = String::new();
    if view.days.is_empty() {
        let _ = writeln!(out, "no DMARC report counters (today is {})", view.today);
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
                format!(", done with {}", d.report.sent_to.join(" "))
            };
            let note = d
                .report
                .note
                .as_deref()
                .map(|n| format!(", {n}"))
                .unwrap_or_default();
            let messages: u64 = d.records.iter().map(|r| u64::from(r.row.count)).sum();
            let _ = writeln!(
                out,
                "  {domain}  {messages} messages  report: {state}{sent}{note}"
            );
            for r in &d.records {
                let pass = |x: DmarcResult| {
                    if x == DmarcResult::Pass {
                        "pass"
                    } else {
                        "fail"
                    }
                };
                let e = &r.row.policy_evaluated;
                let disposition = match e.disposition {
                    ActionDisposition::Reject => "reject",
                    ActionDisposition::Quarantine => "quarantine",
                    _ => "none",
                };
                let _ = writeln!(
                    out,
                    "    {:>6} {:<39} {:<10} dkim={} spf={}",
                    r.row.count,
                    r.row.source_ip.map(|i| i.to_string()).unwrap_or_default(),
                    disposition,
                    pass(e.dkim),
                    pass(e.spf)
                );
            }
            if d.overflow > 0 {
                let _ = writeln!(out, "    {:>6} not itemised (row limit)", d.overflow);
            }
        }
    }
    out
}

/// `mailq`-style rendering of a queue listing (issue 14 item 2): a header row, one line per
/// message with its arrival time (RFC 3339 UTC), size and sender, its recipients below with
/// state, attempts, next attempt and the enhanced status code and text of the last reply, and
/// a summary line.
pub fn render_queue(entries: &[QueueEntry]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    if entries.is_empty() {
        out.push_str("Mail queue is empty\n");
        return out;
    }
    let _ = writeln!(
        out,
        "{:<14}  {:<20}  {:>9}  SENDER / RECIPIENTS",
        "QUEUE ID", "ARRIVED (UTC)", "SIZE"
    );
    for e in entries {
        let _ = writeln!(
            out,
            "{:<14}  {:<20}  {:>9}  {}{}",
            e.id,
            e.received_at,
            e.size,
            e.sender,
            if e.requiretls { "  REQUIRETLS" } else { "" }
        );
        for r in &e.recipients {
            let next = r
                .next_attempt_at
                .as_deref()
                .map(|at| format!(", next {at}"))
                .unwrap_or_default();
            let last = match (&r.last_status, &r.last_reply) {
                (Some(status), Some(reply)) => format!(": [{status}] {reply}"),
                (None, Some(reply)) => format!(": {reply}"),
                _ => String::new(),
            };
            let _ = writeln!(
                out,
                "    {}  ({}, {}{}){}",
                r.address,
                r.status,
                crate::text::counted(u64::from(r.attempts), "attempt"),
                next,
                last
            );
        }
    }
    let _ = writeln!(out, "{}", summary_line(entries));
    out
}

/// `-- N messages, M recipients, X KiB` (Postfix's `-- 12 Kbytes in 3 Requests.`).
pub fn summary_line(entries: &[QueueEntry]) -> String {
    let recipients: usize = entries.iter().map(|e| e.recipients.len()).sum();
    let bytes: u64 = entries.iter().map(|e| e.size).sum();
    format!(
        "-- {}, {}, {} KiB",
        crate::text::counted(entries.len() as u64, "message"),
        crate::text::counted(recipients as u64, "recipient"),
        bytes.div_ceil(1024)
    )
}

/// The age buckets of `queue summary`, in minutes: qshape's columns. A message falls in the
/// first bucket its age (in whole minutes) is at most; older than the last is `1280+`.
pub const AGE_BUCKETS: [u64; 9] = [5, 10, 20, 40, 80, 160, 320, 640, 1280];

/// One row of `queue summary`: a destination domain, its total and its counts per age
/// bucket ([`AGE_BUCKETS`] and one more for older).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SummaryRow {
    /// The recipient domain (`TOTAL` for the first row).
    pub domain: String,
    /// Messages with an undelivered recipient in the domain.
    pub total: usize,
    /// Those messages per age bucket.
    pub buckets: [usize; 10],
}

/// `queue summary` (like Postfix's `qshape`): messages with undelivered (pending, deferred or
/// held) recipients, counted once per destination domain, per age bucket; the first row is
/// the total over all domains, the others follow by count, largest first.
pub fn summarize(entries: &[QueueEntry]) -> Vec<SummaryRow> {
    let bucket = |age_seconds: u64| {
        let minutes = age_seconds / 60;
        AGE_BUCKETS
            .iter()
            .position(|limit| minutes < *limit)
            .unwrap_or(AGE_BUCKETS.len())
    };
    let empty = |domain: &str| SummaryRow {
        domain: domain.to_string(),
        total: 0,
        buckets: [0; 10],
    };
    let mut total = empty("TOTAL");
    let mut rows: std::collections::BTreeMap<String, SummaryRow> = Default::default();
    for e in entries {
        let mut domains: Vec<String> = e
            .recipients
            .iter()
            .filter(|r| matches!(r.status.as_str(), "pending" | "deferred" | "held"))
            .filter_map(|r| {
                r.address
                    .rsplit_once('@')
                    .map(|(_, d)| d.to_ascii_lowercase())
            })
            .collect();
        domains.sort();
        domains.dedup();
        if domains.is_empty() {
            continue;
        }
        let b = bucket(e.age_seconds);
        total.total += 1;
        total.buckets[b] += 1;
        for d in domains {
            let row = rows.entry(d.clone()).or_insert_with(|| empty(&d));
            row.total += 1;
            row.buckets[b] += 1;
        }
    }
    let mut rows: Vec<SummaryRow> = rows.into_values().collect();
    rows.sort_by(|a, b| b.total.cmp(&a.total).then(a.domain.cmp(&b.domain)));
    rows.insert(0, total);
    rows
}

/// The `queue summary` table: `T 5 10 20 40 80 160 320 640 1280 1280+` columns, as qshape.
pub fn render_summary(rows: &[SummaryRow]) -> String {
    use std::fmt::Write;
    let width = rows
        .iter()
        .map(|r| r.domain.len())
        .max()
        .unwrap_or(5)
        .max(6);
    let mut out = String::new();
    let _ = write!(out, "{:>width$} {:>5}", "", "T");
    for limit in AGE_BUCKETS {
        let _ = write!(out, " {limit:>5}");
    }
    let _ = writeln!(out, " {:>5}", "1280+");
    for r in rows {
        let _ = write!(out, "{:>width$} {:>5}", r.domain, r.total);
        for n in r.buckets {
            let _ = write!(out, " {n:>5}");
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, age_minutes: u64, to: &[(&str, &str)]) -> QueueEntry {
        QueueEntry {
            id: id.to_string(),
            age_seconds: age_minutes * 60,
            received_at: String::new(),
            size: 2048,
            sender: "kari@example.no".into(),
            requiretls: false,
            received_tls: None,
            recipients: to
                .iter()
                .map(|(address, status)| RecipientEntry {
                    address: address.to_string(),
                    status: status.to_string(),
                    attempts: 0,
                    last_reply: None,
                    last_status: None,
                    next_attempt_in: None,
                    next_attempt_at: None,
                })
                .collect(),
        }
    }

    /// qshape's buckets: 0-4 minutes in `5`, 5-9 in `10`, … 1280 and more in `1280+`; a
    /// message counts once per domain it still has open recipients in.
    #[test]
    fn summary_counts_per_domain_and_age_bucket() {
        let entries = [
            entry("A", 1, &[("a@x.no", "deferred"), ("b@x.no", "pending")]),
            entry("B", 7, &[("a@x.no", "held"), ("c@y.no", "deferred")]),
            entry("C", 2000, &[("c@y.no", "deferred")]),
            entry("D", 3, &[("d@z.no", "delivered")]),
        ];
        let rows = summarize(&entries);
        assert_eq!(rows[0].domain, "TOTAL");
        assert_eq!(rows[0].total, 3);
        assert_eq!(rows[0].buckets, [1, 1, 0, 0, 0, 0, 0, 0, 0, 1]);
        let x = rows.iter().find(|r| r.domain == "x.no").unwrap();
        assert_eq!((x.total, x.buckets[0], x.buckets[1]), (2, 1, 1));
        let y = rows.iter().find(|r| r.domain == "y.no").unwrap();
        assert_eq!((y.total, y.buckets[1], y.buckets[9]), (2, 1, 1));
        assert!(
            !rows.iter().any(|r| r.domain == "z.no"),
            "nothing open there"
        );
        let table = render_summary(&rows);
        assert!(
            table.lines().next().unwrap().ends_with(" 1280 1280+"),
            "{table}"
        );
    }

    #[test]
    fn selections_match_and_describe_themselves() {
        let e = entry("00000000000001", 90, &[("Ola@Partner.NO", "deferred")]);
        let pick = |s: Selection| {
            let age = s.check().unwrap();
            s.matches(&e, age)
        };
        assert!(pick(Selection::default()));
        assert!(pick(Selection {
            domain: Some("partner.no".into()),
            older_than: Some("1h".into()),
            status: Some("deferred".into()),
            ..Selection::default()
        }));
        assert!(!pick(Selection {
            older_than: Some("2h".into()),
            ..Selection::default()
        }));
        assert!(!pick(Selection {
            status: Some("held".into()),
            ..Selection::default()
        }));
        assert!(pick(Selection {
            to: Some("ola@partner.no".into()),
            from: Some("KARI@example.no".into()),
            ..Selection::default()
        }));
        let bad = Selection {
            status: Some("frozen".into()),
            ..Selection::default()
        };
        assert!(bad.check().is_err());
        let s = Selection {
            from: Some("a b@x".into()),
            all: true,
            ..Selection::default()
        };
        assert_eq!(s.to_query(), "from=a%20b%40x&all=true");
        assert_eq!(s.describe(), "from=a b@x");
        // The audit log gets the domain only (S1: never addresses).
        assert_eq!(s.describe_without_addresses(), "from=…@x");
        let s = Selection {
            to: Some("carol@defer.test".into()),
            from: Some("<>".into()),
            domain: Some("defer.test".into()),
            ..Selection::default()
        };
        assert_eq!(
            s.describe_without_addresses(),
            "from=<> to=…@defer.test domain=defer.test"
        );
    }
}
