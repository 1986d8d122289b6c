//! A test seam, not a feature: the client address that sender authentication sees for one
//! connection, set from inside the process (tests/spf_suite.rs runs the RFC 7208 test suite
//! over SMTP, whose clients have addresses such as 1.2.3.4 that a test on loopback cannot
//! connect from). Nothing outside the process can set it: no configuration key, environment
//! variable or SMTP command reaches it, and the `tlsgate` binary never calls
//! [`set_auth_client_ip`], so in production the map stays empty and the peer address
//! (canonical, see [`crate::inbound::canonical_peer`]) is used unchanged.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

static USED: AtomicBool = AtomicBool::new(false);
static OVERRIDES: Mutex<Option<HashMap<SocketAddr, IpAddr>>> = Mutex::new(None);

/// Tests only: sender authentication of the connection from `peer` (the client socket's
/// local address as the test sees it) checks `ip` instead of the peer's address.
#[doc(hidden)]
pub fn set_auth_client_ip(peer: SocketAddr, ip: IpAddr) {
    USED.store(true, Ordering::Release);
    OVERRIDES
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get_or_insert_with(HashMap::new)
        .insert(peer, ip);
}

/// Tests only: forgets the address set for `peer`.
#[doc(hidden)]
pub fn clear_auth_client_ip(peer: SocketAddr) {
    if let Some(map) = OVERRIDES.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
        map.remove(&peer);
    }
}

/// The address sender authentication checks for the connection from `peer`: the peer's own
/// unless a test set another.
pub(crate) fn auth_client_ip(peer: SocketAddr) -> IpAddr {
    if !USED.load(Ordering::Acquire) {
        return peer.ip();
    }
    OVERRIDES
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .and_then(|map| map.get(&peer).copied())
        .unwrap_or(peer.ip())
}
