//! Idle connections kept for the next message to the same peer (design.md: "deliveries to the
//! same destination reuse connections and send several messages per connection").
//!
//! A connection is keyed by the address, the host name it was opened for and its TLS requirement, so
//! a connection is only ever reused under the same TLS requirements it was checked against.

use super::client::SmtpConnection;
use crate::policy::decision::Requirement;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What a pooled connection was opened and checked for (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    /// The peer's address.
    pub addr: SocketAddr,
    /// The host name it was opened for.
    pub host: String,
    /// The TLS requirement it was opened and checked under (level, names, TLSA records).
    pub require: Requirement,
}

/// Idle connections by [`PoolKey`], each kept at most `idle_timeout` and for at most
/// `max_transactions` transactions.
pub struct ConnectionPool {
    idle: Mutex<HashMap<PoolKey, Vec<SmtpConnection>>>,
    idle_timeout: Duration,
    max_transactions: u32,
}

impl ConnectionPool {
    /// An empty pool (`delivery.idle_timeout`, `delivery.max_messages_per_connection`).
    pub fn new(idle_timeout: Duration, max_transactions: u32) -> ConnectionPool {
        ConnectionPool {
            idle: Mutex::new(HashMap::new()),
            idle_timeout,
            max_transactions,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PoolKey, Vec<SmtpConnection>>> {
        // A panic while holding the lock cannot leave the map inconsistent (every operation
        // is a single insert or remove), so a poisoned lock is still usable.
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A fresh-enough idle connection for `key`, if there is one.
    pub fn take(&self, key: &PoolKey) -> Option<SmtpConnection> {
        let mut idle = self.lock();
        let list = idle.get_mut(key)?;
        let now = Instant::now();
        list.retain(|c| now.duration_since(c.idle_since) < self.idle_timeout);
        let conn = list.pop();
        if list.is_empty() {
            idle.remove(key);
        }
        conn
    }

    /// Keeps a connection for reuse; returns it when it has carried enough mail and should be
    /// closed instead.
    pub fn put(&self, key: PoolKey, conn: SmtpConnection) -> Option<SmtpConnection> {
        if conn.transactions >= self.max_transactions {
            return Some(conn);
        }
        self.lock().entry(key).or_default().push(conn);
        None
    }

    /// Removes and returns the connections idle for longer than the timeout.
    pub fn expired(&self) -> Vec<SmtpConnection> {
        let now = Instant::now();
        let mut out = Vec::new();
        let mut idle = self.lock();
        // The scheduler asks on every turn, that is for every new message (issue 16 item 7):
        // most turns find nothing, so look before moving connections between lists.
        let any = idle
            .values()
            .flatten()
            .any(|c| now.duration_since(c.idle_since) >= self.idle_timeout);
        if !any {
            return out;
        }
        for list in idle.values_mut() {
            let (old, fresh): (Vec<_>, Vec<_>) = list
                .drain(..)
                .partition(|c| now.duration_since(c.idle_since) >= self.idle_timeout);
            *list = fresh;
            out.extend(old);
        }
        idle.retain(|_, list| !list.is_empty());
        out
    }

    /// Every idle connection (at shutdown).
    pub fn drain(&self) -> Vec<SmtpConnection> {
        self.lock().drain().flat_map(|(_, list)| list).collect()
    }
}
