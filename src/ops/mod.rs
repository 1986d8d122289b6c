//! Operating the running relay: what happens between start and stop besides mail. The tvungen TLS
//! domain list's life ([`domain_list`]: reloads, the file watcher, gauges, the age warning),
//! SIGHUP's configuration reload ([`reload`]), the audit log's retention ([`retention`]), the
//! DNSSEC self-check ([`dnssec`], D5), the queue's compaction ([`compaction`]) and the service
//! manager's readiness protocol ([`service`]);
//! the log's field format ([`logfmt`]); the background check of the listed partners
//! ([`partners`]), fetching the list from its URL ([`list_fetch`]) and what `tlsgate domains
//! status` shows of both ([`domains_status`]). `server` starts these; the admin API and SIGHUP
//! call into them.

pub mod compaction;
pub mod dnssec;
pub mod domain_list;
pub mod domains_status;
pub mod list_fetch;
pub mod logfmt;
pub mod partners;
pub mod reload;
pub mod retention;
pub mod service;
pub mod watchdog;
