//! Audit log (S1): every security-relevant decision, numbered consecutively and chained by hash.
//!
//! # Files
//!
//! The log lives in one directory ([`AuditConfig::dir`], by default `data_dir/audit`) as a series
//! of append-only files named `audit-YYYYMMDD-NNNN.jsonl` (UTC date of the file's first entry,
//! then a counter within that date). They are ordered by `(date, counter)` as numbers, so a
//! counter past 9999 still sorts right. A new file is started when the next line would make the
//! current file exceed [`AuditConfig::max_file_bytes`], or when the UTC date of the entry is later
//! than the current file's date. A file never holds less than one line, so a single entry larger
//! than the limit gets a file of its own. The directory also holds `.lock`, on which the writing
//! process keeps an exclusive `flock` so that two processes can never fork the chain.
//!
//! # Line format
//!
//! One JSON object per line, `\n`-terminated, with the keys in exactly this order:
//!
//! ```text
//! {"seq":42,"time":"2025-03-01T12:34:56.789Z","prev":"<64 hex>","event":{"event":"tls_delivery",...},"hash":"<64 hex>"}
//! ```
//!
//! * `seq` — 1 for the first entry ever, then +1 per entry, continuing across files and restarts.
//! * `time` — RFC 3339 UTC with milliseconds.
//! * `prev` — the `hash` of the previous entry (possibly in the previous file); 64 zeros
//!   ([`GENESIS_HASH`]) for seq 1. So the first line of a rotated file carries the last hash of
//!   the file before it.
//! * `event` — an [`AuditEvent`], internally tagged by `event` in snake_case.
//! * `hash` — lowercase hex SHA-256 of the line's own bytes *without* the hash field: the exact
//!   text `{"seq":…,"time":…,"prev":…,"event":{…}}`, that is, the line with the trailing
//!   `,"hash":"<64 hex>"}` replaced by `}`. Hashing the bytes as written (not a re-serialisation)
//!   means verification never depends on how a JSON library orders or escapes keys.
//!
//! Events carry only low-risk fields: addresses of peers, domains, queue ids, TLS parameters,
//! certificate fingerprints. Never message bodies, addresses of senders/recipients beyond the
//! domain, credentials or keys.
//!
//! # What verification detects
//!
//! [`verify`] checks, for each line: the hash field is present and matches the line, the line is
//! a well-formed entry, `seq` is the previous entry's `seq` + 1 and `prev` is the previous entry's
//! `hash`. An edited line fails its own hash; an edited line whose hash was recomputed breaks the
//! link from the next line; a deleted or inserted line is a sequence gap. What a hash chain cannot
//! show on its own is the loss of entries at the very end (truncation) or of whole leading files;
//! the latter is what retention does legitimately, and it records a
//! [`AuditEvent::RetentionRemoved`] entry naming the files and the last sequence number removed,
//! so [`VerifyReport::first_seq`] can be checked against it.
//!
//! # Durability
//!
//! [`AuditLog::record`] writes the whole line with one `write` on an `O_APPEND` file and then
//! `fdatasync`s it before returning the sequence number; a new file is followed by an `fsync` of
//! the directory, and the file it replaces is synced first. The server records every delivery
//! decision (S1: each delivered or failed recipient, each relay refusal), so it does not sync
//! once per entry: [`AuditLog::submit`] queues the entry and whichever caller takes the writer
//! lock writes everything queued at that moment with one `fdatasync` (group commit, as the
//! queue's committer does). Either way an entry is on disk when its call returns. Both block
//! for that sync: call them from synchronous code or `spawn_blocking`, not in a hot async loop.
//! The server's fire-and-forget [`submit`] queues the entry for one writer task on the blocking
//! pool, which lets entries gather for [`GATHER`] (20 ms) and writes them with one `fdatasync`:
//! nothing waits for those entries. Appends are serialised by a mutex, so concurrent calls never interleave
//! and never share a sequence number. If a write or sync fails, the file is cut back to its
//! last synced length (retried before the next record if that fails too), the sequence numbers
//! are not consumed and the error is returned.
//!
//! # Crash recovery
//!
//! [`AuditLog::open`] reads the last line of the newest file and continues from its `seq` and
//! `hash`; that line must be a valid entry, else opening fails with [`AuditError::Corrupt`]
//! (a broken security log is for an operator to look at, not to paper over). Bytes after the last
//! `\n` are the remains of a write cut short by a crash, and by construction they were never
//! acknowledged to a caller:
//!
//! * if they form a complete, valid entry that links to the one before (only the newline was
//!   lost), the newline is added and the entry kept;
//! * otherwise (at most [`MAX_LINE_BYTES`] of them) they are truncated away, and the first entry
//!   written after opening is an [`AuditEvent::LogRepaired`] naming the file, the number of bytes
//!   discarded and their SHA-256, so the repair itself is in the chain. More than a line's worth
//!   of bytes without a newline is not a torn write: opening fails instead.
//!
//! # Retention
//!
//! [`AuditLog::apply_retention`] removes whole files only, oldest first, and only while each
//! file's newest entry (the latest `time` on any of its lines, which is robust against a clock
//! that stepped back) is older than [`AuditConfig::retention`] (default 730 days). It stops at
//! the first file that must be kept, or that has a line it cannot read (a damaged file is
//! evidence; it is kept, with a warning), so what remains is always one unbroken chain. The
//! current file is never removed.
//!
//! # Time in tests
//!
//! [`AuditLog::record_at`] takes the entry's timestamp explicitly (production code calls
//! [`AuditLog::record`], which uses the system clock); [`AuditLog::apply_retention`] takes `now`.
//! Together they let tests build files that are years old.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

