//! The durable MTA-STS policy cache (RFC 8461 section 5.1: a cached policy stays in force
//! until it expires, whatever happens to the policy host; so it must survive a restart).
//!
//! One small JSON file under `server.data_dir` (`Config::mta_sts_cache`), rewritten whole on
//! every change: written to a temporary file, synced, renamed over the old one and the
//! directory synced, so that a crash leaves either the old or the new file, never half of one.
//! A file that cannot be read at start is logged and replaced: it is a cache, and the next
//! delivery fetches the policy again.

use crate::policy::mta_sts::{StsMode, StsPolicy};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// A cache file larger than this is not read (a bound on every read): 10 000 policies of the
/// 64 KiB maximum would not fit, real ones are a few hundred bytes.
pub const MAX_CACHE_BYTES: u64 = 64 * 1024 * 1024;

/// One cached policy (RFC 8461 section 5.1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedPolicy {
    /// The `id` of the `_mta-sts` record the policy was fetched for.
    pub id: String,
    /// The policy as served.
    pub text: String,
    /// The parsed policy.
    pub policy: StsPolicy,
    /// When it was fetched (Unix seconds).
    pub fetched_at: u64,
    /// `fetched_at + max_age`: after this it is no longer in force.
    pub expires: u64,
}

impl CachedPolicy {
    /// Still in force at `now` (Unix seconds)?
    pub fn fresh(&self, now: u64) -> bool {
        now < self.expires
    }
}

/// The file's layout; `version` lets a later release change it.
#[derive(Debug, Default, Serialize, Deserialize)]
struct CacheFile {
    version: u32,
    /// By recipient domain (A-label, lower case).
    policies: BTreeMap<String, CachedPolicy>,
}

/// The policies by domain, and where they are kept (`None`: in memory only, for the tools).
#[derive(Debug, Default)]
pub struct PolicyCache {
    policies: BTreeMap<String, CachedPolicy>,
    path: Option<PathBuf>,
}

/// Why the cache could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// Reading or writing the file failed.
    #[error("MTA-STS cache {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a cache this release can read.
    #[error("MTA-STS cache {path}: {reason}")]
    Format {
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl PolicyCache {
    /// An empty cache kept only in memory.
    pub fn in_memory() -> PolicyCache {
        PolicyCache::default()
    }

    /// An empty cache written to `path` at its first change (`None`: in memory only).
    pub fn empty(path: Option<PathBuf>) -> PolicyCache {
        PolicyCache {
            policies: BTreeMap::new(),
            path,
        }
    }

    /// Reads the cache at `path` (none there yet: empty). `persist`: write changes back (the
    /// relay); false for tools, which read the relay's cache but never change it.
    pub fn open(path: &Path, persist: bool) -> Result<PolicyCache, CacheError> {
        let io = |source| CacheError::Io {
            path: path.display().to_string(),
            source,
        };
        let keep = persist.then(|| path.to_path_buf());
        let file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(PolicyCache {
                    policies: BTreeMap::new(),
                    path: keep,
                })
            }
            Err(e) => return Err(io(e)),
        };
        let mut text = String::new();
        file.take(MAX_CACHE_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(io)?;
        let format = |reason: String| CacheError::Format {
            path: path.display().to_string(),
            reason,
        };
        if text.len() as u64 > MAX_CACHE_BYTES {
            return Err(format(format!("larger than {MAX_CACHE_BYTES} bytes")));
        }
        let parsed: CacheFile =
            serde_json::from_str(&text).map_err(|e| format(format!("not a cache file: {e}")))?;
        if parsed.version != 1 {
            return Err(format(format!("unknown version {}", parsed.version)));
        }
        Ok(PolicyCache {
            policies: parsed.policies,
            path: keep,
        })
    }

    /// The cached policy of `domain`, fresh or not.
    pub fn get(&self, domain: &str) -> Option<&CachedPolicy> {
        self.policies.get(domain)
    }

    /// Every cached domain and policy.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &CachedPolicy)> {
        self.policies.iter()
    }

    /// Stores `policy` for `domain` (replacing the old one).
    pub fn put(&mut self, domain: &str, policy: CachedPolicy) {
        self.policies.insert(domain.to_string(), policy);
    }

    /// Forgets `domain`'s policy (`mode: none`, RFC 8461 section 5); true if there was one.
    pub fn remove(&mut self, domain: &str) -> bool {
        self.policies.remove(domain).is_some()
    }

    /// Drops the policies that expired before `now`; true if any was dropped.
    pub fn drop_expired(&mut self, now: u64) -> bool {
        let before = self.policies.len();
        self.policies.retain(|_, p| p.fresh(now));
        before != self.policies.len()
    }

    /// Fresh policies by mode, for the `tlsgate_mta_sts_policies` gauge.
    pub fn count_by_mode(&self, now: u64) -> (i64, i64) {
        let fresh = || self.policies.values().filter(|p| p.fresh(now));
        let count = |mode| fresh().filter(|p| p.policy.mode == mode).count() as i64;
        (count(StsMode::Enforce), count(StsMode::Testing))
    }

    /// The file contents and where to write them, when this cache is persistent: taken under
    /// the caller's lock, written by [`write_atomically`] outside it.
    pub fn snapshot(&self) -> Option<(PathBuf, Vec<u8>)> {
        let path = self.path.clone()?;
        let file = CacheFile {
            version: 1,
            policies: self.policies.clone(),
        };
        serde_json::to_vec_pretty(&file)
            .ok()
            .map(|bytes| (path, bytes))
    }
}

