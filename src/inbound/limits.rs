//! Connection limits: total and per client IP address. A client over a limit gets
//! `421 4.7.0` and is disconnected at once (design.md, non-negotiable 4: too many
//! connections → 421), instead of queueing up and holding sockets.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Which limit refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitExceeded {
    /// `limits.max_connections` over all listeners.
    Total,
    /// `limits.max_connections_per_ip` for this client address.
    PerIp,
}

#[derive(Debug)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// Counts open connections, in total and per client IP (cheap to clone; clones share the
/// counts).
#[derive(Debug, Clone)]
pub struct ConnectionLimiter {
    max_total: usize,
    max_per_ip: usize,
    counts: Arc<Mutex<Counts>>,
}

/// Held for as long as a connection is open; dropping it frees the slot.
#[derive(Debug)]
pub struct ConnectionPermit {
    ip: IpAddr,
    counts: Arc<Mutex<Counts>>,
}

impl ConnectionLimiter {
    /// A limiter for `limits.max_connections` and `limits.max_connections_per_ip`.
    pub fn new(max_total: usize, max_per_ip: usize) -> ConnectionLimiter {
        ConnectionLimiter {
            max_total,
            max_per_ip,
            counts: Arc::new(Mutex::new(Counts {
                total: 0,
                per_ip: HashMap::new(),
            })),
        }
    }

    /// Takes a slot for a connection from `ip`, or says which limit is reached.
    pub fn try_acquire(&self, ip: IpAddr) -> Result<ConnectionPermit, LimitExceeded> {
        // A poisoned lock only means another thread panicked while counting; the counts
        // themselves are still consistent enough to go on with.
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if counts.total >= self.max_total {
            return Err(LimitExceeded::Total);
        }
        let for_ip = counts.per_ip.entry(ip).or_insert(0);
        if *for_ip >= self.max_per_ip {
            return Err(LimitExceeded::PerIp);
        }
        *for_ip += 1;
        counts.total += 1;
        Ok(ConnectionPermit {
            ip,
            counts: self.counts.clone(),
        })
    }

    /// Connections open now, over all clients.
    pub fn open_connections(&self) -> usize {
        self.counts.lock().unwrap_or_else(|p| p.into_inner()).total
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        counts.total = counts.total.saturating_sub(1);
        if let Some(n) = counts.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.per_ip.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_total_and_per_ip_and_frees_on_drop() {
        let limiter = ConnectionLimiter::new(3, 2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let p1 = limiter.try_acquire(a).unwrap();
        let _p2 = limiter.try_acquire(a).unwrap();
        assert_eq!(limiter.try_acquire(a).unwrap_err(), LimitExceeded::PerIp);
        let _p3 = limiter.try_acquire(b).unwrap();
        assert_eq!(limiter.try_acquire(b).unwrap_err(), LimitExceeded::Total);
        drop(p1);
        assert_eq!(limiter.open_connections(), 2);
        let _p4 = limiter.try_acquire(a).unwrap();
    }
}