/// The `time` field: RFC 3339 UTC with milliseconds (and its reader, for `audit verify`).
pub use crate::datetime::{format_rfc3339, parse_rfc3339};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Start a new file when the current one would exceed this (64 MiB).
pub const DEFAULT_MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;
/// Keep entries for two years (Skatteverket K3.3: security log kept for 2 years).
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(730 * 24 * 60 * 60);
/// `prev` of the first entry ever.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// Longest line written or accepted (1 MiB); a longer entry is refused with
/// [`AuditError::TooLarge`].
pub const MAX_LINE_BYTES: usize = 1024 * 1024;

/// `,"hash":"` + 64 hex digits + `"}`.
const HASH_SUFFIX_LEN: usize = 9 + 64 + 2;
const LOCK_FILE: &str = ".lock";

/// Where and how the audit log is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditConfig {
    /// Directory of the audit files (created if missing, mode 0750).
    pub dir: PathBuf,
    /// Start a new file when the next line would make the current one larger than this.
    pub max_file_bytes: u64,
    /// Remove whole files whose newest entry is older than this.
    pub retention: Duration,
}

impl AuditConfig {
    /// `dir` with the defaults: 64 MiB files, 730 days retention.
    pub fn new(dir: impl Into<PathBuf>) -> AuditConfig {
        AuditConfig {
            dir: dir.into(),
            max_file_bytes: DEFAULT_MAX_FILE_BYTES,
            retention: DEFAULT_RETENTION,
        }
    }
}

/// A security-relevant event. Only low-risk fields: never message bodies or secrets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum AuditEvent {
    /// A session was refused because mail for a listed domain came in plaintext (T5).
    PlaintextRefused {
        /// The client's IP address.
        peer: String,
        /// The listed domain the mail came from.
        domain: String,
        /// `"mail_from"` or `"header_from"`.
        stage: String,
    },
    /// A message was delivered over TLS to a listed domain.
    TlsDelivery {
        /// The message.
        queue_id: String,
        /// The recipient domain.
        domain: String,
        /// The MX host delivered to.
        host: String,
        /// `TLSv1.2` or `TLSv1.3`.
        tls_version: String,
        /// The negotiated cipher suite.
        cipher: String,
        /// SHA-256 of the server's end-entity certificate, hex.
        cert_sha256: Option<String>,
        /// The TLS level applied (`verify`, `secure`, …).
        level: String,
        /// Where the level came from (`list`, `config`, `dane`, `requiretls`).
        policy_source: String,
    },
    /// TLS with a remote host failed (or was not offered) where policy required it.
    TlsFailure {
        /// The message.
        queue_id: String,
        /// The recipient domain.
        domain: String,
        /// The MX host tried.
        host: String,
        /// What failed (the [`TlsFailure`](crate::tls::client::TlsFailure) text).
        reason: String,
        /// The TLS level that was required.
        level: String,
        /// Where the level came from (`list`, `config`, `dane`, `requiretls`).
        policy_source: String,
    },
    /// A recipient was delivered (S1: every delivery decision, listed or not). `tls_version` is
    /// `"none"` for plaintext; `level` is the TLS level applied and `policy_source` where it
    /// came from (`list`, `config`, `dane`, `requiretls`, `opportunistic`).
    Delivered {
        /// The message.
        queue_id: String,
        /// The recipient domain.
        domain: String,
        /// The host that accepted it.
        host: String,
        tls_version: String,
        level: String,
        policy_source: String,
    },
    /// A recipient failed permanently. `by` is `"remote"` when the host's reply decided it (its
    /// text is not copied: it may name the recipient) and `"tlsgate"` for our own decision,
    /// whose `reason` is then given.
    DeliveryFailed {
        /// The message.
        queue_id: String,
        /// The recipient domain.
        domain: String,
        /// The host whose reply decided it; `None` when no host was reached.
        host: Option<String>,
        /// RFC 3463 status, e.g. `5.1.1`.
        status: String,
        by: String,
        reason: Option<String>,
    },
    /// A recipient was refused at RCPT because this client may not relay to its domain (S6),
    /// or routes onwards through a local part (`reason`: `relay_denied`, `routed_local_part`).
    RelayRefused {
        /// The client's IP address.
        peer: String,
        /// The recipient domain.
        domain: String,
        /// The listener role (`inbound` / `outbound`).
        listener: String,
        reason: String,
    },
    /// A delivery status notification was sent.
    DsnSent {
        /// The message the DSN is about.
        queue_id: String,
        /// The queue id of the DSN itself.
        dsn_id: String,
        /// `failure`, `delay` or `success`.
        kind: String,
    },
    /// The tvungen TLS domain list was reloaded (or a reload was refused).
    DomainListReload {
        /// Domains in the list before.
        old: usize,
        /// Domains in the list after (equal to `old` when refused).
        new: usize,
        /// The reload succeeded.
        ok: bool,
        /// Why it was refused; `None` when `ok`.
        error: Option<String>,
        /// SHA-256 (lowercase hex) of the list file now in force; absent when refused (and in
        /// entries written before it was recorded).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sha256: Option<String>,
        /// Every domain the reload added, in domain order (absent when none).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        added: Vec<String>,
        /// Every domain the reload removed, in domain order (absent when none).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        removed: Vec<String>,
    },
    /// The configuration was reloaded (or a reload was refused).
    ConfigReload { ok: bool, error: Option<String> },
    /// An administrator acted through the admin interface or CLI.
    AdminAction {
        /// What was done (e.g. a queue operation).
        action: String,
        /// What it was done to (e.g. a queue id).
        target: String,
        /// Who did it (`uid 1001 (kari)` or `token ops from …`).
        client: String,
    },
    /// A request to the admin API was refused (wrong uid on the socket, bad token on TCP).
    AdminRefused { request: String, client: String },
    /// The background check of a listed partner domain (issue 15 item 3, T7; Bits 5.2.6: the
    /// evidence that mail to every listed domain still goes over validated TLS) reached a
    /// different verdict than the run before, or its first one since start.
    PartnerVerdict {
        /// The listed domain.
        domain: String,
        /// Delivery would succeed over the TLS its policy demands.
        pass: bool,
        /// The verdict before; `None` for the first check since start.
        previous: Option<bool>,
        /// Why it fails (the check's reason); `None` when it passes.
        reason: Option<String>,
    },
    /// The service started.
    Started { version: String },
    /// Written by [`AuditLog::open`] after it cut a torn last line (from a crash) off `file`.
    LogRepaired {
        /// The file that was repaired.
        file: String,
        /// Length of the cut-off torn line, in bytes.
        discarded_bytes: u64,
        /// SHA-256 of the cut-off bytes, hex.
        discarded_sha256: String,
    },
    /// Written by [`AuditLog::apply_retention`] after removing whole files.
    RetentionRemoved {
        /// File names removed, oldest first.
        files: Vec<String>,
        /// The last sequence number in the removed files (`None` if they were empty).
        through_seq: Option<u64>,
    },
}

