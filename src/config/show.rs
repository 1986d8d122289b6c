//! `tlsgate show-config [--defaults]`: the effective configuration as TOML (issue 14 item 1),
//! like Postfix's `postconf` (every setting, defaults filled in) and `postconf -n` (only what
//! differs from the defaults).
//!
//! What is printed is the validated [`Config`], not the file's text: relative paths resolved,
//! defaults filled in, durations in the form the file takes (`"5m"`). The configuration holds
//! no secret (S4): the admin token stays in `admin.token_file`, whose *path* is shown, and keys
//! are paths too; so the output can be pasted into a ticket.

use super::{Config, DsnLanguage, LogFormat, PolicyAction};
use crate::policy::domain_list::AgeFrom;
use crate::policy::PolicyTarget;
use std::path::Path;
use std::time::Duration;
use toml::{Table, Value};

/// The effective configuration as TOML text. `all`: every setting with its default filled in
/// (`postconf`); otherwise only the settings whose value differs from the default, plus the
/// required ones (`server.data_dir`, the listeners) (`postconf -n`).
pub fn show(config: &Config, all: bool) -> String {
    let effective = table(config);
    let mut out = format!("# effective configuration of {}\n", config.source);
    let shown = if all {
        out.push_str("# every setting, defaults filled in\n");
        effective
    } else {
        out.push_str(
            "# settings that differ from the defaults (show-config --defaults prints all)\n",
        );
        match defaults_for(config) {
            Some(defaults) => changed(&effective, &table(&defaults)),
            None => effective,
        }
    };
    // A `Table` of strings, numbers, booleans, arrays and tables always serialises.
    out.push_str(&toml::to_string(&shown).unwrap_or_default());
    out
}

/// The configuration that only sets what is required, with `config`'s data_dir, listeners,
/// local domains and nameservers (the defaults of other keys depend on them: the audit
/// directory lives in data_dir, the DNSSEC mode follows the nameservers).
fn defaults_for(config: &Config) -> Option<Config> {
    let mut minimal = Table::new();
    let mut server = Table::new();
    server.insert("data_dir".into(), path(&config.server.data_dir));
    minimal.insert("server".into(), Value::Table(server));
    let listeners = config
        .listeners
        .iter()
        .map(|l| {
            let mut t = Table::new();
            t.insert("bind".into(), Value::String(l.bind.to_string()));
            t.insert("role".into(), Value::String(l.role.to_string()));
            Value::Table(t)
        })
        .collect();
    minimal.insert("listener".into(), Value::Array(listeners));
    let mut inbound = Table::new();
    inbound.insert(
        "local_domains".into(),
        strings(config.inbound.local_domains.iter().map(|d| d.to_string())),
    );
    minimal.insert("inbound".into(), Value::Table(inbound));
    let mut dns = Table::new();
    dns.insert(
        "nameservers".into(),
        strings(config.dns.nameservers.iter().map(|a| a.to_string())),
    );
    minimal.insert("dns".into(), Value::Table(dns));
    let text = toml::to_string(&minimal).ok()?;
    Config::from_toml(&text, &config.source).ok()
}

/// The keys of `effective` whose values differ from `defaults`, always keeping the required
/// ones; empty sections left out.
fn changed(effective: &Table, defaults: &Table) -> Table {
    let mut out = Table::new();
    for (section, value) in effective {
        let always = matches!(section.as_str(), "listener");
        match (value, defaults.get(section)) {
            (Value::Table(t), Some(Value::Table(d))) => {
                let mut keep = changed(t, d);
                if section == "server" {
                    if let Some(dir) = t.get("data_dir") {
                        keep.insert("data_dir".into(), dir.clone());
                    }
                }
                if section == "inbound" {
                    if let Some(domains) = t.get("local_domains").filter(|v| !is_empty(v)) {
                        keep.insert("local_domains".into(), domains.clone());
                    }
                }
                if section == "dns" {
                    if let Some(ns) = t.get("nameservers").filter(|v| !is_empty(v)) {
                        keep.insert("nameservers".into(), ns.clone());
                    }
                }
                if !keep.is_empty() {
                    out.insert(section.clone(), Value::Table(keep));
                }
            }
            (v, d) if always || d != Some(v) => {
                out.insert(section.clone(), v.clone());
            }
            _ => {}
        }
    }
    out
}

fn is_empty(v: &Value) -> bool {
    matches!(v, Value::Array(a) if a.is_empty())
}

