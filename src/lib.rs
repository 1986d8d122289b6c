//! tlsgate: an SMTP relay / gateway that enforces the Norwegian *tvungen TLS* scheme.
//!
//! The crate is wired as design.md draws it, in four layers; a module uses only its own layer
//! and the ones below (`tests/layering.rs` holds the table and checks it):
//! * protocol and policy: `smtp` (pure protocol), `policy` (TLS levels, the domain list),
//!   `domain`, `datetime`, `dns`;
//! * infrastructure: `config` (TOML → validated [`config::Config`]), `tls` (rustls
//!   configurations, key material), `queue` (durable store, retry schedule), `audit`,
//!   `metrics`;
//! * mail: `inbound` (listener → session), `delivery`, `auth`, `dsn`, `compliance`, `mta_sts`
//!   (MTA-STS policies: fetch, cache, refresh), `reporting` (TLS reports to partners, RFC 8460);
//! * operations: `startup` (opens every file the configuration names, for `serve` and
//!   `check-config` alike), `admin`, `ops` (reloads, watchers), and `server`, which starts and
//!   stops the whole and is used by `main.rs` only.
//!
//! `ARCHITECTURE.md` draws a message's way through these modules and names the one place where
//! each decision is made.

pub mod admin;
pub mod audit;
pub mod auth;
pub mod compliance;
pub mod config;
pub mod datetime;
pub mod delivery;
pub mod dns;
pub mod domain;
pub mod dsn;
pub mod inbound;
pub mod metrics;
pub mod mta_sts;
pub mod ops;
pub mod policy;
pub mod queue;
pub mod reporting;
pub mod server;
pub mod smtp;
pub mod startup;
pub mod text;
pub mod tls;
pub mod tls_report;
