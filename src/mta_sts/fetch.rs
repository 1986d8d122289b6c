//! Fetching an MTA-STS policy: `https://mta-sts.<domain>/.well-known/mta-sts.txt` (RFC 8461
//! section 3.3), with the bounds the RFC sets and the failure classes TLS reporting needs
//! (RFC 8460 section 4.3.3).
//!
//! The host name is resolved with the relay's own resolver (tests serve it from their zones),
//! the certificate is checked against the public roots plus `outbound.extra_trust_roots`
//! (`tls::client::ClientTls::https`), redirects are not followed, the body is read chunk by
//! chunk up to 64 KiB, and the whole fetch, name resolution included, ends after 60 seconds.

use crate::dns::Resolver;
use crate::domain::Domain;
use crate::policy::mta_sts::StsPolicy;
use crate::tls::client::{ClientTls, TlsFailure};
use crate::tls_report::ResultType;
use std::error::Error as _;
use std::net::SocketAddr;
use std::time::Duration;

/// RFC 8461 section 3.3: senders may limit the policy body to 64 KiB.
pub const MAX_POLICY_BYTES: usize = 64 * 1024;

/// RFC 8461 section 3.3: a fetch should time out after no less than 60 seconds; tlsgate gives
/// it exactly that, for the whole fetch.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a policy could not be fetched, in the classes of RFC 8460 section 4.3.3.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// The policy host could not be reached or did not answer 200 (`sts-policy-fetch-error`).
    #[error("policy fetch failed: {0}")]
    Fetch(String),
    /// The answer is no valid policy: media type, size, encoding or syntax
    /// (`sts-policy-invalid`).
    #[error("{0}")]
    Invalid(String),
    /// The policy host's HTTPS certificate is not valid for it (`sts-webpki-invalid`).
    #[error("policy host certificate invalid: {0}")]
    Webpki(String),
}

impl FetchError {
    /// The RFC 8460 result type a TLS report records for it.
    pub fn result_type(&self) -> ResultType {
        match self {
            FetchError::Fetch(_) => ResultType::StsPolicyFetchError,
            FetchError::Invalid(_) => ResultType::StsPolicyInvalid,
            FetchError::Webpki(_) => ResultType::StsWebpkiInvalid,
        }
    }

    /// The `result` label of `tlsgate_mta_sts_fetch_total`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            FetchError::Fetch(_) => "fetch_error",
            FetchError::Invalid(_) => "invalid",
            FetchError::Webpki(_) => "webpki_invalid",
        }
    }
}

/// A fetched and parsed policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// The body as served.
    pub text: String,
    /// The parsed policy.
    pub policy: StsPolicy,
}

/// Fetches and parses the policy of `domain` from `mta-sts.<domain>` on `port`; `timeout`
/// bounds the whole (delivery uses [`FETCH_TIMEOUT`]).
pub async fn fetch_policy(
    tls: &ClientTls,
    resolver: &dyn Resolver,
    domain: &Domain,
    port: u16,
    timeout: Duration,
) -> Result<Fetched, FetchError> {
    tokio::time::timeout(timeout, fetch_inner(tls, resolver, domain, port, timeout))
        .await
        .unwrap_or_else(|_| {
            Err(FetchError::Fetch(format!(
                "no policy within {}",
                humantime::format_duration(timeout)
            )))
        })
}

async fn fetch_inner(
    tls: &ClientTls,
    resolver: &dyn Resolver,
    domain: &Domain,
    port: u16,
    timeout: Duration,
) -> Result<Fetched, FetchError> {
    let host = format!("mta-sts.{}", domain.as_str());
    let addrs = resolver
        .addresses(&host)
        .await
        .map_err(|e| FetchError::Fetch(e.to_string()))?;
    if addrs.value.ips.is_empty() {
        return Err(FetchError::Fetch(format!("{host} has no address")));
    }
    let socket_addrs: Vec<SocketAddr> = addrs
        .value
        .ips
        .iter()
        .map(|ip| SocketAddr::new(*ip, port))
        .collect();
    let config = tls
        .https_client_config()
        .map_err(|e| FetchError::Fetch(format!("TLS configuration: {e}")))?;
    let client = reqwest::Client::builder()
        .tls_backend_preconfigured(config)
        // RFC 8461 section 3.3: "HTTP 3xx redirects MUST NOT be followed".
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(timeout)
        .user_agent(concat!("tlsgate/", env!("CARGO_PKG_VERSION")))
        .resolve_to_addrs(&host, &socket_addrs)
        .build()
        .map_err(|e| FetchError::Fetch(format!("HTTP client: {e}")))?;
    let url = format!("https://{host}:{port}/.well-known/mta-sts.txt");
    let mut response = client
        .get(&url)
        .send()
        .await
        .map_err(|e| classify(e, &host))?;
    // RFC 8461 section 3.3: only a 200 carries a policy.
    if response.status() != reqwest::StatusCode::OK {
        return Err(FetchError::Fetch(format!(
            "{url} answered HTTP {}",
            response.status()
        )));
    }
    let media_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if media_type != "text/plain" {
        return Err(FetchError::Invalid(format!(
            "{url} is served as {:?}, not text/plain (RFC 8461 section 3.2)",
            media_type
        )));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| classify(e, &host))? {
        if body.len() + chunk.len() > MAX_POLICY_BYTES {
            return Err(FetchError::Invalid(format!(
                "{url} is larger than {MAX_POLICY_BYTES} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    let text = String::from_utf8(body)
        .map_err(|_| FetchError::Invalid(format!("{url} is not UTF-8 text")))?;
    let policy = StsPolicy::parse(&text).map_err(|e| FetchError::Invalid(e.to_string()))?;
    Ok(Fetched { text, policy })
}

/// Sorts an HTTP client error: a certificate the web PKI refuses is `sts-webpki-invalid`,
/// everything else a fetch error (RFC 8460 section 4.3.3). The cause is found in the error's
/// source chain, where the connector left rustls' own error.
fn classify(error: reqwest::Error, host: &str) -> FetchError {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = error.source();
    let mut words = error.to_string();
    while let Some(e) = cause {
        if let Some(invalid @ rustls::Error::InvalidCertificate(_)) = rustls_in(e) {
            // In words, as for SMTP peers ("certificate not trusted"), not rustls' names.
            return FetchError::Webpki(TlsFailure::from_rustls(invalid, host).to_string());
        }
        words = format!("{words}: {e}");
        cause = e.source();
    }
    FetchError::Fetch(words)
}

/// The rustls error `e` is or carries: the connector wraps it in an `io::Error`, sometimes
/// twice, and `io::Error::source` skips the wrapped error itself, so each layer is opened.
fn rustls_in<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    if let Some(tls) = e.downcast_ref::<rustls::Error>() {
        return Some(tls);
    }
    let inner = e.downcast_ref::<std::io::Error>()?.get_ref()?;
    rustls_in(inner)
}
