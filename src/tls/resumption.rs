//! TLS session resumption, both directions (issue 16 item 8): a client that comes back, and a
//! tlsgate that delivers to the same MX again, skip the full handshake (its key exchange and
//! certificate signature are most of a STARTTLS session's CPU).
//!
//! * Inbound ([`offer`]): stateless tickets (RFC 8446 §4.6.1 for TLS 1.3, RFC 5077 for
//!   TLS 1.2) from rustls's rotating ticketer (keys random per process, rotated every 6 h,
//!   tickets valid 12 h), and TLS 1.2 session ids from an in-memory cache of
//!   [`SERVER_SESSIONS`] entries. Each server configuration has its own ticketer and cache, so
//!   a configuration built for other client CAs (S2) never accepts a session another one made.
//! * Outbound ([`ClientConfigs`]): a resumed session skips the certificate check (RFC 8446
//!   §2.2: resumption continues the earlier session's authentication), so a session may only
//!   be resumed under the trust it was made under. rustls resumes a session only with the very
//!   verifier instance that checked it; delivery therefore keeps one client configuration (its
//!   verifier and its session cache) per [`TrustPolicy`], the complete input of the
//!   certificate check (unauthenticated; PKIX with its reference names; DANE with its TLSA
//!   records, names and PKIX flag): a session made under `may` is never resumed for `verify`,
//!   nor one checked against TLSA records that have changed since. Like Postfix's
//!   `smtp_tls_session_cache_timeout` (default 3600 s), a configuration is replaced after
//!   [`CLIENT_SESSION_MAX_AGE`], so a resumed session never rests on a check older than that.
//!   Reports (`probe`, `domains check`) record the presented chain and never resume: they
//!   must see the certificate the peer presents today.

use crate::dns::Tlsa;
use crate::policy::NamePattern;
use rustls::client::ClientSessionMemoryCache;
use rustls::client::Resumption;
use rustls::server::ServerSessionMemoryCache;
use rustls::{ClientConfig, ServerConfig};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// TLS 1.2 session ids a server configuration remembers (about 200 bytes each).
pub const SERVER_SESSIONS: usize = 10_000;

/// How long a delivery session may be resumed after the full handshake that checked the
/// peer (Postfix's `smtp_tls_session_cache_timeout` default).
pub const CLIENT_SESSION_MAX_AGE: Duration = Duration::from_secs(3600);

/// Trust policies whose sessions are kept at once; past this the oldest stores go. One per
/// destination and TLS requirement, so this bounds memory, not correctness.
const CLIENT_POLICIES: usize = 4096;

/// Sessions per trust policy (MX hosts of one destination; a few each).
const SESSIONS_PER_POLICY: usize = 32;

/// Turns on resumption for an inbound STARTTLS configuration: tickets and session ids.
///
/// Errors: the ticketer could not be made (no randomness), as a rustls error.
pub fn offer(config: &mut ServerConfig) -> Result<(), rustls::Error> {
    config.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()?;
    config.session_storage = ServerSessionMemoryCache::new(SERVER_SESSIONS);
    Ok(())
}

/// Everything a delivery connection's certificate check depends on: sessions are resumed
/// only under an equal policy (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TrustPolicy {
    /// `may` / `encrypt`: any certificate (RFC 7435).
    Unauthenticated,
    /// `verify` and stricter: public or extra roots, one of these names (T2, T9).
    Pkix(Vec<NamePattern>),
    /// DANE (RFC 7672): these TLSA records and names, and whether PKIX is required too.
    Dane {
        tlsa: Vec<Tlsa>,
        names: Vec<NamePattern>,
        pkix: bool,
    },
}

/// The delivery side's client configurations, one per [`TrustPolicy`], each at most
/// [`CLIENT_SESSION_MAX_AGE`] old, each with its own session cache. Shared by every delivery
/// connection of the process.
#[derive(Debug, Default)]
pub struct ClientConfigs {
    configs: Mutex<HashMap<TrustPolicy, (Instant, Arc<ClientConfig>)>>,
}