/// Replaces `path` by `bytes` so that a crash leaves the old or the new contents: temporary
/// file, fsync, rename, fsync of the directory. Creates the directory (mode 0700) if needed.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), CacheError> {
    let io = |source| CacheError::Io {
        path: path.display().to_string(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    if !dir.exists() {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io)?;
    }
    let tmp = path.with_extension("json.tmp");
    let mut file = std::fs::File::create(&tmp).map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(io)?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(id: &str, fetched_at: u64) -> CachedPolicy {
        let text = "version: STSv1\nmode: enforce\nmx: mx.example\nmax_age: 100\n";
        CachedPolicy {
            id: id.into(),
            text: text.into(),
            policy: StsPolicy::parse(text).unwrap(),
            fetched_at,
            expires: fetched_at + 100,
        }
    }

    /// RFC 8461 section 5.1: what was cached is there again after a restart.
    #[test]
    fn policies_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mta-sts").join("policies.json");
        let mut cache = PolicyCache::open(&path, true).unwrap();
        assert!(cache.get("example.no").is_none());
        cache.put("example.no", policy("id1", 1000));
        let (to, bytes) = cache.snapshot().unwrap();
        write_atomically(&to, &bytes).unwrap();
        let again = PolicyCache::open(&path, true).unwrap();
        assert_eq!(again.get("example.no"), Some(&policy("id1", 1000)));
        assert_eq!(again.count_by_mode(1050), (1, 0));
        assert_eq!(again.count_by_mode(1100), (0, 0));
        // A tool reads it but has nothing to write.
        assert!(PolicyCache::open(&path, false)
            .unwrap()
            .snapshot()
            .is_none());
        // Garbage is refused with the file's name.
        std::fs::write(&path, "{ not json").unwrap();
        let err = PolicyCache::open(&path, true).unwrap_err().to_string();
        assert!(err.contains("policies.json"), "{err}");
    }

    #[test]
    fn expired_policies_are_dropped() {
        let mut cache = PolicyCache::in_memory();
        cache.put("a.example", policy("x", 0));
        cache.put("b.example", policy("y", 500));
        assert!(cache.drop_expired(550));
        assert!(cache.get("a.example").is_none());
        assert!(cache.get("b.example").is_some());
        assert!(!cache.drop_expired(550));
        assert!(cache.remove("b.example"));
    }
}
