//! Operating the running relay: what happens between start and stop besides mail. The
//! tvungen TLS domain list's life ([`domain_list`]: reloads, the file watcher, gauges, the age
//! warning), SIGHUP's configuration reload ([`reload`]) and the audit log's retention
//! ([`retention`]). `server` starts these; the admin API and SIGHUP call into them.

pub mod domain_list;
pub mod reload;
pub mod retention;