/// Why the audit log could not be opened, written or read.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// An I/O error on `path`.
    #[error("audit log {}: {cause}", path.display())]
    Io { path: PathBuf, cause: io::Error },
    /// A line that does not parse where one must (`line` is 1-based).
    #[error("audit log {}:{line}: {what}", file.display())]
    Corrupt {
        file: PathBuf,
        line: usize,
        what: String,
    },
    /// Another process holds the directory's lock.
    #[error("audit log {} is in use by another process", .0.display())]
    Locked(PathBuf),
    /// An entry longer than [`MAX_LINE_BYTES`]; carries its length in bytes.
    #[error("audit entry of {0} bytes exceeds the limit of {MAX_LINE_BYTES} bytes")]
    TooLarge(usize),
    /// The event could not be turned into JSON.
    #[error("audit entry cannot be serialised: {0}")]
    Serialize(serde_json::Error),
    /// The sequence number reached `u64::MAX`.
    #[error("audit sequence number exhausted")]
    SeqExhausted,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> AuditError + '_ {
    move |cause| AuditError::Io {
        path: path.to_path_buf(),
        cause,
    }
}

/// The first thing [`verify`] found wrong. `line` is 1-based within `file`; 0 means the file (or
/// the argument) as a whole.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// The file the problem is in.
    pub file: PathBuf,
    /// 1-based line number; 0 for the file as a whole.
    pub line: usize,
    /// What is wrong.
    pub what: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}", self.file.display(), self.line, self.what)
    }
}

/// The outcome of [`verify`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// Files read (up to and including the one with the problem).
    pub files: usize,
    /// Lines that passed every check.
    pub lines: usize,
    /// `seq` of the first entry checked; above 1 when older files were removed by retention (or
    /// not given).
    pub first_seq: Option<u64>,
    /// `seq` of the last entry that passed.
    pub last_seq: Option<u64>,
    /// The first problem found; `None` when everything checked out.
    pub first_problem: Option<Problem>,
}

impl VerifyReport {
    /// No problem found.
    pub fn is_ok(&self) -> bool {
        self.first_problem.is_none()
    }
}

#[derive(Debug)]
struct Current {
    path: PathBuf,
    file: File,
    date: u32,
    counter: u64,
    size: u64,
}

#[derive(Debug)]
struct Inner {
    current: Option<Current>,
    next_seq: u64,
    last_hash: String,
    /// A write may have left bytes past `current.size`; cut them before the next write.
    dirty: bool,
}

/// The audit log writer. `Send + Sync`; share it in an `Arc`.
#[derive(Debug)]
pub struct AuditLog {
    config: AuditConfig,
    inner: Mutex<Inner>,
    /// Entries handed to [`AuditLog::submit`] and not yet written (group commit).
    queued: Mutex<Vec<(AuditEvent, SystemTime)>>,
    /// True while a writer started by [`submit`] runs on the blocking pool: it writes every
    /// entry queued before it stops, so a new entry needs no blocking task of its own.
    writer_busy: AtomicBool,
    /// Holds the exclusive `flock` on `dir/.lock` for the life of the log.
    _lock: File,
}

