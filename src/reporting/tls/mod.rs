//! SMTP TLS reporting, sending side (RFC 8460; D3, issue 13 items 2 and 3): the recorder that
//! delivery feeds ([`counters`]), the mapping of a session to its result type ([`result`]),
//! the TLSRPT record ([`record`]), the report ([`report`]) and the daily job that sends it
//! ([`send`]).

pub mod counters;
pub mod record;
pub mod report;
pub mod result;
pub mod send;

pub use counters::TlsCounters;
pub use result::{failure_result, result_type, sending_ip_toward, SessionOutcome};
pub use send::{missing_key_warning, signer_for, Sent, TlsReporting};
