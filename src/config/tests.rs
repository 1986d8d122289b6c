use super::*;

const MINIMAL: &str = r#"
[server]
data_dir = "/var/lib/tlsgate"
[[listener]]
bind = "127.0.0.1:2525"
role = "inbound"
[inbound]
local_domains = ["Example.NO."]
"#;

fn invalid(text: &str) -> (String, String) {
    match Config::from_toml(text, "/etc/tlsgate/t.toml") {
        Err(ConfigError::Invalid { file, key, reason }) => {
            assert_eq!(file, "/etc/tlsgate/t.toml");
            (key, reason)
        }
        other => panic!("expected an Invalid error, got {other:?}"),
    }
}

#[test]
fn minimal_config_gets_defaults() {
    let c = Config::from_toml(MINIMAL, "t.toml").unwrap();
    assert_eq!(c.server.max_message_size, 50 * 1024 * 1024);
    assert_eq!(c.inbound.local_domains[0].as_str(), "example.no");
    assert_eq!(c.limits.command_timeout, Duration::from_secs(300));
    // Postfix's smtpd_hard_error_limit, smtpd_soft_error_limit, smtpd_error_sleep_time.
    assert_eq!(
        (
            c.limits.max_errors,
            c.limits.soft_errors,
            c.limits.error_sleep_time
        ),
        (20, 10, Duration::from_secs(1))
    );
    // Postfix's hopcount_limit and smtpd_recipient_overshoot_limit.
    assert_eq!(
        (c.limits.hop_count_limit, c.limits.recipient_overshoot_limit),
        (50, 1000)
    );
    assert!(!c.inbound.allow_routed_local_parts);
    assert_eq!(c.outbound.smtp_port, 25);
    assert_eq!(c.domain_list.max_age_days, 92);
    assert!(c.tls.cert_and_key.is_none());
}

#[test]
fn embedded_default_and_example_parse() {
    let dev = Config::dev_default().unwrap();
    assert_eq!(dev.listeners.len(), 2);
    assert_eq!(dev.listeners[0].bind.port(), 2525);
    assert_eq!(dev.listeners[1].bind.port(), 2587);
    assert_eq!(dev.server.data_dir, PathBuf::from("./data"));
    // The example documents every key; parsing it proves no key there is unknown.
    let example = include_str!("../../config/tlsgate.example.toml");
    let raw: raw::RawConfig = toml::from_str(example).unwrap();
    assert!(raw.server.is_some() && raw.limits.is_some() && raw.log.is_some());
}