impl AuditLog {
    /// Open (or start) the log in `config.dir`: create the directory, lock it, and continue the
    /// sequence and chain from the last line of the newest file, repairing a torn last line as
    /// described in the module documentation.
    pub fn open(config: AuditConfig) -> Result<AuditLog, AuditError> {
        create_dir(&config.dir)?;
        let lock = lock_dir(&config.dir)?;
        let files = list_audit_files(&config.dir)?;
        let mut inner = Inner {
            current: None,
            next_seq: 1,
            last_hash: GENESIS_HASH.to_string(),
            dirty: false,
        };
        let mut repair = None;
        if let Some((newest, older)) = files.split_last() {
            let path = &newest.path;
            let mut file = open_append(path)?;
            let len = file.metadata().map_err(io_err(path))?.len();
            let tail = read_tail(&mut file, path, len)?;
            let prior = match &tail.last_line {
                Some((start, bytes)) => Some(parse_line(bytes).map_err(|what| {
                    corrupt_at(
                        &mut file,
                        path,
                        *start,
                        format!("last entry is invalid: {what}"),
                    )
                })?),
                None => last_entry_of(older)?,
            };
            if let Some(p) = prior {
                inner.next_seq = p.seq.checked_add(1).ok_or(AuditError::SeqExhausted)?;
                inner.last_hash = p.hash;
            }
            let mut size = len;
            if !tail.partial.is_empty() {
                match parse_line(&tail.partial) {
                    Ok(p) if p.seq == inner.next_seq && p.prev == inner.last_hash => {
                        // Only the newline was lost: keep the entry.
                        file.write_all(b"\n").map_err(io_err(path))?;
                        file.sync_data().map_err(io_err(path))?;
                        size += 1;
                        inner.next_seq = p.seq.checked_add(1).ok_or(AuditError::SeqExhausted)?;
                        inner.last_hash = p.hash;
                        tracing::warn!(file = %path.display(), seq = p.seq,
                            "audit log: last entry lacked its newline (crash); completed it");
                    }
                    _ => {
                        file.set_len(tail.partial_start).map_err(io_err(path))?;
                        file.sync_data().map_err(io_err(path))?;
                        size = tail.partial_start;
                        let name = file_name(path);
                        tracing::warn!(file = %name, bytes = tail.partial.len(),
                            "audit log: discarded a torn last line (crash during a write)");
                        repair = Some(AuditEvent::LogRepaired {
                            file: name,
                            discarded_bytes: tail.partial.len() as u64,
                            discarded_sha256: sha256_hex(&tail.partial),
                        });
                    }
                }
            }
            inner.current = Some(Current {
                path: path.clone(),
                file,
                date: newest.date,
                counter: newest.counter,
                size,
            });
        }
        let log = AuditLog {
            config,
            inner: Mutex::new(inner),
            queued: Mutex::new(Vec::new()),
            writer_busy: AtomicBool::new(false),
            _lock: lock,
        };
        if let Some(event) = repair {
            log.record(event)?;
        }
        Ok(log)
    }

    /// Append `event` stamped with the system clock; returns its sequence number once it is on
    /// disk (written and `fdatasync`ed).
    pub fn record(&self, event: AuditEvent) -> Result<u64, AuditError> {
        self.record_at(event, SystemTime::now())
    }

    /// [`AuditLog::record`] with an explicit timestamp (for tests and tools; the server calls
    /// `record`). File rotation by date follows `at`, but a file name never goes back in date:
    /// if `at` is earlier than the current file's date, the current date is kept.
    pub fn record_at(&self, event: AuditEvent, at: SystemTime) -> Result<u64, AuditError> {
        let mut inner = self.lock();
        record_locked(&self.config, &mut inner, &event, at)
    }

    /// Writes `event` together with every entry other threads queued meanwhile, with one
    /// `fdatasync` for all of them (group commit). Returns once `event` is on disk (written by
    /// this call or by the caller that held the lock before). Blocks: see [`submit`].
    pub fn submit(&self, event: AuditEvent) -> Result<(), AuditError> {
        self.queued_lock().push((event, SystemTime::now()));
        let mut inner = self.lock();
        let batch = std::mem::take(&mut *self.queued_lock());
        if batch.is_empty() {
            // The previous holder of the lock wrote this entry with its own.
            return Ok(());
        }
        let entries = batch.iter().map(|(event, at)| (event, *at));
        record_batch_locked(&self.config, &mut inner, entries).map(|_| ())
    }

    /// The writer [`submit`] starts: writes what is queued, in groups with one `fdatasync`
    /// each, until the queue is empty. A failed group is logged; the next group is tried.
    fn write_queued(&self) {
        loop {
            // Let entries gather first (see [`GATHER`]).
            std::thread::sleep(GATHER);
            // The batch is taken under the writer lock, as in [`AuditLog::submit`]: whoever
            // takes the lock next and finds the queue empty knows these entries are written.
            let mut inner = self.lock();
            let batch = std::mem::take(&mut *self.queued_lock());
            if batch.is_empty() {
                drop(inner);
                self.writer_busy.store(false, Ordering::SeqCst);
                // An entry queued after the take saw this writer busy and left it here: take
                // it, unless another writer has started meanwhile.
                if self.queued_lock().is_empty() || self.writer_busy.swap(true, Ordering::SeqCst) {
                    return;
                }
                continue;
            }
            let entries = batch.iter().map(|(event, at)| (event, *at));
            if let Err(e) = record_batch_locked(&self.config, &mut inner, entries) {
                tracing::error!(error = %e, entries = batch.len(), "audit log write failed");
            }
        }
    }

    fn queued_lock(&self) -> MutexGuard<'_, Vec<(AuditEvent, SystemTime)>> {
        self.queued
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Remove whole files, oldest first, while their newest entry is older than the retention
    /// period at `now`; never the current file, and never a file after one that is kept, so the
    /// rest stays one chain. Records an [`AuditEvent::RetentionRemoved`] entry when anything was
    /// removed. Returns the paths removed.
    pub fn apply_retention(&self, now: SystemTime) -> Result<Vec<PathBuf>, AuditError> {
        let mut inner = self.lock();
        let current = inner.current.as_ref().map(|c| c.path.clone());
        let files = list_audit_files(&self.config.dir)?;
        let mut removed = Vec::new();
        let mut through_seq = None;
        for f in files {
            if Some(&f.path) == current.as_ref() {
                break;
            }
            let newest = match newest_entry(&f.path) {
                Ok(newest) => newest,
                Err(e) => {
                    tracing::warn!(error = %e,
                        "audit retention: keeping this file and all later ones");
                    break;
                }
            };
            if let Some((_, time)) = newest {
                let old_enough = now
                    .duration_since(time)
                    .is_ok_and(|age| age > self.config.retention);
                if !old_enough {
                    break;
                }
            }
            fs::remove_file(&f.path).map_err(io_err(&f.path))?;
            if let Some((seq, _)) = newest {
                through_seq = Some(seq);
            }
            removed.push(f.path);
        }
        if !removed.is_empty() {
            sync_dir(&self.config.dir)?;
            let files = removed.iter().map(|p| file_name(p)).collect();
            let event = AuditEvent::RetentionRemoved { files, through_seq };
            record_locked(&self.config, &mut inner, &event, now)?;
        }
        Ok(removed)
    }

