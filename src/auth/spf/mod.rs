//! SPF (RFC 7208) of our own: the record syntax RFC 7208 requires ([`record`]), the DNS it
//! asks with a bound per query ([`dns`]), and check_host() with its limits ([`eval`]).
//!
//! Why not mail-auth's SPF (issue 17 item 1): run end to end against the RFC 7208 test suite
//! (`rfc7208-tests.yml` of pyspf 2.0.14, tests/spf_suite.rs) mail-auth 0.13.3 passed 123 of
//! the 165 tests that can run: it evaluates records RFC 7208 forbids, gives `temperror` for
//! names that cannot be DNS names, matches IPv4 clients against `ip6:`, takes the first of
//! two records and has no void-lookup limit. mail-auth stays for DKIM, DMARC and ARC; DMARC
//! is fed the result computed here.

pub mod dns;
pub mod eval;
pub mod record;

pub use dns::{HickorySpfDns, LookupError, SpfDns, SpfLookup, QUERY_TIMEOUT};
pub use eval::{check_host, SpfRequest, SpfVerdict};
