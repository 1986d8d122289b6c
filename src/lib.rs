//! tlsgate: an SMTP relay / gateway that enforces the Norwegian *tvungen TLS* scheme.
//!
//! The crate is wired as design.md draws it:
//! `inbound` (listener → session) → `queue` (durable store) and, later, the scheduler and
//! `outbound` delivery. `smtp` is the pure protocol code shared by both directions, `config`
//! turns TOML into a validated [`config::Config`], `tls` builds rustls configurations and loads
//! key material, `policy` holds the TLS levels, `startup` opens every file the configuration names (for `serve`
//! and `check-config` alike), and `server` starts and stops the whole.

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
pub mod ops;
pub mod policy;
pub mod queue;
pub mod server;
pub mod smtp;
pub mod startup;
pub mod tls;