    /// The sequence number the next entry will get.
    pub fn next_seq(&self) -> u64 {
        self.lock().next_seq
    }

    /// The file being appended to (`None` before the first entry in an empty directory).
    pub fn current_file(&self) -> Option<PathBuf> {
        self.lock().current.as_ref().map(|c| c.path.clone())
    }

    /// The settings the log was opened with.
    pub fn config(&self) -> &AuditConfig {
        &self.config
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave a half-updated state behind: `dirty` marks
        // a write in progress and is repaired before the next one.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn record_locked(
    config: &AuditConfig,
    inner: &mut Inner,
    event: &AuditEvent,
    at: SystemTime,
) -> Result<u64, AuditError> {
    record_batch_locked(config, inner, [(event, at)])
}

/// Appends `events` in order and syncs once per file touched. Returns the last sequence number.
/// On a failed write or sync the current file is cut back to its last synced length and the
/// sequence numbers and hash of the lost lines are given back.
fn record_batch_locked<'a>(
    config: &AuditConfig,
    inner: &mut Inner,
    events: impl IntoIterator<Item = (&'a AuditEvent, SystemTime)>,
) -> Result<u64, AuditError> {
    if inner.dirty {
        if let Some(c) = &inner.current {
            c.file.set_len(c.size).map_err(io_err(&c.path))?;
        }
        inner.dirty = false;
    }
    // Lines waiting for the current file, and the chain state before them (for a rollback).
    let mut buffer = Vec::new();
    let mut rollback = (inner.next_seq, inner.last_hash.clone());
    let mut last_seq = inner.next_seq;
    for (event, at) in events {
        let seq = inner.next_seq;
        let next = seq.checked_add(1).ok_or(AuditError::SeqExhausted)?;
        let time = format_rfc3339(at);
        let event_json = serde_json::to_string(event).map_err(AuditError::Serialize)?;
        let head = format!(
            "{{\"seq\":{seq},\"time\":\"{time}\",\"prev\":\"{}\",\"event\":{event_json}",
            inner.last_hash
        );
        let hash = sha256_hex(format!("{head}}}").as_bytes());
        let line = format!("{head},\"hash\":\"{hash}\"}}\n");
        if line.len() > MAX_LINE_BYTES {
            return Err(AuditError::TooLarge(line.len()));
        }
        let date = crate::datetime::utc_date_number(at);
        let rotate = match &inner.current {
            None => true,
            Some(c) => {
                let size = c.size + buffer.len() as u64;
                size > 0 && (date > c.date || size + line.len() as u64 > config.max_file_bytes)
            }
        };
        if rotate {
            // The file being left is complete: its lines go to disk before the next file starts.
            flush(inner, &mut buffer, &rollback)?;
            rotate_file(config, inner, date)?;
            rollback = (inner.next_seq, inner.last_hash.clone());
        }
        buffer.extend_from_slice(line.as_bytes());
        inner.next_seq = next;
        inner.last_hash = hash;
        last_seq = seq;
    }
    flush(inner, &mut buffer, &rollback)?;
    Ok(last_seq)
}

/// Writes `buffer` to the current file with one `write` and one `fdatasync`; on failure cuts
/// the file back and restores the chain state `rollback` (next seq, last hash).
fn flush(
    inner: &mut Inner,
    buffer: &mut Vec<u8>,
    rollback: &(u64, String),
) -> Result<(), AuditError> {
    if buffer.is_empty() {
        return Ok(());
    }
    let Some(current) = inner.current.as_mut() else {
        return Err(AuditError::Io {
            path: PathBuf::new(),
            cause: io::Error::other("no current audit file"),
        });
    };
    inner.dirty = true;
    let written = current
        .file
        .write_all(buffer)
        .and_then(|()| current.file.sync_data());
    if let Err(cause) = written {
        if current.file.set_len(current.size).is_ok() {
            inner.dirty = false;
        }
        let path = current.path.clone();
        inner.next_seq = rollback.0;
        inner.last_hash = rollback.1.clone();
        buffer.clear();
        return Err(AuditError::Io { path, cause });
    }
    current.size += buffer.len() as u64;
    inner.dirty = false;
    buffer.clear();
    Ok(())
}

/// How long the writer [`submit`] starts lets entries gather before it writes them with one
/// `fdatasync` (issue 16 item 7). Under load the writer otherwise synced every few entries, and
/// the `fdatasync`s (with the file system's journal work) were a tenth of tlsgate's CPU per
/// message in the e2e bench; now there are at most 50 a second. Nothing waits for these
/// entries (the delivery's result is in the queue, S5), so no mail waits longer; an entry
/// reaches the disk at most this much later, which is what a crash can lose beyond the
/// write in progress.
const GATHER: std::time::Duration = std::time::Duration::from_millis(20);

/// Records `event` off the async threads (it waits for a sync), grouped with other entries
/// written at the same moment. A failed write is logged; the relay goes on (S1 entries are
/// evidence, not a gate on mail flow). Must be called inside a tokio runtime.
///
/// Issue 16 item 7 (CPU per message): the entry is queued, and one writer task on the blocking
/// pool writes everything queued, one group and one `fdatasync` at a time, until nothing is
/// left. Before, every entry had a blocking task of its own that waited for the writer lock:
/// under load a hundred threads were started and woken for the same work.
pub fn submit(log: &Option<std::sync::Arc<AuditLog>>, event: AuditEvent) {
    let Some(log) = log else {
        return;
    };
    log.queued_lock().push((event, SystemTime::now()));
    if log.writer_busy.swap(true, Ordering::SeqCst) {
        // The running writer takes it (it empties the queue before it stops).
        return;
    }
    let log = log.clone();
    tokio::task::spawn_blocking(move || log.write_queued());
}

fn rotate_file(config: &AuditConfig, inner: &mut Inner, date: u32) -> Result<(), AuditError> {
    let (date, mut counter) = match &inner.current {
        Some(c) if date <= c.date => (c.date, c.counter + 1),
        _ => (date, 0),
    };
    loop {
        let path = config
            .dir
            .join(format!("audit-{date:08}-{counter:04}.jsonl"));
        let mut options = OpenOptions::new();
        options.append(true).read(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o640);
        }
        match options.open(&path) {
            Ok(file) => {
                sync_dir(&config.dir)?;
                inner.current = Some(Current {
                    path,
                    file,
                    date,
                    counter,
                    size: 0,
                });
                return Ok(());
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => counter += 1,
            Err(e) => return Err(io_err(&path)(e)),
        }
    }
}

/// Check the chain over `paths`: files, or directories (expanded to their audit files in order).
/// Paths are taken in the order given. Stops at the first problem. I/O errors (a path that
/// cannot be read) are errors; anything wrong with the content is a [`Problem`] in the report.
pub fn verify(paths: &[PathBuf]) -> Result<VerifyReport, AuditError> {
    let mut report = VerifyReport {
        files: 0,
        lines: 0,
        first_seq: None,
        last_seq: None,
        first_problem: None,
    };
    let mut files = Vec::new();
    for path in paths {
        let meta = fs::metadata(path).map_err(io_err(path))?;
        if meta.is_dir() {
            let found = list_audit_files(path)?;
            if found.is_empty() {
                report.first_problem = Some(Problem {
                    file: path.clone(),
                    line: 0,
                    what: "no audit files (audit-YYYYMMDD-NNNN.jsonl) in this directory".into(),
                });
                return Ok(report);
            }
            files.extend(found.into_iter().map(|f| f.path));
        } else {
            files.push(path.clone());
        }
    }
    if files.is_empty() {
        report.first_problem = Some(Problem {
            file: PathBuf::new(),
            line: 0,
            what: "no audit files given".into(),
        });
        return Ok(report);
    }

    // (seq, hash, file, line) of the last good entry.
    let mut last: Option<(u64, String, PathBuf, usize)> = None;
    for path in &files {
        report.files += 1;
        let mut reader = LineReader::open(path)?;
        let problem = |line: usize, what: String| Problem {
            file: path.clone(),
            line,
            what,
        };
        while let Some((line_no, next)) = reader.next_line()? {
            let bytes = match next {
                Ok(bytes) => bytes,
                Err(what) => {
                    report.first_problem = Some(problem(line_no, what));
                    return Ok(report);
                }
            };
            let entry = match parse_line(bytes) {
                Ok(entry) => entry,
                Err(what) => {
                    report.first_problem = Some(problem(line_no, what));
                    return Ok(report);
                }
            };
            let link_problem = match &last {
                None if entry.seq == 1 && entry.prev != GENESIS_HASH => {
                    Some("entry seq 1 must have prev = 64 zeros".to_string())
                }
                None if entry.seq != 1 && entry.prev == GENESIS_HASH => Some(format!(
                    "entry seq {} has the genesis prev (64 zeros) but is not seq 1",
                    entry.seq
                )),
                None => None,
                Some((seq, hash, file, line)) => {
                    let expected = seq.saturating_add(1);
                    if entry.seq != expected {
                        let kind = if entry.seq > expected {
                            "sequence gap (entries missing)"
                        } else {
                            "sequence goes back or repeats"
                        };
                        Some(format!(
                            "{kind}: expected seq {expected}, found {} (previous entry at {}:{line})",
                            entry.seq,
                            file.display()
                        ))
                    } else if entry.prev != *hash {
                        Some(format!(
                            "broken hash chain: prev does not match the hash of the previous \
                             entry at {}:{line}",
                            file.display()
                        ))
                    } else {
                        None
                    }
                }
            };
            if let Some(what) = link_problem {
                report.first_problem = Some(problem(line_no, what));
                return Ok(report);
            }
            report.lines += 1;
            report.first_seq.get_or_insert(entry.seq);
            report.last_seq = Some(entry.seq);
            last = Some((entry.seq, entry.hash, path.clone(), line_no));
        }
    }
    Ok(report)
}

/// A 1-based line number and the line without its `\n`, or what is wrong with it.
type NumberedLine<'a> = (usize, Result<&'a [u8], String>);

