//! Checks the deployment files in `deploy/`: the Grafana dashboard, the Prometheus alert rules,
//! the systemd unit and the Dockerfile.
//!
//! External tools are used when they are installed and skipped (with a note on stdout) when not:
//! `promtool` (Debian package `prometheus`, which `.ci/run` tries to install) checks the rules,
//! runs their unit tests and parses every dashboard query; `systemd-analyze verify` parses the
//! unit; `bash` runs the container's HEALTHCHECK against a local HTTP server. Without them the
//! checks below are structural, by line parsing (there is no YAML crate in the dependencies).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn deploy_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(relative)
}

fn read_deploy(relative: &str) -> String {
    let path = deploy_path(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The executable `name` on PATH, if there is one.
fn find_on_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

fn output_text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Brackets and quotes in a PromQL expression are balanced (a cheap check for when promtool is
/// not installed).
fn check_promql_balanced(expr: &str) -> Result<(), String> {
    let mut stack = Vec::new();
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for c in expr.chars() {
        if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '"' | '\'' | '`' => quote = Some(c),
            '(' | '{' | '[' => stack.push(c),
            ')' | '}' | ']' => {
                let open = stack.pop();
                let expected = match c {
                    ')' => '(',
                    '}' => '{',
                    _ => '[',
                };
                if open != Some(expected) {
                    return Err(format!("unbalanced {c:?} in {expr:?}"));
                }
            }
            _ => {}
        }
    }
    if quote.is_some() || !stack.is_empty() {
        return Err(format!("unclosed quote or bracket in {expr:?}"));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Grafana dashboard

/// Every panel, with the panels nested in collapsed rows.
fn all_panels(panels: &[serde_json::Value]) -> Vec<&serde_json::Value> {
    let mut out = Vec::new();
    for panel in panels {
        out.push(panel);
        if let Some(nested) = panel.get("panels").and_then(|p| p.as_array()) {
            out.extend(all_panels(nested));
        }
    }
    out
}

/// Dashboard queries with Grafana's variables replaced, so promtool can parse them.
fn dashboard_expr_for_promtool(expr: &str) -> String {
    expr.replace("$__rate_interval", "5m")
        .replace("$__interval", "1m")
        .replace("$__range", "1d")
        .replace("$instance", ".*")
}

#[test]
fn grafana_dashboard_panels_query_tlsgate_metrics_through_the_datasource_variable() {
    let text = read_deploy("grafana/tlsgate-dashboard.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&text).expect("tlsgate-dashboard.json is not valid JSON");

    assert_eq!(dashboard["title"], "tlsgate");
    assert!(
        dashboard["uid"].as_str().is_some_and(|u| !u.is_empty()),
        "the dashboard needs a uid"
    );
    let schema = dashboard["schemaVersion"].as_u64().expect("schemaVersion");
    assert!((36..=41).contains(&schema), "schemaVersion {schema}");

    // The Prometheus data source is a variable, so the dashboard imports into any Grafana.
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("templating.list");
    let datasource_var = variables
        .iter()
        .find(|v| v["type"] == "datasource" && v["query"] == "prometheus")
        .and_then(|v| v["name"].as_str())
        .expect("a datasource variable of type prometheus");
    let datasource_ref = format!("${{{datasource_var}}}");
    let uses_datasource_var = |ds: &serde_json::Value| {
        ds["type"] == "prometheus" && ds["uid"].as_str() == Some(datasource_ref.as_str())
    };

    let panels = all_panels(dashboard["panels"].as_array().expect("panels"));
    assert!(!panels.is_empty(), "no panels");
    let mut ids = BTreeSet::new();
    let mut rectangles = Vec::new();
    let mut exprs = Vec::new();
    for panel in panels {
        let title = panel["title"].as_str().unwrap_or("(untitled)");
        let id = panel["id"]
            .as_u64()
            .unwrap_or_else(|| panic!("{title}: no id"));
        assert!(ids.insert(id), "{title}: duplicate panel id {id}");
        let grid = &panel["gridPos"];
        let (x, y, w, h) = (
            grid["x"]
                .as_u64()
                .unwrap_or_else(|| panic!("{title}: gridPos.x")),
            grid["y"]
                .as_u64()
                .unwrap_or_else(|| panic!("{title}: gridPos.y")),
            grid["w"]
                .as_u64()
                .unwrap_or_else(|| panic!("{title}: gridPos.w")),
            grid["h"]
                .as_u64()
                .unwrap_or_else(|| panic!("{title}: gridPos.h")),
        );
        assert!(x + w <= 24 && w > 0 && h > 0, "{title}: gridPos {grid}");
        rectangles.push((title.to_owned(), x, y, w, h));
        if panel["type"] == "row" {
            continue;
        }

        assert!(
            uses_datasource_var(&panel["datasource"]),
            "{title}: panel datasource must be {{type: prometheus, uid: {datasource_ref}}}, is {}",
            panel["datasource"]
        );
        let targets = panel["targets"]
            .as_array()
            .unwrap_or_else(|| panic!("{title}: no targets"));
        assert!(!targets.is_empty(), "{title}: no targets");
        let mut mentions_tlsgate = false;
        for target in targets {
            if !target["datasource"].is_null() {
                assert!(
                    uses_datasource_var(&target["datasource"]),
                    "{title}: target datasource {}",
                    target["datasource"]
                );
            }
            let expr = target["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("{title}: target without expr"));
            check_promql_balanced(expr).unwrap_or_else(|e| panic!("{title}: {e}"));
            mentions_tlsgate |= expr.contains("tlsgate_");
            exprs.push((title.to_owned(), expr.to_owned()));
        }
        assert!(
            mentions_tlsgate,
            "{title}: no query mentions a tlsgate_ metric"
        );
    }

    // Panels must not overlap (Grafana would silently move them).
    for (i, a) in rectangles.iter().enumerate() {
        for b in &rectangles[i + 1..] {
            let overlap = a.1 < b.1 + b.3 && b.1 < a.1 + a.3 && a.2 < b.2 + b.4 && b.2 < a.2 + a.4;
            assert!(!overlap, "panels {:?} and {:?} overlap", a.0, b.0);
        }
    }

    // Every metric of design.md's "Metrics" section is on the dashboard.
    let all_exprs: String = exprs.iter().map(|(_, e)| e.as_str()).collect();
    for metric in [
        "tlsgate_messages_accepted_total",
        "tlsgate_messages_rejected_total",
        "tlsgate_deliveries_total",
        "tlsgate_tls_failures_total",
        "tlsgate_queue_messages",
        "tlsgate_queue_oldest_message_age_seconds",
        "tlsgate_domain_list_domains",
        "tlsgate_domain_list_age_seconds",
        "tlsgate_tls_certificate_expiry_timestamp_seconds",
        "tlsgate_dsn_sent_total",
        "tlsgate_connections_total",
        "tlsgate_plaintext_refused_total",
        "tlsgate_partner_tls_ok",
        "tlsgate_partner_certificate_expiry_timestamp_seconds",
    ] {
        assert!(all_exprs.contains(metric), "no panel shows {metric}");
    }

    // With promtool, every query must parse as PromQL: wrap them as recording rules.
    match find_on_path("promtool") {
        None => println!("dashboard: promtool not found, PromQL checked for balance only"),
        Some(promtool) => {
            let dir = tempfile::tempdir().unwrap();
            let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
            for (i, (_, expr)) in exprs.iter().enumerate() {
                let expr = dashboard_expr_for_promtool(expr).replace('\'', "''");
                rules.push_str(&format!(
                    "      - record: dashboard_query_{i}\n        expr: '{expr}'\n"
                ));
            }
            let file = dir.path().join("dashboard-queries.yml");
            std::fs::write(&file, rules).unwrap();
            let output = Command::new(promtool)
                .args(["check", "rules"])
                .arg(&file)
                .output()
                .expect("running promtool");
            assert!(
                output.status.success(),
                "a dashboard query is not valid PromQL:\n{}",
                output_text(&output)
            );
            println!("dashboard: promtool parsed all {} queries", exprs.len());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Prometheus alert rules

/// One alerting rule as found by line parsing: `key` → value for the rule's own keys (`expr`,
/// `for`, ...) and `labels.X` / `annotations.X` for the nested ones. A block scalar (`>-`, `|`)
/// is recorded with its indicator; its text is on the following, deeper lines.
#[derive(Debug)]
struct AlertRule {
    line: usize,
    keys: BTreeMap<String, String>,
}

impl AlertRule {
    fn get(&self, key: &str) -> Option<&str> {
        self.keys.get(key).map(String::as_str)
    }
}

fn split_key(text: &str) -> Option<(&str, &str)> {
    let (key, value) = text.split_once(':')?;
    let key = key.trim();
    if key.is_empty() || key.contains(' ') {
        return None;
    }
    Some((key, value.trim()))
}

/// Reads the `alert:` rules of a Prometheus rules file by indentation, and checks that the
/// indentation is consistent (spaces only, two per level, every rule and rule key aligned).
fn parse_alert_rules(text: &str) -> Result<Vec<AlertRule>, String> {
    let mut rules: Vec<AlertRule> = Vec::new();
    // (indent of the "- alert:" dash, indent of the rule's keys)
    let mut rule_indent: Option<(usize, usize)> = None;
    let mut section: Option<String> = None;
    let mut saw_groups = false;
    let mut block_scalar_indent: Option<usize> = None;

    for (index, raw) in text.lines().enumerate() {
        let n = index + 1;
        let content = raw.trim_start_matches(' ');
        let indent = raw.len() - content.len();
        if content.starts_with('\t') {
            return Err(format!("line {n}: tab in indentation"));
        }
        let trimmed = content.trim_end();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        // Lines of a block scalar (folded description text) are free text.
        if let Some(min) = block_scalar_indent {
            if indent > min {
                continue;
            }
            block_scalar_indent = None;
        }
        if indent % 2 != 0 {
            return Err(format!(
                "line {n}: indentation of {indent} spaces is not a multiple of 2"
            ));
        }
        if !saw_groups {
            if indent != 0 || trimmed != "groups:" {
                return Err(format!("line {n}: the file must start with `groups:`"));
            }
            saw_groups = true;
            continue;
        }

        if let Some(rest) = trimmed.strip_prefix("- alert:") {
            let name = rest.trim();
            if name.is_empty() {
                return Err(format!("line {n}: empty alert name"));
            }
            match rule_indent {
                Some((dash, _)) if dash != indent => {
                    return Err(format!(
                        "line {n}: rule indented {indent}, earlier rules {dash}"
                    ))
                }
                _ => rule_indent = Some((indent, indent + 2)),
            }
            let mut keys = BTreeMap::new();
            keys.insert("alert".to_owned(), name.to_owned());
            rules.push(AlertRule { line: n, keys });
            section = None;
            continue;
        }

        let Some((dash, key_indent)) = rule_indent else {
            continue; // group header lines before the first rule
        };
        if indent <= dash {
            // The next group, or something that is not an alert rule.
            section = None;
            if trimmed.starts_with("- record:") {
                return Err(format!("line {n}: recording rules are not expected here"));
            }
            if indent == dash && !trimmed.starts_with("- ") {
                return Err(format!("line {n}: unexpected key at rule level: {trimmed}"));
            }
            continue;
        }
        let rule = rules.last_mut().expect("a rule is open");
        let Some((key, value)) = split_key(trimmed) else {
            return Err(format!(
                "line {n}: expected `key: value`, found {trimmed:?}"
            ));
        };
        if value.starts_with('>') || value.starts_with('|') {
            block_scalar_indent = Some(indent);
        }
        let full_key = if indent == key_indent {
            section = matches!(key, "labels" | "annotations").then(|| key.to_owned());
            key.to_owned()
        } else if indent == key_indent + 2 {
            match &section {
                Some(s) => format!("{s}.{key}"),
                None => return Err(format!("line {n}: {key} is nested under nothing")),
            }
        } else {
            return Err(format!(
                "line {n}: indented {indent}, expected {key_indent} or {}",
                key_indent + 2
            ));
        };
        if rule
            .keys
            .insert(full_key.clone(), value.to_owned())
            .is_some()
        {
            return Err(format!("line {n}: {full_key} given twice"));
        }
    }
    if !saw_groups {
        return Err("no `groups:`".into());
    }
    Ok(rules)
}

fn is_duration(text: &str) -> bool {
    let text = text.trim_matches('"');
    let digits = text.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &text[digits.len()..];
    !digits.is_empty()
        && digits.chars().all(|c| c.is_ascii_digit())
        && matches!(unit, "ms" | "s" | "m" | "h" | "d" | "w" | "y")
}

/// The conventions every alert follows, whether or not promtool is there.
fn check_alert_rule(rule: &AlertRule) -> Result<(), String> {
    let name = rule.get("alert").unwrap_or("");
    let at = format!("{name} (line {})", rule.line);
    if !name.starts_with("Tlsgate") || !name.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(format!(
            "{at}: alert names are CamelCase and start with Tlsgate"
        ));
    }
    let expr = rule.get("expr").filter(|e| !e.is_empty());
    let expr = expr.ok_or_else(|| format!("{at}: no expr"))?;
    check_promql_balanced(expr).map_err(|e| format!("{at}: {e}"))?;
    let for_ = rule.get("for").ok_or_else(|| format!("{at}: no `for:`"))?;
    if !is_duration(for_) {
        return Err(format!("{at}: `for: {for_}` is not a duration"));
    }
    match rule.get("labels.severity") {
        Some("critical" | "warning" | "info") => {}
        other => return Err(format!("{at}: labels.severity is {other:?}")),
    }
    for key in ["annotations.summary", "annotations.description"] {
        if rule.get(key).is_none_or(str::is_empty) {
            return Err(format!("{at}: no {key}"));
        }
    }
    Ok(())
}

#[test]
fn alert_rule_structural_check_catches_mistakes() {
    let good = [
        "groups:",
        "  - name: g",
        "    rules:",
        "      - alert: TlsgateX",
        "        expr: up == 0",
        "        for: 5m",
        "        labels:",
        "          severity: critical",
        "        annotations:",
        "          summary: \"x\"",
        "          description: >-",
        "            long",
        "            text",
        "",
    ]
    .join("\n");
    let rules = parse_alert_rules(&good).unwrap();
    assert_eq!(rules.len(), 1);
    check_alert_rule(&rules[0]).unwrap();

    let without_for = good.replace("        for: 5m\n", "");
    let rules = parse_alert_rules(&without_for).unwrap();
    assert!(check_alert_rule(&rules[0]).unwrap_err().contains("for"));

    let bad_severity = good.replace("severity: critical", "severity: page");
    let rules = parse_alert_rules(&bad_severity).unwrap();
    assert!(check_alert_rule(&rules[0]).is_err());

    let severity_outside_labels = good.replace("          severity", "        severity");
    let rules = parse_alert_rules(&severity_outside_labels).unwrap();
    assert!(check_alert_rule(&rules[0]).is_err());

    let odd_indent = good.replace("        expr", "         expr");
    assert!(parse_alert_rules(&odd_indent).is_err());

    let tab = good.replace("        for", "\tfor");
    assert!(parse_alert_rules(&tab).is_err());

    let unbalanced = good.replace("up == 0", "sum(rate(x[5m]) > 0");
    let rules = parse_alert_rules(&unbalanced).unwrap();
    assert!(check_alert_rule(&rules[0]).is_err());
}

#[test]
fn prometheus_alert_rules_are_valid() {
    let file = "prometheus/tlsgate-alerts.yml";
    let text = read_deploy(file);
    let rules = parse_alert_rules(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
    for rule in &rules {
        check_alert_rule(rule).unwrap_or_else(|e| panic!("{file}: {e}"));
    }
    let names: Vec<&str> = rules.iter().filter_map(|r| r.get("alert")).collect();
    let unique: BTreeSet<&str> = names.iter().copied().collect();
    assert_eq!(
        unique.len(),
        names.len(),
        "duplicate alert names: {names:?}"
    );

    // The alerts design.md and the requirements ask for.
    let exprs: String = rules.iter().filter_map(|r| r.get("expr")).collect();
    for needle in [
        "up{job=\"tlsgate\"}",
        "tlsgate_domain_list_age_seconds",
        "tlsgate_domain_list_max_age_seconds",
        "tlsgate_tls_certificate_expiry_timestamp_seconds",
        "tlsgate_tls_failures_total",
        "tlsgate_queue_messages",
        "tlsgate_queue_oldest_message_age_seconds",
        "tlsgate_store_errors_total",
        "tlsgate_domain_list_reload_failures_total",
        "tlsgate_dnssec_available",
        // Issue 15 item 3: partner monitoring.
        "tlsgate_partner_tls_ok",
        "tlsgate_partner_certificate_expiry_timestamp_seconds",
        // Issue 16 item 2: the queue watchdog.
        "tlsgate_queue_stalled",
    ] {
        assert!(exprs.contains(needle), "no alert uses {needle}");
    }
    for name in [
        "TlsgateDown",
        "TlsgateDomainListTooOld",
        "TlsgateTlsFailuresToListedDomains",
        "TlsgateCertificateExpiresSoon",
        "TlsgatePartnerTlsFailing",
        "TlsgatePartnerCertificateExpiresSoon",
        "TlsgateQueueStalled",
    ] {
        assert!(unique.contains(name), "alert {name} is missing");
    }

    // Every alert has a promtool unit test.
    let tests = read_deploy("prometheus/tlsgate-alerts.test.yml");
    for name in &names {
        assert!(
            tests.contains(&format!("alertname: {name}\n")),
            "tlsgate-alerts.test.yml does not test {name}"
        );
    }

    match find_on_path("promtool") {
        None => println!(
            "alert rules: promtool not found; structural check of {} rules only",
            rules.len()
        ),
        Some(promtool) => {
            let check = Command::new(&promtool)
                .args(["check", "rules"])
                .arg(deploy_path(file))
                .output()
                .expect("running promtool check rules");
            assert!(
                check.status.success(),
                "promtool check rules failed:\n{}",
                output_text(&check)
            );
            let test = Command::new(&promtool)
                .args(["test", "rules"])
                .arg(deploy_path("prometheus/tlsgate-alerts.test.yml"))
                .output()
                .expect("running promtool test rules");
            assert!(
                test.status.success(),
                "promtool test rules failed:\n{}",
                output_text(&test)
            );
            println!(
                "alert rules: structural check of {} rules passed, promtool check and test passed",
                rules.len()
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// systemd unit

/// `[Section]` → key → values (a key may repeat).
type UnitSections = BTreeMap<String, BTreeMap<String, Vec<String>>>;

fn parse_unit(text: &str) -> UnitSections {
    let mut sections = UnitSections::new();
    let mut current = String::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        assert!(
            !line.ends_with('\\'),
            "line {}: avoid continuation lines",
            index + 1
        );
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = name.to_owned();
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("line {}: not key=value: {line}", index + 1));
        assert!(
            !current.is_empty(),
            "line {}: key outside a section",
            index + 1
        );
        sections
            .entry(current.clone())
            .or_default()
            .entry(key.trim().to_owned())
            .or_default()
            .push(value.trim().to_owned());
    }
    sections
}

#[test]
fn systemd_unit_is_hardened() {
    let text = read_deploy("tlsgate.service");
    let unit = parse_unit(&text);
    let service = unit.get("Service").expect("[Service] section");
    let value = |key: &str| -> &str {
        let values = service
            .get(key)
            .unwrap_or_else(|| panic!("[Service] has no {key}="));
        assert_eq!(values.len(), 1, "{key}= given {} times", values.len());
        &values[0]
    };

    for (key, expected) in [
        ("User", "tlsgate"),
        (
            "ExecStart",
            "tlsgate serve --config /etc/tlsgate/tlsgate.toml",
        ),
        // The configuration is checked before anything listens (issue 14 item 5).
        (
            "ExecStartPre",
            "tlsgate check-config --config /etc/tlsgate/tlsgate.toml",
        ),
        // Readiness through sd_notify (src/ops/service.rs; tests/packaging.rs).
        ("Type", "notify"),
        ("NotifyAccess", "main"),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ("KillSignal", "SIGTERM"),
        ("TimeoutStopSec", "60"),
        ("AmbientCapabilities", "CAP_NET_BIND_SERVICE"),
        ("CapabilityBoundingSet", "CAP_NET_BIND_SERVICE"),
        ("ProtectSystem", "strict"),
        ("ReadWritePaths", "/var/lib/tlsgate"),
        ("StateDirectory", "tlsgate"),
        ("SystemCallFilter", "@system-service"),
        ("UMask", "0077"),
        ("Restart", "on-failure"),
    ] {
        assert_eq!(value(key), expected, "{key}=");
    }
    for key in [
        "NoNewPrivileges",
        "ProtectHome",
        "PrivateTmp",
        "PrivateDevices",
        "ProtectKernelTunables",
        "ProtectKernelModules",
        "ProtectKernelLogs",
        "ProtectControlGroups",
        "RestrictNamespaces",
        "LockPersonality",
        "MemoryDenyWriteExecute",
    ] {
        assert!(
            matches!(value(key), "yes" | "true" | "1" | "on"),
            "{key}= must be enabled, is {}",
            value(key)
        );
    }
    let families: BTreeSet<&str> = value("RestrictAddressFamilies")
        .split_whitespace()
        .collect();
    assert_eq!(
        families,
        BTreeSet::from(["AF_INET", "AF_INET6", "AF_UNIX"]),
        "RestrictAddressFamilies="
    );
    let nofile: u64 = value("LimitNOFILE")
        .parse()
        .expect("LimitNOFILE= is a number");
    assert!(nofile >= 4096, "LimitNOFILE={nofile}");
    // A user namespace would take CAP_NET_BIND_SERVICE's effect on the host network away.
    assert!(
        !service.contains_key("PrivateUsers"),
        "PrivateUsers= breaks binding port 25"
    );
    assert!(
        unit.get("Install")
            .and_then(|i| i.get("WantedBy"))
            .is_some_and(|w| w.iter().any(|t| t == "multi-user.target")),
        "[Install] WantedBy=multi-user.target"
    );

    verify_unit_with_systemd_analyze(&text);
}

/// `systemd-analyze verify` on a copy whose commands point at an existing binary (the real one
/// is not installed here). systemd reports unknown keys and bad values as warnings, with a zero
/// exit status, so its output is searched for diagnostics about the file. A deliberately broken
/// copy must produce such a diagnostic first: where it does not (no usable systemd), the check is
/// skipped rather than passed blindly.
fn verify_unit_with_systemd_analyze(text: &str) {
    let Some(analyze) = find_on_path("systemd-analyze") else {
        println!("systemd unit: systemd-analyze not found, line checks only");
        return;
    };
    let Some(stand_in) = ["/bin/true", "/usr/bin/true"]
        .into_iter()
        .find(|p| Path::new(p).exists())
    else {
        println!("systemd unit: no /bin/true to stand in for tlsgate, verify skipped");
        return;
    };
    let copy = text
        .replace("/usr/local/bin/tlsgate", stand_in)
        .replace("/bin/kill", stand_in);

    let run = |unit_text: &str| -> (String, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tlsgate.service");
        std::fs::write(&path, unit_text).unwrap();
        let output = Command::new(&analyze)
            .args(["verify", "--man=no"])
            .arg(&path)
            .output()
            .expect("running systemd-analyze verify");
        let path_text = path.display().to_string();
        let all = output_text(&output);
        let diagnostics = all
            .lines()
            .filter(|l| {
                l.starts_with(&format!("{path_text}:"))
                    || l.contains("Unknown key")
                    || l.contains("Unknown section")
                    || l.contains("Failed to parse")
                    || l.contains("Invalid")
            })
            .collect::<Vec<_>>()
            .join("\n");
        (diagnostics, all)
    };

    let broken = copy.replace(
        "UMask=0077",
        "UMask=0077\nProtectSystm=strict\nUMask=notamode",
    );
    let (broken_diagnostics, broken_all) = run(&broken);
    if broken_diagnostics.is_empty() {
        println!(
            "systemd unit: systemd-analyze verify reports nothing here, skipped:\n{broken_all}"
        );
        return;
    }
    let (diagnostics, all) = run(&copy);
    assert!(
        diagnostics.is_empty(),
        "systemd-analyze verify: problems in deploy/tlsgate.service:\n{diagnostics}\n\n{all}"
    );
    println!("systemd unit: systemd-analyze verify found no problems");
}

#[test]
fn sysusers_entry_creates_the_service_user() {
    let text = read_deploy("tlsgate.sysusers");
    assert!(
        text.lines()
            .any(|l| l.split_whitespace().take(2).eq(["u", "tlsgate"])),
        "tlsgate.sysusers must create the user tlsgate"
    );
}

// ---------------------------------------------------------------------------------------------
// Dockerfile

/// The Dockerfile's instructions: (INSTRUCTION, arguments), continuation lines joined.
fn dockerfile_instructions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut pending = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if pending.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        if trimmed.starts_with('#') {
            continue; // comment inside a continued instruction
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            pending.push_str(head);
            pending.push(' ');
            continue;
        }
        pending.push_str(trimmed);
        let (instruction, args) = pending
            .split_once(char::is_whitespace)
            .unwrap_or((&pending, ""));
        out.push((instruction.to_ascii_uppercase(), args.trim().to_owned()));
        pending.clear();
    }
    assert!(pending.is_empty(), "Dockerfile ends in a continuation line");
    out
}

#[test]
fn dockerfile_builds_locked_and_runs_unprivileged() {
    let text = read_deploy("Dockerfile");
    let instructions = dockerfile_instructions(&text);
    let stages: Vec<usize> = instructions
        .iter()
        .enumerate()
        .filter(|(_, (i, _))| i == "FROM")
        .map(|(n, _)| n)
        .collect();
    assert_eq!(stages.len(), 2, "two FROM stages (build and runtime)");
    let (_, build_from) = &instructions[stages[0]];
    assert!(
        build_from.starts_with("rust:") && build_from.to_ascii_lowercase().ends_with(" as build"),
        "first stage: FROM rust:… AS build, is {build_from}"
    );
    let (_, runtime_from) = &instructions[stages[1]];
    assert!(
        runtime_from.starts_with("debian:"),
        "runtime stage: {runtime_from}"
    );
    let build = &instructions[stages[0]..stages[1]];
    let runtime = &instructions[stages[1]..];

    assert!(
        build
            .iter()
            .any(|(i, a)| i == "RUN" && a.contains("cargo build") && a.contains("--locked")),
        "the build stage runs cargo build --locked"
    );
    assert!(
        runtime
            .iter()
            .any(|(i, a)| i == "COPY" && a.starts_with("--from=build ")),
        "the runtime stage copies the binary from the build stage"
    );

    let user = runtime
        .iter()
        .rev()
        .find(|(i, _)| i == "USER")
        .map(|(_, a)| a.as_str())
        .expect("the runtime stage sets USER");
    let user_name = user.split(':').next().unwrap_or("");
    assert!(
        !user_name.is_empty() && user_name != "root" && user_name != "0",
        "the container must not run as root: USER {user}"
    );

    let args_of = |name: &str| -> Vec<&str> {
        runtime
            .iter()
            .filter(|(i, _)| i == name)
            .map(|(_, a)| a.as_str())
            .collect()
    };
    let exposed: BTreeSet<&str> = args_of("EXPOSE")
        .iter()
        .flat_map(|a| a.split_whitespace())
        .collect();
    for port in ["25", "587", "9464"] {
        assert!(exposed.contains(port), "EXPOSE {port}");
    }
    assert!(
        args_of("VOLUME")
            .iter()
            .any(|a| a.contains("/var/lib/tlsgate")),
        "VOLUME /var/lib/tlsgate"
    );
    let exec_form = |name: &str| -> Vec<String> {
        let args = args_of(name);
        assert_eq!(args.len(), 1, "one {name}");
        serde_json::from_str(args[0]).unwrap_or_else(|e| panic!("{name} is not exec form: {e}"))
    };
    assert_eq!(exec_form("ENTRYPOINT"), ["tlsgate"]);
    assert_eq!(
        exec_form("CMD"),
        ["serve", "--config", "/etc/tlsgate/tlsgate.toml"]
    );

    let healthcheck = args_of("HEALTHCHECK");
    assert_eq!(healthcheck.len(), 1, "one HEALTHCHECK");
    let command = healthcheck[0]
        .split_once("CMD ")
        .map(|(_, c)| c)
        .expect("HEALTHCHECK … CMD");
    let command: Vec<String> =
        serde_json::from_str(command).expect("HEALTHCHECK CMD in exec form (JSON array)");
    assert!(
        command.iter().any(|a| a.contains("/healthz")),
        "HEALTHCHECK asks /healthz"
    );
    check_healthcheck_command(&command);
}

/// Serves one HTTP request on 127.0.0.1 with `status_line`; returns the port and a handle
/// yielding the request line received.
fn one_shot_http_server(status_line: &'static str) -> (u16, std::thread::JoinHandle<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let mut request = Vec::new();
        let mut buf = [0u8; 1024];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => request.extend_from_slice(&buf[..n]),
            }
        }
        let _ = write!(
            stream,
            "{status_line}\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok"
        );
        String::from_utf8_lossy(&request)
            .lines()
            .next()
            .unwrap_or("")
            .to_owned()
    });
    (port, handle)
}

/// Runs the container's HEALTHCHECK command (it needs only bash) against local servers: healthy
/// on 200, unhealthy on 503 and on a closed port.
fn check_healthcheck_command(command: &[String]) {
    if command.first().map(String::as_str) != Some("bash") || find_on_path("bash").is_none() {
        println!("Dockerfile: HEALTHCHECK not run (needs bash)");
        return;
    }
    let run = |port: u16| {
        Command::new(&command[0])
            .args(&command[1..])
            .env("TLSGATE_HEALTH_ADDR", "127.0.0.1")
            .env("TLSGATE_HEALTH_PORT", port.to_string())
            .output()
            .expect("running the HEALTHCHECK command")
    };

    let (port, server) = one_shot_http_server("HTTP/1.0 200 OK");
    let output = run(port);
    let request_line = server.join().unwrap();
    assert_eq!(request_line, "GET /healthz HTTP/1.0");
    assert!(
        output.status.success(),
        "HEALTHCHECK fails against a healthy server:\n{}",
        output_text(&output)
    );

    let (port, server) = one_shot_http_server("HTTP/1.1 503 Service Unavailable");
    let output = run(port);
    server.join().unwrap();
    assert!(!output.status.success(), "HEALTHCHECK passes on 503");

    let closed_port = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    assert!(
        !run(closed_port).status.success(),
        "HEALTHCHECK passes on a closed port"
    );
    println!("Dockerfile: HEALTHCHECK command ran against local servers (200, 503, closed)");
}
