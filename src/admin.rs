//! The admin API (`admin.bind`, loopback by default) and the small HTTP client the CLI uses
//! for `tlsgate queue list|show|retry|bounce|delete` and `tlsgate domains reload`.
//!
//! JSON over HTTP/1.1. When `admin.token_file` is set every request must carry
//! `Authorization: Bearer <token>`; a non-loopback bind without a token is a config error.
//! Every state-changing action is logged (and written to the audit log, S1).

use crate::audit::{AuditEvent, AuditLog};
use crate::config::Config;
use crate::delivery::{AdminError, EngineHandle};
use crate::policy::domain_list::DomainListHandle;
use crate::queue::message::{unix_now, QueueId};
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Json;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// One recipient in a queue listing.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecipientEntry {
    pub address: String,
    pub status: String,
    pub attempts: u32,
    pub last_reply: Option<String>,
    /// Seconds until the next attempt (0: due now); absent when final.
    pub next_attempt_in: Option<u64>,
}

/// One message in a queue listing (never the body).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueueEntry {
    pub id: String,
    pub age_seconds: u64,
    pub size: u64,
    pub sender: String,
    pub requiretls: bool,
    pub received_tls: Option<String>,
    pub recipients: Vec<RecipientEntry>,
}

#[derive(Clone)]
pub struct AdminState {
    pub engine: EngineHandle,
    pub domain_list: Arc<DomainListHandle>,
    pub reload_list: Arc<dyn Fn() -> Result<String, String> + Send + Sync>,
    pub audit: Option<Arc<AuditLog>>,
    token: Option<Arc<str>>,
}

impl AdminState {
    pub fn new(
        engine: EngineHandle,
        domain_list: Arc<DomainListHandle>,
        reload_list: Arc<dyn Fn() -> Result<String, String> + Send + Sync>,
        audit: Option<Arc<AuditLog>>,
        token: Option<String>,
    ) -> AdminState {
        AdminState {
            engine,
            domain_list,
            reload_list,
            audit,
            token: token.map(Arc::from),
        }
    }
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
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> ApiError {
    ApiError(status, message.into())
}

fn authorised(state: &AdminState, headers: &HeaderMap) -> bool {
    let Some(expected) = &state.token else {
        return true;
    };
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    // Constant-time comparison: the time taken says nothing about the token.
    given.len() == expected.len()
        && given
            .bytes()
            .zip(expected.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
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

async fn get_queue(State(state): State<AdminState>, headers: HeaderMap) -> AdminResult {
    if !authorised(&state, &headers) {
        return Err(error(StatusCode::UNAUTHORIZED, "bad or missing token"));
    }
    Ok(Json(queue(&state).await?).into_response())
}

async fn get_message(
    State(state): State<AdminState>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
) -> AdminResult {
    if !authorised(&state, &headers) {
        return Err(error(StatusCode::UNAUTHORIZED, "bad or missing token"));
    }
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
    headers: HeaderMap,
    UrlPath((id, action)): UrlPath<(String, String)>,
) -> AdminResult {
    if !authorised(&state, &headers) {
        return Err(error(StatusCode::UNAUTHORIZED, "bad or missing token"));
    }
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
    audit(&state, &format!("queue {action}"), &id, "admin api");
    Ok(Json(serde_json::json!({ "ok": true, "id": id, "action": action })).into_response())
}

async fn get_domains(State(state): State<AdminState>, headers: HeaderMap) -> AdminResult {
    if !authorised(&state, &headers) {
        return Err(error(StatusCode::UNAUTHORIZED, "bad or missing token"));
    }
    let list = state.domain_list.current();
    let names: Vec<&str> = list.iter().map(|d| d.domain.as_str()).collect();
    Ok(Json(names).into_response())
}

async fn reload_domains(State(state): State<AdminState>, headers: HeaderMap) -> AdminResult {
    if !authorised(&state, &headers) {
        return Err(error(StatusCode::UNAUTHORIZED, "bad or missing token"));
    }
    let outcome = (state.reload_list)();
    audit(&state, "domains reload", "domain list", "admin api");
    match outcome {
        Ok(text) => Ok(Json(serde_json::json!({ "ok": true, "result": text })).into_response()),
        Err(e) => Err(error(StatusCode::UNPROCESSABLE_ENTITY, e)),
    }
}

/// Serves the admin API until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AdminState,
    shutdown: CancellationToken,
) {
    let app = axum::Router::new()
        .route("/queue", get(get_queue))
        .route("/queue/{id}", get(get_message))
        .route("/queue/{id}/{action}", post(act))
        .route("/domains", get(get_domains))
        .route("/domains/reload", post(reload_domains))
        .with_state(state);
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "admin API stopped");
    }
}

/// The CLI side: one request to the admin API of the configured server. Returns the status
/// code and the body.
pub async fn request(config: &Config, method: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let admin = config.admin.as_ref().ok_or_else(|| {
        anyhow::anyhow!(
            "{}: no [admin] section: the admin API is off, so the queue cannot be managed",
            config.source
        )
    })?;
    let token = admin.token_file.as_deref().map(read_token).transpose()?;
    let addr: SocketAddr = admin.bind;
    let limit = Duration::from_secs(30);
    let mut stream = tokio::time::timeout(limit, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| anyhow::anyhow!("admin API at {addr}: connect timed out"))?
        .map_err(|e| anyhow::anyhow!("admin API at {addr}: {e} (is tlsgate running?)"))?;
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n"
    );
    if let Some(token) = token {
        request.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    tokio::time::timeout(limit, stream.read_to_end(&mut response))
        .await
        .map_err(|_| anyhow::anyhow!("admin API at {addr}: no answer in time"))??;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("admin API: malformed response"))?;
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("admin API: malformed status line"))?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((status, body))
}

/// Undoes HTTP/1.1 chunked transfer coding.
fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size_line, after)) = rest.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size_line.trim(), 16) else {
            break;
        };
        if size == 0 || after.len() < size {
            break;
        }
        out.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
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