/// Reads `\n`-terminated lines of at most [`MAX_LINE_BYTES`]; a line that is too long or lacks
/// its newline is reported as `Err(what)`.
struct LineReader {
    path: PathBuf,
    reader: BufReader<File>,
    buf: Vec<u8>,
    line_no: usize,
}

impl LineReader {
    fn open(path: &Path) -> Result<LineReader, AuditError> {
        let file = File::open(path).map_err(io_err(path))?;
        Ok(LineReader {
            path: path.to_path_buf(),
            reader: BufReader::new(file),
            buf: Vec::new(),
            line_no: 0,
        })
    }

    fn next_line(&mut self) -> Result<Option<NumberedLine<'_>>, AuditError> {
        self.buf.clear();
        let n = (&mut self.reader)
            .take(MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut self.buf)
            .map_err(io_err(&self.path))?;
        if n == 0 {
            return Ok(None);
        }
        self.line_no += 1;
        let line = match self.buf.strip_suffix(b"\n") {
            Some(bytes) => Ok(bytes),
            None if self.buf.len() > MAX_LINE_BYTES => {
                Err(format!("line longer than {MAX_LINE_BYTES} bytes"))
            }
            None => Err("incomplete last line (no newline): a write cut short by a crash".into()),
        };
        Ok(Some((self.line_no, line)))
    }
}

