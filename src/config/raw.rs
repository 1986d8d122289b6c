//! The TOML file as serde sees it. Every struct refuses unknown keys; every field is optional
//! here so that defaults and errors with key names live in one place, `validate`.

use crate::config::{ClientCertMode, Role};
use crate::policy::TlsLevel;
use serde::Deserialize;
use std::path::PathBuf;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub server: Option<RawServer>,
    pub limits: Option<RawLimits>,
    pub tls: Option<RawTls>,
    #[serde(default)]
    pub listener: Vec<RawListener>,
    pub inbound: Option<RawInbound>,
    pub outbound: Option<RawOutbound>,
    pub delivery: Option<RawDelivery>,
    pub dns: Option<RawDns>,
    pub domain_list: Option<RawDomainList>,
    pub mta_sts: Option<RawMtaSts>,
    #[serde(default)]
    pub policy: Vec<RawPolicy>,
    pub metrics: Option<RawBind>,
    pub admin: Option<RawAdmin>,
    pub audit: Option<RawAudit>,
    pub queue: Option<RawQueue>,
    pub log: Option<RawLog>,
    pub tls_reporting: Option<super::tls_reporting::RawTlsReporting>,
    pub dmarc_reporting: Option<super::dmarc_reporting::RawDmarcReporting>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    pub hostname: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub max_message_size: Option<u64>,
    pub admin_contact: Option<String>,
    pub min_free_space: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    pub max_connections: Option<usize>,
    pub max_connections_per_ip: Option<usize>,
    pub max_recipients: Option<usize>,
    pub recipient_overshoot_limit: Option<usize>,
    pub hop_count_limit: Option<usize>,
    pub max_line_length: Option<usize>,
    pub max_errors: Option<u32>,
    pub soft_errors: Option<u32>,
    pub error_sleep_time: Option<String>,
    pub command_timeout: Option<String>,
    pub data_timeout: Option<String>,
    pub data_total_timeout: Option<String>,
    pub tls_handshake_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListener {
    pub bind: String,
    pub role: Role,
    pub require_tls: Option<bool>,
    pub client_ca: Option<PathBuf>,
    pub client_cert: Option<ClientCertMode>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawInbound {
    pub auth: Option<RawInboundAuth>,
    pub local_domains: Option<Vec<String>>,
    pub refuse_plaintext_from_listed: Option<bool>,
    pub allow_routed_local_parts: Option<bool>,
    pub next_hop: Option<String>,
    pub next_hop_tls: Option<TlsLevel>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOutbound {
    pub relay_networks: Option<Vec<String>>,
    pub smtp_port: Option<u16>,
    pub extra_trust_roots: Option<Vec<PathBuf>>,
    pub tls_failure_warning_after: Option<String>,
    pub dkim: Option<Vec<RawDkim>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawInboundAuth {
    pub enabled: Option<bool>,
    pub timeout: Option<String>,
    pub dmarc_reject: Option<super::PolicyAction>,
    pub dmarc_quarantine: Option<super::PolicyAction>,
    pub spf_fail_without_dmarc: Option<super::PolicyAction>,
    pub tag_header: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDkim {
    pub domain: String,
    pub selector: String,
    pub key: PathBuf,
    pub headers: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDelivery {
    pub retry_schedule: Option<Vec<String>>,
    pub expiry: Option<String>,
    pub delay_warning: Option<String>,
    pub max_concurrent: Option<usize>,
    pub max_per_destination: Option<usize>,
    pub connect_timeout: Option<String>,
    pub command_timeout: Option<String>,
    pub data_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub max_messages_per_connection: Option<u32>,
    pub dsn_language: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDns {
    pub nameservers: Option<Vec<String>>,
    pub dnssec: Option<String>,
    pub trust_anchor: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDomainList {
    pub path: Option<PathBuf>,
    pub max_age_days: Option<u32>,
    pub age_from: Option<String>,
    pub check_interval: Option<String>,
    pub check_schedule: Option<String>,
    pub url: Option<String>,
    pub fetch_interval: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMtaSts {
    pub enabled: Option<bool>,
    pub https_port: Option<u16>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPolicy {
    pub domain: String,
    pub tls: TlsLevel,
    pub r#match: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBind {
    pub bind: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawQueue {
    pub encryption_key: Option<PathBuf>,
    pub engine: Option<String>,
    pub stall_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAudit {
    pub dir: Option<PathBuf>,
    pub retention_days: Option<u32>,
    pub max_file_bytes: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub enabled: Option<bool>,
    pub socket: Option<PathBuf>,
    pub socket_mode: Option<String>,
    pub socket_group: Option<String>,
    pub bind: Option<String>,
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    pub format: Option<String>,
    pub level: Option<String>,
}