#[test]
fn unknown_key_is_refused_with_its_name() {
    let text = MINIMAL.replace("[server]", "[server]\nhostnmae = \"x\"");
    match Config::from_toml(&text, "t.toml") {
        Err(ConfigError::Syntax { file, message }) => {
            assert_eq!(file, "t.toml");
            assert!(message.contains("hostnmae"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn bad_values_name_key_and_reason() {
    let (key, reason) = invalid(&MINIMAL.replace("127.0.0.1:2525", "localhost"));
    assert_eq!(key, "listener[0].bind");
    assert!(reason.contains("address"));

    let (key, _) = invalid(&format!(
        "{MINIMAL}\n[outbound]\nrelay_networks = [\"10.0.0.0/33\"]"
    ));
    assert_eq!(key, "outbound.relay_networks");

    // S6: the whole internet, or large parts of it, in any spelling (review finding: only
    // `/0` was refused, `0.0.0.0/1` + `128.0.0.0/1` passed).
    for net in [
        "0.0.0.0/0",
        "0.0.0.0/1",
        "128.0.0.0/1",
        "64.0.0.0/3",
        "::/0",
        "2000::/3",
        "::ffff:0:0/96",
        "::ffff:0.0.0.0/100",
        "::/64",
    ] {
        let (key, reason) = invalid(&format!(
            "{MINIMAL}\n[outbound]\nrelay_networks = [\"{net}\"]"
        ));
        assert_eq!(key, "outbound.relay_networks", "{net}");
        assert!(reason.contains("open relay"), "{net}: {reason}");
    }
    // Private and ordinary networks are fine.
    for net in [
        "10.0.0.0/8",
        "192.168.0.0/16",
        "fc00::/7",
        "2001:db8::/32",
        "::ffff:10.0.0.0/104",
        "::1",
    ] {
        let text = format!("{MINIMAL}\n[outbound]\nrelay_networks = [\"{net}\"]");
        assert!(Config::from_toml(&text, "t.toml").is_ok(), "{net}");
    }

    let (key, _) = invalid(&format!("{MINIMAL}\n[limits]\ncommand_timeout = \"soon\""));
    assert_eq!(key, "limits.command_timeout");

    let (key, _) = invalid(&format!("{MINIMAL}\n[limits]\nmax_errors = 0"));
    assert_eq!(key, "limits.max_errors");
    // RFC 5321 6.3: a limit of 0 would refuse every message as a loop.
    let (key, _) = invalid(&format!("{MINIMAL}\n[limits]\nhop_count_limit = 0"));
    assert_eq!(key, "limits.hop_count_limit");
    let (key, _) = invalid(&format!(
        "{MINIMAL}\n[limits]\nrecipient_overshoot_limit = 0"
    ));
    assert_eq!(key, "limits.recipient_overshoot_limit");
    let (key, _) = invalid(&format!("{MINIMAL}\n[limits]\nerror_sleep_time = \"2m\""));
    assert_eq!(key, "limits.error_sleep_time");

    let (key, _) = invalid(&MINIMAL.replace("Example.NO.", "bad..domain"));
    assert_eq!(key, "inbound.local_domains");

    let (key, _) = invalid(&format!("{MINIMAL}\n[tls]\ncert = \"/x.pem\""));
    assert_eq!(key, "tls.key");

    let (key, _) = invalid(&format!(
        "{MINIMAL}\n[[policy]]\ndomain = \".p.no\"\ntls = \"verify\"\n[[policy]]\ndomain = \".P.no\"\ntls = \"secure\""
    ));
    assert_eq!(key, "policy[1].domain");

    let (key, reason) = invalid(&format!(
        "{MINIMAL}\n[[outbound.dkim]]\ndomain = \"example.no\"\nselector = \"s1\"\nkey = \"/k.pem\"\nheaders = [\"Subject\"]"
    ));
    assert_eq!(key, "outbound.dkim[0].headers");
    assert!(reason.contains("From"), "{reason}");
}

#[test]
fn inbound_listener_needs_local_domains() {
    let text = MINIMAL.replace("local_domains = [\"Example.NO.\"]", "");
    let (key, _) = invalid(&text);
    assert_eq!(key, "inbound.local_domains");
}

#[test]
fn relative_paths_are_relative_to_the_file() {
    let text = MINIMAL.replace("/var/lib/tlsgate", "data");
    let c = Config::from_toml(&text, "/etc/tlsgate/t.toml").unwrap();
    assert_eq!(c.server.data_dir, PathBuf::from("/etc/tlsgate/data"));
}

#[test]
fn relay_networks_match_mapped_ipv4() {
    let c = Config::from_toml(
        &format!("{MINIMAL}\n[outbound]\nrelay_networks = [\"10.0.0.0/8\", \"192.0.2.5\"]"),
        "t.toml",
    )
    .unwrap();
    assert!(c.is_relay_client("10.2.3.4".parse().unwrap()));
    assert!(c.is_relay_client("::ffff:10.2.3.4".parse().unwrap()));
    assert!(c.is_relay_client("192.0.2.5".parse().unwrap()));
    assert!(!c.is_relay_client("192.0.2.6".parse().unwrap()));
}

#[test]
fn delivery_defaults_follow_design_md_and_bad_values_are_refused() {
    let c = Config::from_toml(MINIMAL, "t.toml").unwrap();
    let minutes: Vec<u64> = c
        .delivery
        .retry_schedule
        .iter()
        .map(|d| d.as_secs() / 60)
        .collect();
    assert_eq!(minutes, vec![1, 5, 15, 30, 60, 120, 240]);
    assert_eq!(c.delivery.expiry, Duration::from_secs(5 * 86_400));
    assert_eq!(c.delivery.delay_warning, Duration::from_secs(4 * 3600));
    assert_eq!(c.delivery.dsn_language, DsnLanguage::English);

    let (key, reason) = invalid(&format!(
        "{MINIMAL}[delivery]\nexpiry = \"1h\"\ndelay_warning = \"2h\"\n"
    ));
    assert_eq!(key, "delivery.delay_warning");
    assert!(reason.contains("shorter than delivery.expiry"), "{reason}");
    let (key, _) = invalid(&format!("{MINIMAL}[delivery]\nretry_schedule = []\n"));
    assert_eq!(key, "delivery.retry_schedule");
    let (key, _) = invalid(&format!(
        "{MINIMAL}[delivery]\nretry_schedule = [\"soon\"]\n"
    ));
    assert_eq!(key, "delivery.retry_schedule");
    let (key, _) = invalid(&format!("{MINIMAL}[delivery]\ndsn_language = \"de\"\n"));
    assert_eq!(key, "delivery.dsn_language");
    let (key, _) = invalid(&format!("{MINIMAL}[delivery]\nmax_per_destination = 0\n"));
    assert_eq!(key, "delivery.max_per_destination");
}

/// SIGHUP applies `[tls]` at once and names every other changed section (they wait for a
/// restart); values are compared, so a reformatted file or another spelling of the same
/// value (`Example.NO.`) changes nothing.
#[test]
fn changed_sections_compare_values_not_text() {
    let old = Config::from_toml(MINIMAL, "t.toml").unwrap();
    let same = Config::from_toml(
        "[inbound]\nlocal_domains = [\"example.no\"]\n\n[[listener]]\nrole = \"inbound\"\n\
         bind = \"127.0.0.1:2525\"\n[server]\ndata_dir = \"/var/lib/tlsgate\"\n",
        "t.toml",
    )
    .unwrap();
    assert_eq!(changed_sections(&old, &same), Vec::<&str>::new());
    let tls_only = Config::from_toml(
        &format!("{MINIMAL}[tls]\ncert = \"/etc/c.pem\"\nkey = \"/etc/k.pem\"\n"),
        "t.toml",
    )
    .unwrap();
    assert_eq!(changed_sections(&old, &tls_only), Vec::<&str>::new());
    let more = Config::from_toml(
        &format!("{MINIMAL}[limits]\nmax_errors = 30\n[delivery]\nexpiry = \"2d\"\n"),
        "t.toml",
    )
    .unwrap();
    assert_eq!(changed_sections(&old, &more), vec!["limits", "delivery"]);
}

/// `[tls_reporting]` (RFC 8460): off unless present and enabled; required keys named; the
/// submitter defaults to server.hostname.
#[test]
fn tls_reporting_section() {
    assert_eq!(
        Config::from_toml(MINIMAL, "t.toml").unwrap().tls_reporting,
        None
    );
    let full = format!(
        "{MINIMAL}[tls_reporting]\norganization_name = \"Bank\"\ncontact_info = \
         \"mailto:t@bank.no\"\nfrom = \"noreply@bank.no\"\n"
    );
    let c = Config::from_toml(&full, "t.toml").unwrap();
    let t = c.tls_reporting.clone().unwrap();
    assert_eq!(t.submitter, c.server.hostname);
    assert_eq!(t.from, "noreply@bank.no");
    let off = full.replace("[tls_reporting]", "[tls_reporting]\nenabled = false");
    assert_eq!(
        Config::from_toml(&off, "t.toml").unwrap().tls_reporting,
        None
    );
    let (key, _) = invalid(&full.replace("organization_name = \"Bank\"\n", ""));
    assert_eq!(key, "tls_reporting.organization_name");
    let (key, _) = invalid(&full.replace("noreply@bank.no", "not an address"));
    assert_eq!(key, "tls_reporting.from");
    let (key, _) =
        invalid(&full.replace("[tls_reporting]", "[tls_reporting]\nsubmitter = \"a b\""));
    assert_eq!(key, "tls_reporting.submitter");
}

/// `[dmarc_reporting]` (RFC 7489 7.2; issue 17 item 4): off unless `enabled = true`; the
/// required keys are named when missing or bad.
#[test]
fn dmarc_reporting_section() {
    let full = format!(
        "{MINIMAL}[dmarc_reporting]\nenabled = true\norganization_name = \"Bank\"\n\
         contact_info = \"https://bank.no/dmarc\"\nfrom = \"dmarc-noreply@Bank.no\"\n"
    );
    let d = Config::from_toml(&full, "t.toml")
        .unwrap()
        .dmarc_reporting
        .unwrap();
    assert_eq!(d.organization_name, "Bank");
    assert_eq!(d.reporting_domain(), "bank.no");
    for off in ["enabled = false", "# enabled by default? no"] {
        let text = full.replace("enabled = true", off);
        assert_eq!(
            Config::from_toml(&text, "t.toml").unwrap().dmarc_reporting,
            None
        );
    }
    let (key, _) = invalid(&full.replace("contact_info = \"https://bank.no/dmarc\"\n", ""));
    assert_eq!(key, "dmarc_reporting.contact_info");
    let (key, _) = invalid(&full.replace("dmarc-noreply@Bank.no", "nobody"));
    assert_eq!(key, "dmarc_reporting.from");
}

/// Issue 14 item 1: validation goes on after an error, so `check-config` can list them all,
/// in file order; a value that stood in for a bad one causes no second, false error.
#[test]
fn every_error_is_reported_not_only_the_first() {
    let text = format!(
        "{MINIMAL}\n[limits]\nmax_errors = 0\n[delivery]\nexpiry = \"soon\"\n\
         [log]\nformat = \"xml\"\n"
    );
    match Config::from_toml(&text, "t.toml") {
        Err(ConfigError::Several { file, errors }) => {
            assert_eq!(file, "t.toml");
            let keys: Vec<String> = errors
                .iter()
                .map(|e| match e {
                    ConfigError::Invalid { key, .. } => key.clone(),
                    other => panic!("{other:?}"),
                })
                .collect();
            // No "delay_warning must be shorter than expiry" from expiry's stand-in.
            assert_eq!(keys, ["limits.max_errors", "delivery.expiry", "log.format"]);
        }
        other => panic!("expected three errors, got {other:?}"),
    }
    // Errors in listeners and sections added later go on the same list (found by a review:
    // a client_cert without client_ca hid every other error; TLS-RPT fields came one per run).
    let text = format!(
        "{}[[listener]]\nbind = \"127.0.0.1:99999\"\nrole = \"outbound\"\n[delivery]\n\
         retry_schedule = [\"1m\", \"5 parsecs\"]\n[tls_reporting]\nenabled = true\n",
        MINIMAL.replace(
            "role = \"inbound\"\n",
            "role = \"inbound\"\nclient_cert = \"required\"\n"
        )
    );
    match Config::from_toml(&text, "t.toml") {
        Err(ConfigError::Several { errors, .. }) => {
            let keys: Vec<String> = errors
                .iter()
                .map(|e| match e {
                    ConfigError::Invalid { key, .. } => key.clone(),
                    other => panic!("{other:?}"),
                })
                .collect();
            for key in [
                "listener[0].client_cert",
                "listener[1].bind",
                "delivery.retry_schedule",
                "tls_reporting.organization_name",
                "tls_reporting.contact_info",
                "tls_reporting.from",
            ] {
                assert!(keys.iter().any(|k| k.starts_with(key)), "{key}: {keys:?}");
            }
        }
        other => panic!("expected several errors, got {other:?}"),
    }
    // A listener whose address does not parse is one error, not also "no [[listener]]".
    let (key, _) = invalid(&MINIMAL.replace("127.0.0.1:2525", "nowhere"));
    assert_eq!(key, "listener[0].bind");
}

/// S3: `[queue] encryption_key` names the key file (relative to the config file's
/// directory); an empty value is refused with its key; a changed key waits for a restart.
#[test]
fn queue_encryption_key() {
    let old = Config::from_toml(MINIMAL, "/etc/tlsgate/t.toml").unwrap();
    assert_eq!(old.queue.encryption_key, None);
    let keyed = Config::from_toml(
        &format!("{MINIMAL}[queue]\nencryption_key = \"queue.key\"\n"),
        "/etc/tlsgate/t.toml",
    )
    .unwrap();
    assert_eq!(
        keyed.queue.encryption_key,
        Some(PathBuf::from("/etc/tlsgate/queue.key"))
    );
    assert_eq!(changed_sections(&old, &keyed), vec!["queue"]);
    match Config::from_toml(
        &format!("{MINIMAL}[queue]\nencryption_key = \"\"\n"),
        "t.toml",
    ) {
        Err(ConfigError::Invalid { key, .. }) => assert_eq!(key, "queue.encryption_key"),
        other => panic!("{other:?}"),
    }
}

/// Issue 15 items 3 and 5: partner monitoring is off and no URL is fetched unless asked for;
/// a URL is fetched hourly by default.
#[test]
fn domain_list_monitoring_and_fetching_are_off_by_default() {
    let c = Config::from_toml(MINIMAL, "t.toml").unwrap();
    assert_eq!(c.domain_list.check_schedule, None);
    assert_eq!(c.domain_list.url, None);
    assert_eq!(c.domain_list.fetch_interval, Duration::from_secs(3600));
    let text = format!(
        "{MINIMAL}[domain_list]\npath = \"list.csv\"\ncheck_schedule = \"6h\"\n\
         url = \"https://lists.example.no/tvungen-tls.csv\"\n"
    );
    let c = Config::from_toml(&text, "/etc/tlsgate/t.toml").unwrap();
    assert_eq!(
        c.domain_list.check_schedule,
        Some(Duration::from_secs(6 * 3600))
    );
    assert_eq!(
        c.domain_list.url.as_deref(),
        Some("https://lists.example.no/tvungen-tls.csv")
    );
    let empty = format!("{MINIMAL}[domain_list]\ncheck_schedule = \"\"\n");
    let c = Config::from_toml(&empty, "t.toml").unwrap();
    assert_eq!(c.domain_list.check_schedule, None, "\"\" is off");
}

/// T10, issue 15 item 5: the list comes over HTTPS or not at all, from the list's own address,
/// into a file; a bad schedule is named by its key.
#[test]
fn domain_list_url_and_schedule_are_checked() {
    let with = |keys: &str| format!("{MINIMAL}[domain_list]\n{keys}\n");
    let (key, reason) = invalid(&with(
        "path = \"l.csv\"\nurl = \"http://lists.example.no/l.csv\"",
    ));
    assert_eq!(key, "domain_list.url");
    assert!(reason.contains("only https"), "{reason}");
    let (key, reason) = invalid(&with(
        "path = \"l.csv\"\nurl = \"https://lists.example.no/\"",
    ));
    assert_eq!(key, "domain_list.url");
    assert!(reason.contains("no path"), "{reason}");
    let (key, reason) = invalid(&with("url = \"https://lists.example.no/l.csv\""));
    assert_eq!(key, "domain_list.url");
    assert!(reason.contains("domain_list.path"), "{reason}");
    let (key, _) = invalid(&with("check_schedule = \"often\""));
    assert_eq!(key, "domain_list.check_schedule");
    let (key, _) = invalid(&with("fetch_interval = \"0s\""));
    assert_eq!(key, "domain_list.fetch_interval");
    // Review findings: a schedule without a pause would hammer the partners; a password in
    // the URL would be shown in logs and status (and is not echoed in the error either).
    let (key, reason) = invalid(&with("check_schedule = \"1ms\""));
    assert_eq!(key, "domain_list.check_schedule");
    assert!(reason.contains("at least 1s"), "{reason}");
    let (key, reason) = invalid(&with(
        "path = \"l.csv\"\nurl = \"https://user:s3cret@lists.example.no/l.csv\"",
    ));
    assert_eq!(key, "domain_list.url");
    assert!(!reason.contains("s3cret"), "{reason}");
    let (key, reason) = invalid(&with(
        "path = \"l.csv\"\nurl = \"http://lists.example.no/l.csv\"",
    ));
    assert_eq!(key, "domain_list.url");
    assert!(!reason.contains("  "), "no run of spaces: {reason}");
}

#[test]
fn a_stall_timeout_below_two_seconds_is_refused() {
    let (key, reason) = invalid(&format!("{MINIMAL}[queue]\nstall_timeout = \"1ms\"\n"));
    assert_eq!(key, "queue.stall_timeout");
    assert!(reason.contains("at least 2s"), "{reason}");
}