/// The last `seq` and the newest `time` in a file (`None` if it is empty). Every line must be a
/// valid entry: retention keeps what it cannot read.
fn newest_entry(path: &Path) -> Result<Option<(u64, SystemTime)>, AuditError> {
    let mut reader = LineReader::open(path)?;
    let mut newest: Option<(u64, SystemTime)> = None;
    while let Some((line, next)) = reader.next_line()? {
        let corrupt = |what: String| AuditError::Corrupt {
            file: path.to_path_buf(),
            line,
            what,
        };
        let entry = next.and_then(parse_line).map_err(corrupt)?;
        let time = parse_rfc3339(&entry.time)
            .ok_or_else(|| corrupt(format!("time {:?} is not RFC 3339 UTC", entry.time)))?;
        let max = newest.map_or(time, |(_, t)| t.max(time));
        newest = Some((entry.seq, max));
    }
    Ok(newest)
}

/// The fields of a line as they are checked.
struct Parsed {
    seq: u64,
    time: String,
    prev: String,
    hash: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LineFields {
    seq: u64,
    time: String,
    prev: String,
    event: serde_json::Value,
    hash: String,
}

/// Check one line (without its `\n`) on its own: hash field, own hash, structure.
fn parse_line(bytes: &[u8]) -> Result<Parsed, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "line is not valid UTF-8".to_string())?;
    let malformed = || "missing or malformed hash field at the end of the line".to_string();
    if text.len() < HASH_SUFFIX_LEN + 2 || !text.is_char_boundary(text.len() - HASH_SUFFIX_LEN) {
        return Err(malformed());
    }
    let (head, tail) = text.split_at(text.len() - HASH_SUFFIX_LEN);
    let recorded = tail
        .strip_prefix(",\"hash\":\"")
        .and_then(|t| t.strip_suffix("\"}"))
        .filter(|h| is_hex64(h))
        .ok_or_else(malformed)?;
    let computed = sha256_hex(format!("{head}}}").as_bytes());
    if computed != recorded {
        return Err(format!(
            "hash mismatch: the entry was modified (recorded {recorded}, computed {computed})"
        ));
    }
    let fields: LineFields =
        serde_json::from_str(text).map_err(|e| format!("not a valid audit entry: {e}"))?;
    if fields.hash != recorded {
        return Err(malformed());
    }
    if fields.seq == 0 {
        return Err("seq 0: sequence numbers start at 1".into());
    }
    if !is_hex64(&fields.prev) {
        return Err("prev is not 64 lowercase hex digits".into());
    }
    if parse_rfc3339(&fields.time).is_none() {
        return Err(format!("time {:?} is not RFC 3339 UTC", fields.time));
    }
    if !fields.event.get("event").is_some_and(|v| v.is_string()) {
        return Err("event is not an object with an \"event\" name".into());
    }
    Ok(Parsed {
        seq: fields.seq,
        time: fields.time,
        prev: fields.prev,
        hash: fields.hash,
    })
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn sha256_hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = Sha256::digest(bytes);
    let mut out = String::with_capacity(64);
    for b in digest {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Files

struct AuditFile {
    date: u32,
    counter: u64,
    path: PathBuf,
}

/// `audit-YYYYMMDD-NNNN.jsonl` → (date, counter).
fn parse_file_name(name: &str) -> Option<(u32, u64)> {
    let rest = name.strip_prefix("audit-")?.strip_suffix(".jsonl")?;
    let (date, counter) = rest.split_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if date.len() != 8 || !digits(date) || counter.len() < 4 || !digits(counter) {
        return None;
    }
    Some((date.parse().ok()?, counter.parse().ok()?))
}

/// The audit files in `dir`, oldest first.
fn list_audit_files(dir: &Path) -> Result<Vec<AuditFile>, AuditError> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name();
        let Some((date, counter)) = name.to_str().and_then(parse_file_name) else {
            continue;
        };
        files.push(AuditFile {
            date,
            counter,
            path: entry.path(),
        });
    }
    files.sort_by_key(|f| (f.date, f.counter));
    Ok(files)
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

fn create_dir(dir: &Path) -> Result<(), AuditError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o750);
    }
    builder.create(dir).map_err(io_err(dir))
}

fn open_append(path: &Path) -> Result<File, AuditError> {
    OpenOptions::new()
        .read(true)
        .append(true)
        .open(path)
        .map_err(io_err(path))
}

fn sync_dir(dir: &Path) -> Result<(), AuditError> {
    #[cfg(unix)]
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

fn lock_dir(dir: &Path) -> Result<File, AuditError> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_err(&path))?;
    #[cfg(unix)]
    {
        use std::os::unix::io::AsRawFd;
        // SAFETY: flock on a file descriptor we own; no memory is involved.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::WouldBlock {
                return Err(AuditError::Locked(dir.to_path_buf()));
            }
            return Err(io_err(&path)(err));
        }
    }
    Ok(file)
}