impl ClientConfigs {
    /// The configuration for connections checked under `policy`: the kept one, or a new one
    /// from `make` (given the resumption setting to use) when there was none or it had grown
    /// too old. Errors: those of `make`.
    pub fn get_or_make<E>(
        &self,
        policy: TrustPolicy,
        make: impl FnOnce(Resumption) -> Result<ClientConfig, E>,
    ) -> Result<Arc<ClientConfig>, E> {
        self.get_or_make_at(policy, Instant::now(), make)
    }

    fn get_or_make_at<E>(
        &self,
        policy: TrustPolicy,
        now: Instant,
        make: impl FnOnce(Resumption) -> Result<ClientConfig, E>,
    ) -> Result<Arc<ClientConfig>, E> {
        // A poisoned lock only means another connection panicked while holding it; the map
        // is still a valid cache.
        let mut configs = self.configs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((made, config)) = configs.get(&policy) {
            if now.duration_since(*made) < CLIENT_SESSION_MAX_AGE {
                return Ok(config.clone());
            }
        }
        if configs.len() >= CLIENT_POLICIES {
            configs.retain(|_, (made, _)| now.duration_since(*made) < CLIENT_SESSION_MAX_AGE);
            if configs.len() >= CLIENT_POLICIES {
                // Still full of live entries: start over rather than track recency; the cost
                // is one full handshake per destination.
                configs.clear();
            }
        }
        let sessions =
            Resumption::store(Arc::new(ClientSessionMemoryCache::new(SESSIONS_PER_POLICY)));
        let config = Arc::new(make(sessions)?);
        configs.insert(policy, (now, config.clone()));
        Ok(config)
    }

    /// Number of trust policies with a configuration (for tests).
    pub fn policies(&self) -> usize {
        self.configs.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;

    fn make(resumption: Resumption) -> Result<ClientConfig, Infallible> {
        let mut config = ClientConfig::builder_with_provider(super::super::crypto_provider())
            .with_protocol_versions(super::super::PROTOCOL_VERSIONS)
            .expect("versions")
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        config.resumption = resumption;
        Ok(config)
    }

    fn get(configs: &ClientConfigs, policy: TrustPolicy, now: Instant) -> Arc<ClientConfig> {
        match configs.get_or_make_at(policy, now, make) {
            Ok(config) => config,
            Err(never) => match never {},
        }
    }

    #[test]
    fn one_configuration_per_trust_policy() {
        let configs = ClientConfigs::default();
        let now = Instant::now();
        let pkix = TrustPolicy::Pkix(vec![NamePattern::parse("mx.example.no")]);
        let a = get(&configs, pkix.clone(), now);
        let b = get(&configs, pkix.clone(), now);
        assert!(Arc::ptr_eq(&a, &b), "the same policy shares its sessions");
        // A session made without authentication is never offered where a check is required,
        // nor one checked for other names (RFC 8446 §2.2).
        let opportunistic = get(&configs, TrustPolicy::Unauthenticated, now);
        assert!(!Arc::ptr_eq(&a, &opportunistic));
        let other = get(
            &configs,
            TrustPolicy::Pkix(vec![NamePattern::parse("mx.example.com")]),
            now,
        );
        assert!(!Arc::ptr_eq(&a, &other));
        assert_eq!(configs.policies(), 3);
    }

    #[test]
    fn configurations_expire_after_the_maximum_age() {
        let configs = ClientConfigs::default();
        let start = Instant::now();
        let a = get(&configs, TrustPolicy::Unauthenticated, start);
        let later = start + CLIENT_SESSION_MAX_AGE + Duration::from_secs(1);
        let b = get(&configs, TrustPolicy::Unauthenticated, later);
        assert!(
            !Arc::ptr_eq(&a, &b),
            "one older than the maximum age is replaced"
        );
    }

    #[test]
    fn the_number_of_configurations_is_bounded() {
        let configs = ClientConfigs::default();
        let now = Instant::now();
        for n in 0..CLIENT_POLICIES + 10 {
            let name = format!("mx{n}.example.no");
            get(
                &configs,
                TrustPolicy::Pkix(vec![NamePattern::parse(&name)]),
                now,
            );
        }
        assert!(configs.policies() <= CLIENT_POLICIES);
    }
}
