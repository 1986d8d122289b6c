//! Aggregate reports tlsgate sends to other domains. Today: SMTP TLS reports (RFC 8460, D3)
//! in [`tls`]; DMARC aggregate reports would live here too.

pub mod tls;