/// The end of a file: its last complete line and whatever follows the last newline.
struct Tail {
    /// Offset and bytes (without `\n`) of the last `\n`-terminated line.
    last_line: Option<(u64, Vec<u8>)>,
    /// Offset of the bytes after the last `\n` (the file length if there are none).
    partial_start: u64,
    partial: Vec<u8>,
}

fn read_tail(file: &mut File, path: &Path, len: u64) -> Result<Tail, AuditError> {
    // Both the partial tail and the last line are at most a line long.
    let limit = 2 * (MAX_LINE_BYTES as u64 + 1);
    let mut window = len.min(64 * 1024);
    loop {
        let start = len - window;
        let mut buf = vec![0; usize::try_from(window).unwrap_or(usize::MAX)];
        file.seek(SeekFrom::Start(start))
            .and_then(|_| file.read_exact(&mut buf))
            .map_err(io_err(path))?;
        let last_nl = buf.iter().rposition(|&b| b == b'\n');
        let found = match last_nl {
            None if start == 0 => Some(Tail {
                last_line: None,
                partial_start: 0,
                partial: buf,
            }),
            None => None,
            Some(p) => match buf[..p].iter().rposition(|&b| b == b'\n') {
                Some(q) => Some((start + q as u64 + 1, q + 1)),
                None if start == 0 => Some((0, 0)),
                None => None,
            }
            .map(|(line_start, from)| Tail {
                last_line: Some((line_start, buf[from..p].to_vec())),
                partial_start: start + p as u64 + 1,
                partial: buf[p + 1..].to_vec(),
            }),
        };
        match found {
            Some(tail) if tail.partial.len() > MAX_LINE_BYTES => {
                let line = count_lines(file, path, tail.partial_start)? + 1;
                return Err(AuditError::Corrupt {
                    file: path.to_path_buf(),
                    line,
                    what: format!(
                        "{} bytes without a newline at the end: not a torn write, refusing to \
                         truncate",
                        tail.partial.len()
                    ),
                });
            }
            Some(tail) => return Ok(tail),
            None if window >= limit => {
                return Err(AuditError::Corrupt {
                    file: path.to_path_buf(),
                    line: count_lines(file, path, start)? + 1,
                    what: format!("a line longer than {MAX_LINE_BYTES} bytes at the end"),
                });
            }
            None => window = len.min(window * 2),
        }
    }
}

/// Newlines before `offset`.
fn count_lines(file: &mut File, path: &Path, offset: u64) -> Result<usize, AuditError> {
    file.seek(SeekFrom::Start(0)).map_err(io_err(path))?;
    let mut reader = BufReader::new(file.take(offset));
    let mut count = 0;
    loop {
        let chunk = reader.fill_buf().map_err(io_err(path))?;
        if chunk.is_empty() {
            return Ok(count);
        }
        count += chunk.iter().filter(|&&b| b == b'\n').count();
        let n = chunk.len();
        reader.consume(n);
    }
}

fn corrupt_at(file: &mut File, path: &Path, offset: u64, what: String) -> AuditError {
    match count_lines(file, path, offset) {
        Ok(n) => AuditError::Corrupt {
            file: path.to_path_buf(),
            line: n + 1,
            what,
        },
        Err(e) => e,
    }
}

/// The last entry of the newest non-empty file among `files` (oldest first); `None` if all are
/// empty. Files other than the current one must end with a newline.
fn last_entry_of(files: &[AuditFile]) -> Result<Option<Parsed>, AuditError> {
    for f in files.iter().rev() {
        let path = &f.path;
        let mut file = File::open(path).map_err(io_err(path))?;
        let len = file.metadata().map_err(io_err(path))?.len();
        if len == 0 {
            continue;
        }
        let tail = read_tail(&mut file, path, len)?;
        if !tail.partial.is_empty() {
            let line = count_lines(&mut file, path, tail.partial_start)? + 1;
            return Err(AuditError::Corrupt {
                file: path.clone(),
                line,
                what: "a closed audit file does not end with a newline".into(),
            });
        }
        if let Some((start, bytes)) = tail.last_line {
            return parse_line(&bytes).map(Some).map_err(|what| {
                corrupt_at(
                    &mut file,
                    path,
                    start,
                    format!("last entry is invalid: {what}"),
                )
            });
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names() {
        assert_eq!(
            parse_file_name("audit-20250301-0000.jsonl"),
            Some((20_250_301, 0))
        );
        assert_eq!(
            parse_file_name("audit-20250301-12345.jsonl"),
            Some((20_250_301, 12_345))
        );
        assert_eq!(parse_file_name("audit-2025031-0000.jsonl"), None);
        assert_eq!(parse_file_name("audit-20250301-000.jsonl"), None);
        assert_eq!(parse_file_name("audit-20250301-0000.jsonl.bak"), None);
        assert_eq!(parse_file_name(".lock"), None);
    }

    #[test]
    fn parse_line_never_panics_on_junk() {
        let good = {
            let head = format!(
                "{{\"seq\":1,\"time\":\"2025-01-01T00:00:00.000Z\",\"prev\":\"{GENESIS_HASH}\",\
                 \"event\":{{\"event\":\"started\",\"version\":\"1\"}}"
            );
            let hash = sha256_hex(format!("{head}}}").as_bytes());
            format!("{head},\"hash\":\"{hash}\"}}")
        };
        assert!(parse_line(good.as_bytes()).is_ok());
        for cut in 0..good.len() {
            assert!(parse_line(&good.as_bytes()[..cut]).is_err());
        }
        assert!(parse_line(&[0xff; 100]).is_err());
        let multibyte = "é".repeat(60);
        assert!(parse_line(multibyte.as_bytes()).is_err());
    }
}
