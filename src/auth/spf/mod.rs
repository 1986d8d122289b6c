//! SPF (RFC 7208) of our own: the record syntax RFC 7208 requires ([`record`]), the DNS it
//! asks with a bound per query ([`dns`]), and check_host() with its limits ([`eval`]).
//!
//! Why not mail-auth's SPF (issue 17 item 1): run end to end against the RFC 7208 test suite
//! (`rfc7208-tests.yml` of pyspf 2.0.14, tests/spf_suite.rs) mail-auth 0.13.3 passed 146 of
//! the 198 cases that run over SMTP: it evaluates records RFC 7208 forbids, gives `temperror`
//! for names that cannot be DNS names, matches IPv4 clients against `ip6:`, takes the first
//! of two records and has no void-lookup limit. `mailrs-spf` 3.0 (Apache-2.0/MIT; its source
//! read, not run) refuses every record with `ptr` as a permerror, has no PTR lookup for
//! `%{p}`, no void-lookup limit and no `exp=`;
//! `viaspf` is GPL-3.0. This module passes all 198. mail-auth stays for DKIM, DMARC and ARC;
//! DMARC is fed the result computed here.

pub mod dns;
pub mod eval;
pub mod record;

pub use dns::{HickorySpfDns, LookupError, SpfDns, SpfLookup, QUERY_TIMEOUT};
pub use eval::{check_host, SpfRequest, SpfVerdict};
