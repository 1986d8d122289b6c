//! DMARC aggregate reports, sending side (RFC 7489 section 7.2; D4, issue 17 item 4): the
//! recorder the inbound sessions feed ([`counters`]), what a domain's DMARC record asks for
//! and the external destination check ([`record`]), the report and its mail ([`report`]) and
//! the daily job that sends it ([`send`]).

pub mod counters;
pub mod record;
pub mod report;
pub mod send;

pub use counters::DmarcCounters;
pub use send::DmarcReporting;