fn duration(d: Duration) -> Value {
    Value::String(humantime::format_duration(d).to_string())
}

fn path(p: &Path) -> Value {
    Value::String(p.display().to_string())
}

fn strings(items: impl Iterator<Item = String>) -> Value {
    Value::Array(items.map(Value::String).collect())
}

fn int(n: impl TryInto<i64>) -> Value {
    Value::Integer(n.try_into().unwrap_or(i64::MAX))
}

fn action(a: PolicyAction) -> Value {
    Value::String(
        match a {
            PolicyAction::Accept => "accept",
            PolicyAction::Tag => "tag",
            PolicyAction::Reject => "reject",
        }
        .into(),
    )
}

fn section(entries: Vec<(&str, Value)>) -> Value {
    Value::Table(
        entries
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    )
}

/// Every setting of `config` under its key in the file.
fn table(config: &Config) -> Table {
    // Destructured, so that a new section cannot be forgotten here.
    let Config {
        source: _,
        server,
        limits,
        tls,
        listeners,
        inbound,
        outbound,
        delivery,
        dns,
        domain_list,
        policies,
        metrics,
        admin,
        audit,
        log,
        mta_sts,
        tls_reporting,
        dmarc_reporting,
        queue,
    } = config;
    let mut t = Table::new();

    let mut s = vec![
        ("hostname", Value::String(server.hostname.clone())),
        ("data_dir", path(&server.data_dir)),
        ("max_message_size", int(server.max_message_size)),
        ("min_free_space", int(server.min_free_space)),
    ];
    if let Some(contact) = &server.admin_contact {
        s.push(("admin_contact", Value::String(contact.clone())));
    }
    t.insert("server".into(), section(s));

    t.insert(
        "limits".into(),
        section(vec![
            ("max_connections", int(limits.max_connections)),
            ("max_connections_per_ip", int(limits.max_connections_per_ip)),
            ("max_recipients", int(limits.max_recipients)),
            (
                "recipient_overshoot_limit",
                int(limits.recipient_overshoot_limit),
            ),
            ("hop_count_limit", int(limits.hop_count_limit)),
            ("max_line_length", int(limits.max_line_length)),
            ("max_errors", int(limits.max_errors)),
            ("soft_errors", int(limits.soft_errors)),
            ("error_sleep_time", duration(limits.error_sleep_time)),
            ("command_timeout", duration(limits.command_timeout)),
            ("data_timeout", duration(limits.data_timeout)),
            ("data_total_timeout", duration(limits.data_total_timeout)),
            (
                "tls_handshake_timeout",
                duration(limits.tls_handshake_timeout),
            ),
        ]),
    );

    if let Some((cert, key)) = &tls.cert_and_key {
        t.insert(
            "tls".into(),
            section(vec![("cert", path(cert)), ("key", path(key))]),
        );
    }

    let listeners = listeners
        .iter()
        .map(|l| {
            let mut entries = vec![
                ("bind", Value::String(l.bind.to_string())),
                ("role", Value::String(l.role.to_string())),
                ("require_tls", Value::Boolean(l.require_tls)),
            ];
            if let Some(auth) = &l.client_auth {
                entries.push(("client_ca", path(&auth.ca)));
                entries.push(("client_cert", Value::String(auth.mode.to_string())));
            }
            section(entries)
        })
        .collect();
    t.insert("listener".into(), Value::Array(listeners));

    let mut i = vec![
        (
            "local_domains",
            strings(inbound.local_domains.iter().map(|d| d.to_string())),
        ),
        (
            "refuse_plaintext_from_listed",
            Value::Boolean(inbound.refuse_plaintext_from_listed),
        ),
        (
            "allow_routed_local_parts",
            Value::Boolean(inbound.allow_routed_local_parts),
        ),
        (
            "next_hop_tls",
            Value::String(inbound.next_hop_tls.to_string()),
        ),
    ];
    if let Some(hop) = &inbound.next_hop {
        i.push(("next_hop", Value::String(hop.clone())));
    }
    let auth = match &inbound.auth {
        None => section(vec![("enabled", Value::Boolean(false))]),
        Some(a) => section(vec![
            ("enabled", Value::Boolean(true)),
            ("timeout", duration(a.timeout)),
            ("dmarc_reject", action(a.policy.dmarc_reject)),
            ("dmarc_quarantine", action(a.policy.dmarc_quarantine)),
            (
                "spf_fail_without_dmarc",
                action(a.policy.spf_fail_without_dmarc),
            ),
            ("tag_header", Value::String(a.policy.tag_header.clone())),
        ]),
    };
    i.push(("auth", auth));
    t.insert("inbound".into(), section(i));

    let dkim = outbound
        .dkim
        .iter()
        .map(|k| {
            section(vec![
                ("domain", Value::String(k.domain.to_string())),
                ("selector", Value::String(k.selector.clone())),
                ("key", path(&k.key)),
                ("headers", strings(k.headers.iter().cloned())),
            ])
        })
        .collect();
    t.insert(
        "outbound".into(),
        section(vec![
            (
                "relay_networks",
                strings(outbound.relay_networks.iter().map(|n| n.to_string())),
            ),
            ("smtp_port", int(outbound.smtp_port)),
            (
                "extra_trust_roots",
                Value::Array(outbound.extra_trust_roots.iter().map(|p| path(p)).collect()),
            ),
            (
                "tls_failure_warning_after",
                duration(outbound.tls_failure_warning_after),
            ),
            ("dkim", Value::Array(dkim)),
        ]),
    );

    t.insert(
        "delivery".into(),
        section(vec![
            (
                "retry_schedule",
                Value::Array(
                    delivery
                        .retry_schedule
                        .iter()
                        .map(|d| duration(*d))
                        .collect(),
                ),
            ),
            ("expiry", duration(delivery.expiry)),
            ("delay_warning", duration(delivery.delay_warning)),
            ("max_concurrent", int(delivery.max_concurrent)),
            ("max_per_destination", int(delivery.max_per_destination)),
            ("connect_timeout", duration(delivery.connect_timeout)),
            ("command_timeout", duration(delivery.command_timeout)),
            ("data_timeout", duration(delivery.data_timeout)),
            ("idle_timeout", duration(delivery.idle_timeout)),
            (
                "max_messages_per_connection",
                int(delivery.max_messages_per_connection),
            ),
            (
                "dsn_language",
                Value::String(
                    match delivery.dsn_language {
                        DsnLanguage::English => "en",
                        DsnLanguage::Norwegian => "no",
                    }
                    .into(),
                ),
            ),
        ]),
    );

    let mut d = vec![
        (
            "nameservers",
            strings(dns.nameservers.iter().map(|a| a.to_string())),
        ),
        ("dnssec", Value::String(dns.dnssec.to_string())),
    ];
    if let Some(anchor) = &dns.trust_anchor {
        d.push(("trust_anchor", path(anchor)));
    }
    t.insert("dns".into(), section(d));

    t.insert(
        "mta_sts".into(),
        section(vec![
            ("enabled", Value::Boolean(mta_sts.enabled)),
            ("https_port", int(mta_sts.https_port)),
        ]),
    );
    let reporting = match tls_reporting {
        None => section(vec![("enabled", Value::Boolean(false))]),
        Some(r) => section(vec![
            ("enabled", Value::Boolean(true)),
            (
                "organization_name",
                Value::String(r.organization_name.clone()),
            ),
            ("contact_info", Value::String(r.contact_info.clone())),
            ("submitter", Value::String(r.submitter.clone())),
            ("from", Value::String(r.from.clone())),
        ]),
    };
    t.insert("tls_reporting".into(), reporting);
    let dmarc = match dmarc_reporting {
        None => section(vec![("enabled", Value::Boolean(false))]),
        Some(r) => section(vec![
            ("enabled", Value::Boolean(true)),
            (
                "organization_name",
                Value::String(r.organization_name.clone()),
            ),
            ("contact_info", Value::String(r.contact_info.clone())),
            ("from", Value::String(r.from.clone())),
        ]),
    };
    t.insert("dmarc_reporting".into(), dmarc);

    // The key file's path only, never its content (S4).
    let mut q = vec![
        ("engine", Value::String(queue.engine.name().to_string())),
        ("stall_timeout", duration(queue.stall_timeout)),
    ];
    if let Some(key) = &queue.encryption_key {
        q.push(("encryption_key", path(key)));
    }
    t.insert("queue".into(), section(q));

    let mut l = vec![
        ("max_age_days", int(domain_list.max_age_days)),
        (
            "age_from",
            Value::String(
                match domain_list.age_from {
                    AgeFrom::File => "file",
                    AgeFrom::NewestEntry => "newest_entry",
                }
                .into(),
            ),
        ),
        ("check_interval", duration(domain_list.check_interval)),
        (
            "check_schedule",
            Value::String(
                domain_list
                    .check_schedule
                    .map(|d| humantime::format_duration(d).to_string())
                    .unwrap_or_default(),
            ),
        ),
        ("fetch_interval", duration(domain_list.fetch_interval)),
    ];
    if let Some(p) = &domain_list.path {
        l.push(("path", path(p)));
    }
    if let Some(url) = &domain_list.url {
        l.push(("url", Value::String(url.clone())));
    }
    t.insert("domain_list".into(), section(l));

    let policies = policies
        .iter()
        .map(|p| {
            let domain = match &p.target {
                PolicyTarget::Exact(d) => d.to_string(),
                PolicyTarget::Suffix(d) => format!(".{d}"),
            };
            let mut entry = vec![
                ("domain", Value::String(domain)),
                ("tls", Value::String(p.tls.to_string())),
            ];
            if !p.match_names.is_empty() {
                entry.push(("match", strings(p.match_names.iter().cloned())));
            }
            section(entry)
        })
        .collect();
    t.insert("policy".into(), Value::Array(policies));

    if let Some(bind) = metrics {
        t.insert(
            "metrics".into(),
            section(vec![("bind", Value::String(bind.to_string()))]),
        );
    }

    let admin = match admin {
        None => section(vec![("enabled", Value::Boolean(false))]),
        Some(a) => {
            let mut entries = vec![
                ("enabled", Value::Boolean(true)),
                (
                    "socket",
                    a.socket
                        .as_deref()
                        .map_or(Value::String(String::new()), path),
                ),
                (
                    "socket_mode",
                    Value::String(format!("{:04o}", a.socket_mode)),
                ),
            ];
            if let Some(group) = &a.socket_group {
                entries.push(("socket_group", Value::String(group.clone())));
            }
            if let Some(bind) = a.bind {
                entries.push(("bind", Value::String(bind.to_string())));
            }
            // The path only: the token itself never leaves its file (S4).
            if let Some(token) = &a.token_file {
                entries.push(("token_file", path(token)));
            }
            section(entries)
        }
    };
    t.insert("admin".into(), admin);

    t.insert(
        "audit".into(),
        section(vec![
            ("dir", path(&audit.dir)),
            ("retention_days", int(audit.retention.as_secs() / 86_400)),
            ("max_file_bytes", int(audit.max_file_bytes)),
        ]),
    );

    t.insert(
        "log".into(),
        section(vec![
            (
                "format",
                Value::String(
                    match log.format {
                        LogFormat::Text => "text",
                        LogFormat::Json => "json",
                    }
                    .into(),
                ),
            ),
            ("level", Value::String(log.level.clone())),
        ]),
    );
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
[server]
data_dir = "/var/lib/tlsgate"
hostname = "mx.example.no"
[[listener]]
bind = "127.0.0.1:2525"
role = "inbound"
[inbound]
local_domains = ["example.no"]
[delivery]
expiry = "3d"
"#;

    /// Both forms parse back, and `--defaults` read back is the same configuration: every
    /// setting is printed under the key the file uses.
    #[test]
    fn printed_configuration_reads_back_as_the_same() {
        let config = Config::from_toml(FILE, "/etc/tlsgate/tlsgate.toml").unwrap();
        for all in [true, false] {
            let text = show(&config, all);
            let mut again = Config::from_toml(&text, "/etc/tlsgate/tlsgate.toml")
                .unwrap_or_else(|e| panic!("{e}\n{text}"));
            // Written out, the DNSSEC mode is explicit; its value is the same.
            again.dns.dnssec_explicit = config.dns.dnssec_explicit;
            assert_eq!(again, config, "{text}");
        }
    }

    /// `postconf -n`: only what differs from the defaults, plus what is required.
    #[test]
    fn without_defaults_only_changed_settings_are_printed() {
        let config = Config::from_toml(FILE, "/etc/tlsgate/tlsgate.toml").unwrap();
        let text = show(&config, false);
        assert!(text.contains("expiry = \"3days\""), "{text}");
        assert!(text.contains("hostname = \"mx.example.no\""), "{text}");
        assert!(text.contains("data_dir = \"/var/lib/tlsgate\""), "{text}");
        assert!(text.contains("[[listener]]"), "{text}");
        assert!(!text.contains("max_errors"), "{text}");
        assert!(!text.contains("[limits]"), "{text}");
        let all = show(&config, true);
        assert!(all.contains("max_errors = 20"), "{all}");
        assert!(all.contains("[limits]"), "{all}");
    }
}
