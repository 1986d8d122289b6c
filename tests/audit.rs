//! Audit log (S1): sequence and hash chain across restarts and rotation, tamper and gap
//! detection by `verify`, retention of whole files, concurrency, crash recovery.

use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use tlsgate::audit::{
    verify, AuditConfig, AuditError, AuditEvent, AuditLog, VerifyReport, GENESIS_HASH,
};

const DAY: Duration = Duration::from_secs(86_400);

fn config(dir: &Path) -> AuditConfig {
    AuditConfig::new(dir)
}

fn delivery(i: usize) -> AuditEvent {
    AuditEvent::TlsDelivery {
        queue_id: format!("Q{i:06}"),
        domain: format!("bank{i}.no"),
        host: format!("mx.bank{i}.no"),
        tls_version: "TLSv1.3".into(),
        cipher: "TLS13_AES_256_GCM_SHA384".into(),
        cert_sha256: Some("ab".repeat(32)),
        level: "verify".into(),
        policy_source: "list".into(),
    }
}

/// Audit files in `dir`, in name order (the tests never go past counter 9999).
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    files.sort();
    files
}

fn lines(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

fn json(line: &str) -> serde_json::Value {
    serde_json::from_str(line).unwrap()
}

fn verify_dir(dir: &Path) -> VerifyReport {
    verify(&[dir.to_path_buf()]).unwrap()
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn audit_log_is_send_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<AuditLog>();
}

#[test]
fn line_format_and_genesis() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(config(dir.path())).unwrap();
    assert_eq!(log.next_seq(), 1);
    assert_eq!(log.current_file(), None);
    let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
    let seq = log
        .record_at(
            AuditEvent::Started {
                version: "0.1.0".into(),
            },
            t,
        )
        .unwrap();
    assert_eq!(seq, 1);
    let path = log.current_file().unwrap();
    assert_eq!(path.file_name().unwrap(), "audit-20231114-0000.jsonl");
    let text = fs::read_to_string(&path).unwrap();
    assert!(text.ends_with('\n'));
    let line = text.trim_end_matches('\n');
    assert!(
        line.starts_with(&format!(
            "{{\"seq\":1,\"time\":\"2023-11-14T22:13:20.123Z\",\"prev\":\"{GENESIS_HASH}\",\
             \"event\":{{\"event\":\"started\",\"version\":\"0.1.0\"}},\"hash\":\""
        )),
        "{line}"
    );
    // The hash covers the line with the hash field removed.
    let v = json(line);
    let hash = v["hash"].as_str().unwrap();
    let body = line.replace(&format!(",\"hash\":\"{hash}\""), "");
    assert_eq!(sha256_hex(body.as_bytes()), hash);

    let report = verify_dir(dir.path());
    assert!(report.is_ok(), "{report:?}");
    assert_eq!((report.files, report.lines), (1, 1));
    assert_eq!((report.first_seq, report.last_seq), (Some(1), Some(1)));
}

#[test]
fn events_serialise_tagged_snake_case() {
    let v = serde_json::to_value(AuditEvent::PlaintextRefused {
        peer: "192.0.2.1".into(),
        domain: "dnb.no".into(),
        stage: "mail_from".into(),
    })
    .unwrap();
    assert_eq!(v["event"], "plaintext_refused");
    assert_eq!(v["stage"], "mail_from");
    let v = serde_json::to_value(AuditEvent::DomainListReload {
        old: 10,
        new: 12,
        ok: true,
        error: None,
        sha256: Some("ab".repeat(32)),
        added: vec!["bits.no".into()],
        removed: Vec::new(),
    })
    .unwrap();
    assert_eq!(v["event"], "domain_list_reload");
    assert_eq!(v["added"][0], "bits.no");
    // Empty lists are left out, so entries keep their old shape when nothing was removed.
    assert!(v.get("removed").is_none());
    let v = serde_json::to_value(AuditEvent::DsnSent {
        queue_id: "Q1".into(),
        dsn_id: "D1".into(),
        kind: "failed".into(),
    })
    .unwrap();
    assert_eq!(v["event"], "dsn_sent");
}

#[test]
fn sequence_and_chain_continue_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = AuditLog::open(config(dir.path())).unwrap();
        for i in 0..3 {
            assert_eq!(log.record(delivery(i)).unwrap(), i as u64 + 1);
        }
    }
    {
        let log = AuditLog::open(config(dir.path())).unwrap();
        assert_eq!(log.next_seq(), 4);
        assert_eq!(
            log.record(AuditEvent::ConfigReload {
                ok: true,
                error: None
            })
            .unwrap(),
            4
        );
        assert_eq!(log.record(delivery(5)).unwrap(), 5);
    }
    let log = AuditLog::open(config(dir.path())).unwrap();
    assert_eq!(log.record(delivery(6)).unwrap(), 6);

    let all: Vec<String> = files(dir.path()).iter().flat_map(|f| lines(f)).collect();
    assert_eq!(all.len(), 6);
    for pair in all.windows(2) {
        let (a, b) = (json(&pair[0]), json(&pair[1]));
        assert_eq!(b["seq"].as_u64().unwrap(), a["seq"].as_u64().unwrap() + 1);
        assert_eq!(b["prev"], a["hash"]);
    }
    let report = verify_dir(dir.path());
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.lines, 6);
}

#[test]
fn second_writer_is_locked_out() {
    let dir = tempfile::tempdir().unwrap();
    let _log = AuditLog::open(config(dir.path())).unwrap();
    match AuditLog::open(config(dir.path())) {
        Err(AuditError::Locked(_)) => {}
        other => panic!("expected Locked, got {other:?}"),
    }
}

#[test]
fn rotation_by_size_keeps_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = AuditConfig {
        max_file_bytes: 1200,
        ..config(dir.path())
    };
    {
        let log = AuditLog::open(cfg.clone()).unwrap();
        for i in 0..20 {
            log.record(delivery(i)).unwrap();
        }
    }
    // Reopening continues in the newest file, and rotates from there.
    let log = AuditLog::open(cfg.clone()).unwrap();
    for i in 20..25 {
        log.record(delivery(i)).unwrap();
    }
    drop(log);

    let files = files(dir.path());
    assert!(files.len() >= 5, "{files:?}");
    let mut last_hash = GENESIS_HASH.to_string();
    let mut seq = 0;
    for f in &files {
        let size = fs::metadata(f).unwrap().len();
        assert!(size <= 1200, "{} is {size} bytes", f.display());
        let lines = lines(f);
        assert!(!lines.is_empty());
        // The first line of each file carries the last hash of the file before.
        assert_eq!(json(&lines[0])["prev"], last_hash.as_str());
        for l in &lines {
            let v = json(l);
            seq += 1;
            assert_eq!(v["seq"], seq);
            last_hash = v["hash"].as_str().unwrap().to_string();
        }
    }
    assert_eq!(seq, 25);

    let report = verify_dir(dir.path());
    assert!(report.is_ok(), "{report:?}");
    assert_eq!((report.files, report.lines), (files.len(), 25));
    // Explicit files in order verify too; out of order they do not.
    assert!(verify(&files).unwrap().is_ok());
    let mut swapped = files.clone();
    swapped.swap(1, 2);
    let problem = verify(&swapped).unwrap().first_problem.unwrap();
    assert_eq!(
        (problem.file.as_path(), problem.line),
        (files[2].as_path(), 1)
    );
}

#[test]
fn rotation_by_utc_date() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(config(dir.path())).unwrap();
    let day1 = UNIX_EPOCH + Duration::from_secs(1_700_000_000); // 2023-11-14T22:13:20Z
    log.record_at(delivery(1), day1).unwrap();
    log.record_at(delivery(2), day1 + Duration::from_secs(3600))
        .unwrap(); // 23:13 same day
    log.record_at(delivery(3), day1 + Duration::from_secs(7200))
        .unwrap(); // 00:13 next day
                   // A clock stepping back does not make a file that sorts before the current one.
    log.record_at(delivery(4), day1).unwrap();
    log.record_at(delivery(5), day1 + 3 * DAY).unwrap();
    drop(log);
    let names: Vec<String> = files(dir.path())
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        [
            "audit-20231114-0000.jsonl",
            "audit-20231115-0000.jsonl",
            "audit-20231117-0000.jsonl"
        ]
    );
    assert_eq!(lines(&dir.path().join(&names[0])).len(), 2);
    assert_eq!(lines(&dir.path().join(&names[1])).len(), 2);
    assert!(verify_dir(dir.path()).is_ok());
}

/// Ten entries in one file, seq 1..=10 on lines 1..=10.
fn ten_entries(dir: &Path) -> PathBuf {
    let log = AuditLog::open(config(dir)).unwrap();
    for i in 1..=10 {
        log.record(delivery(i)).unwrap();
    }
    let path = log.current_file().unwrap();
    assert!(verify_dir(dir).is_ok());
    path
}

fn write_lines(path: &Path, lines: &[String]) {
    let mut text = lines.join("\n");
    text.push('\n');
    fs::write(path, text).unwrap();
}

#[test]
fn verify_catches_an_edited_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = ten_entries(dir.path());
    let mut l = lines(&path);
    assert!(l[4].contains("\"domain\":\"bank5.no\""));
    l[4] = l[4].replace("\"domain\":\"bank5.no\"", "\"domain\":\"evil5.no\"");
    write_lines(&path, &l);

    let report = verify_dir(dir.path());
    let problem = report.first_problem.expect("tampering must be detected");
    assert_eq!(problem.file, path);
    assert_eq!(problem.line, 5, "{problem}");
    assert!(problem.what.contains("hash mismatch"), "{problem}");
    assert_eq!(report.lines, 4);
    assert_eq!(report.last_seq, Some(4));
}

#[test]
fn verify_catches_an_edit_with_recomputed_hash() {
    let dir = tempfile::tempdir().unwrap();
    let path = ten_entries(dir.path());
    let mut l = lines(&path);
    let old_hash = json(&l[4])["hash"].as_str().unwrap().to_string();
    let edited = l[4].replace("\"domain\":\"bank5.no\"", "\"domain\":\"evil5.no\"");
    let body = edited.replace(&format!(",\"hash\":\"{old_hash}\""), "");
    let new_hash = sha256_hex(body.as_bytes());
    l[4] = edited.replace(&old_hash, &new_hash);
    write_lines(&path, &l);

    // Line 5 is self-consistent now; the link from line 6 is what breaks.
    let problem = verify_dir(dir.path()).first_problem.unwrap();
    assert_eq!(problem.line, 6, "{problem}");
    assert!(problem.what.contains("broken hash chain"), "{problem}");
}

#[test]
fn verify_catches_a_deleted_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = ten_entries(dir.path());
    let mut l = lines(&path);
    l.remove(4); // seq 5
    write_lines(&path, &l);

    let problem = verify_dir(dir.path()).first_problem.unwrap();
    assert_eq!(problem.file, path);
    assert_eq!(problem.line, 5, "{problem}");
    assert!(problem.what.contains("sequence gap"), "{problem}");
    assert!(
        problem.what.contains("expected seq 5, found 6"),
        "{problem}"
    );
}

#[test]
fn verify_catches_swapped_and_duplicated_lines() {
    let dir = tempfile::tempdir().unwrap();
    let path = ten_entries(dir.path());
    let orig = lines(&path);

    let mut l = orig.clone();
    l.swap(6, 7);
    write_lines(&path, &l);
    let problem = verify_dir(dir.path()).first_problem.unwrap();
    assert_eq!(problem.line, 7, "{problem}");

    let mut l = orig.clone();
    l.insert(3, orig[2].clone());
    write_lines(&path, &l);
    let problem = verify_dir(dir.path()).first_problem.unwrap();
    assert_eq!(problem.line, 4, "{problem}");
    assert!(problem.what.contains("repeats"), "{problem}");
}

#[test]
fn verify_catches_a_deleted_line_across_files() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = AuditConfig {
        max_file_bytes: 1200,
        ..config(dir.path())
    };
    let log = AuditLog::open(cfg).unwrap();
    for i in 0..12 {
        log.record(delivery(i)).unwrap();
    }
    drop(log);
    let files = files(dir.path());
    assert!(files.len() >= 3);
    // Drop the first line of the second file.
    let mut l = lines(&files[1]);
    l.remove(0);
    write_lines(&files[1], &l);
    let problem = verify_dir(dir.path()).first_problem.unwrap();
    assert_eq!(
        (problem.file.as_path(), problem.line),
        (files[1].as_path(), 1)
    );
    assert!(problem.what.contains("sequence gap"), "{problem}");
}

#[test]
fn verify_reports_junk_without_panicking() {
    let dir = tempfile::tempdir().unwrap();
    let path = ten_entries(dir.path());
    let orig = fs::read(&path).unwrap();
    let cases: Vec<(Vec<u8>, usize)> = vec![
        ([&orig[..], b"\xff\xfe garbage\n"].concat(), 11),
        ([&orig[..], b"\n"].concat(), 11),
        ([&orig[..], b"{\"seq\":11}\n"].concat(), 11),
        ([&orig[..], &orig[..40]].concat(), 11),
        (orig[..orig.len() - 1].to_vec(), 10),
        ([&orig[..], &vec![b'x'; 2 << 20][..], b"\n"].concat(), 11),
    ];
    for (content, line) in cases {
        fs::write(&path, &content).unwrap();
        let problem = verify_dir(dir.path()).first_problem.unwrap();
        assert_eq!(problem.line, line, "{problem}");
    }
    // Nothing to verify is a problem, a missing path an error.
    let empty = tempfile::tempdir().unwrap();
    assert_eq!(verify_dir(empty.path()).first_problem.unwrap().line, 0);
    assert!(verify(&[empty.path().join("nope")]).is_err());
}

#[test]
fn retention_removes_only_whole_old_files() {
    let dir = tempfile::tempdir().unwrap();
    let now = UNIX_EPOCH + Duration::from_secs(1_750_000_000);
    let log = AuditLog::open(config(dir.path())).unwrap();
    // Four days of entries 800..797 days ago, then one 10 days ago, then today.
    for age in [800u32, 799, 798, 731] {
        for _ in 0..3 {
            log.record_at(delivery(age as usize), now - DAY * age)
                .unwrap();
        }
    }
    // A file whose first entry is old but whose newest entry is within retention is kept.
    let hour = Duration::from_secs(3600);
    log.record_at(delivery(730), now - DAY * 730 - hour)
        .unwrap();
    log.record_at(delivery(730), now - DAY * 730 + hour)
        .unwrap();
    log.record_at(delivery(10), now - DAY * 10).unwrap();
    log.record_at(delivery(0), now).unwrap();
    let before = files(dir.path());
    assert_eq!(before.len(), 7);

    let removed = log.apply_retention(now).unwrap();
    assert_eq!(removed, before[..4].to_vec());
    let after = files(dir.path());
    assert_eq!(after, before[4..].to_vec());

    // The removal is itself in the log, and what remains is one chain from seq 13.
    let last = lines(after.last().unwrap()).pop().unwrap();
    let v = json(&last);
    assert_eq!(v["event"]["event"], "retention_removed");
    assert_eq!(v["event"]["through_seq"], 12);
    assert_eq!(v["event"]["files"].as_array().unwrap().len(), 4);
    let report = verify_dir(dir.path());
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.first_seq, Some(13));
    assert_eq!(report.last_seq, Some(17));

    // Nothing more to remove.
    assert!(log.apply_retention(now).unwrap().is_empty());
}

#[test]
fn retention_never_removes_the_current_file() {
    let dir = tempfile::tempdir().unwrap();
    let now = UNIX_EPOCH + Duration::from_secs(1_750_000_000);
    let cfg = AuditConfig {
        retention: DAY * 30,
        ..config(dir.path())
    };
    let log = AuditLog::open(cfg.clone()).unwrap();
    log.record_at(delivery(1), now - DAY * 100).unwrap();
    let first = log.current_file().unwrap();
    // The only file is old, but it is the current one.
    assert!(log.apply_retention(now).unwrap().is_empty());
    drop(log);

    // After a restart the newest (old) file is the current one again.
    let log = AuditLog::open(cfg).unwrap();
    assert!(log.apply_retention(now + DAY * 1000).unwrap().is_empty());
    assert!(first.exists());
    assert_eq!(log.next_seq(), 2);

    // Once a newer file exists, the old one can go.
    log.record_at(delivery(2), now - DAY * 99).unwrap();
    assert_eq!(log.apply_retention(now).unwrap(), vec![first.clone()]);
    assert!(!first.exists());
    let report = verify_dir(dir.path());
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.first_seq, Some(2));
}

#[test]
fn retention_stops_at_a_file_that_must_be_kept() {
    let dir = tempfile::tempdir().unwrap();
    let now = UNIX_EPOCH + Duration::from_secs(1_750_000_000);
    let line_len = {
        let scratch = tempfile::tempdir().unwrap();
        let log = AuditLog::open(config(scratch.path())).unwrap();
        log.record_at(delivery(1), now).unwrap();
        fs::metadata(log.current_file().unwrap()).unwrap().len()
    };
    // Two entries per file.
    let cfg = AuditConfig {
        max_file_bytes: line_len * 2 + 10,
        ..config(dir.path())
    };
    let log = AuditLog::open(cfg).unwrap();
    log.record_at(delivery(1), now - DAY * 900).unwrap(); // file A
    log.record_at(delivery(2), now - DAY * 900).unwrap();
    // The clock jumps: B starts with an entry 10 days old, then the clock steps back.
    log.record_at(delivery(3), now - DAY * 10).unwrap(); // file B
    log.record_at(delivery(4), now - DAY * 800).unwrap();
    log.record_at(delivery(5), now - DAY * 800).unwrap(); // file C (by size)
    log.record_at(delivery(6), now - DAY * 800).unwrap();
    log.record_at(delivery(7), now).unwrap(); // file D, current
    let before = files(dir.path());
    assert_eq!(before.len(), 4, "{before:?}");
    let removed = log.apply_retention(now).unwrap();
    // B's newest entry is recent although its last line is old, so B stays, and C after it
    // stays too: never a hole in the middle of the chain.
    assert_eq!(removed, before[..1].to_vec());
    assert!(verify_dir(dir.path()).is_ok());
}

#[test]
fn retention_keeps_a_damaged_file() {
    let dir = tempfile::tempdir().unwrap();
    let now = UNIX_EPOCH + Duration::from_secs(1_750_000_000);
    let log = AuditLog::open(config(dir.path())).unwrap();
    log.record_at(delivery(1), now - DAY * 900).unwrap();
    log.record_at(delivery(2), now - DAY * 899).unwrap();
    log.record_at(delivery(3), now).unwrap();
    let before = files(dir.path());
    let mut l = lines(&before[0]);
    l[0] = l[0].replace("bank1.no", "evil1.no");
    write_lines(&before[0], &l);
    assert!(log.apply_retention(now).unwrap().is_empty());
    assert_eq!(files(dir.path()), before);
}

#[test]
fn concurrent_records_get_consecutive_unique_seqs() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = AuditConfig {
        max_file_bytes: 8 * 1024,
        ..config(dir.path())
    };
    let log = Arc::new(AuditLog::open(cfg).unwrap());
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                (0..25)
                    .map(|i| log.record(delivery(t * 100 + i)).unwrap())
                    .collect::<Vec<u64>>()
            })
        })
        .collect();
    let mut seqs: Vec<u64> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let unique: HashSet<u64> = seqs.iter().copied().collect();
    assert_eq!(unique.len(), 200);
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=200).collect::<Vec<u64>>());
    let report = verify_dir(dir.path());
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.lines, 200);
    assert!(report.files > 1);
}

#[test]
fn torn_last_line_is_truncated_and_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let path = {
        let log = AuditLog::open(config(dir.path())).unwrap();
        for i in 1..=3 {
            log.record(delivery(i)).unwrap();
        }
        log.current_file().unwrap()
    };
    let good_len = fs::metadata(&path).unwrap().len();
    // A crash in the middle of writing entry 4.
    let torn = b"{\"seq\":4,\"time\":\"2025-01-01T00:00:00.000Z\",\"prev\":\"00";
    fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(torn)
        .unwrap();
    assert_eq!(verify_dir(dir.path()).first_problem.unwrap().line, 4);

    let log = AuditLog::open(config(dir.path())).unwrap();
    // Entry 4 is the record of the repair.
    assert_eq!(log.next_seq(), 5);
    assert_eq!(log.record(delivery(5)).unwrap(), 5);
    drop(log);

    let l = lines(&path);
    assert_eq!(l.len(), 5);
    let repair = json(&l[3]);
    assert_eq!(repair["seq"], 4);
    assert_eq!(repair["event"]["event"], "log_repaired");
    assert_eq!(repair["event"]["discarded_bytes"], torn.len());
    assert_eq!(
        repair["event"]["discarded_sha256"],
        sha256_hex(torn).as_str()
    );
    assert_eq!(
        repair["event"]["file"],
        path.file_name().unwrap().to_str().unwrap()
    );
    assert!(fs::metadata(&path).unwrap().len() > good_len);
    assert!(verify_dir(dir.path()).is_ok());
}

#[test]
fn last_line_missing_only_its_newline_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = {
        let log = AuditLog::open(config(dir.path())).unwrap();
        for i in 1..=3 {
            log.record(delivery(i)).unwrap();
        }
        log.current_file().unwrap()
    };
    let mut bytes = fs::read(&path).unwrap();
    assert_eq!(bytes.pop(), Some(b'\n'));
    fs::write(&path, &bytes).unwrap();

    let log = AuditLog::open(config(dir.path())).unwrap();
    assert_eq!(log.next_seq(), 4);
    log.record(delivery(4)).unwrap();
    drop(log);
    assert_eq!(lines(&path).len(), 4);
    assert!(!fs::read_to_string(&path).unwrap().contains("log_repaired"));
    assert!(verify_dir(dir.path()).is_ok());
}

#[test]
fn file_holding_only_a_torn_line_continues_from_the_previous_file() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = AuditConfig {
        max_file_bytes: 1200,
        ..config(dir.path())
    };
    let log = AuditLog::open(cfg.clone()).unwrap();
    let mut i = 0;
    while files(dir.path()).len() < 2 {
        i += 1;
        log.record(delivery(i)).unwrap();
    }
    drop(log);
    // Make the newest file hold only a torn first line.
    let newest = files(dir.path()).pop().unwrap();
    fs::write(&newest, b"{\"seq\":").unwrap();
    let log = AuditLog::open(cfg).unwrap();
    assert_eq!(log.next_seq(), i as u64 + 1); // the repair record took seq i
    drop(log);
    assert!(verify_dir(dir.path()).is_ok());
}

#[test]
fn corrupt_last_line_refuses_to_open_without_panicking() {
    let dir = tempfile::tempdir().unwrap();
    let path = ten_entries(dir.path());
    let mut l = lines(&path);
    l[9] = l[9].replace("bank10.no", "evil10.no");
    write_lines(&path, &l);
    match AuditLog::open(config(dir.path())) {
        Err(AuditError::Corrupt { file, line, .. }) => {
            assert_eq!(file, path);
            assert_eq!(line, 10);
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    // Garbage of every kind: an error, never a panic.
    for junk in [
        &b"\xff\xff\xff\n"[..],
        b"\n",
        b"{}\n",
        b"{\"seq\":1}\n",
        &[0u8; 4096][..],
    ] {
        fs::write(&path, junk).unwrap();
        let result = AuditLog::open(config(dir.path()));
        if junk.ends_with(b"\n") {
            assert!(
                matches!(result, Err(AuditError::Corrupt { .. })),
                "{junk:?}"
            );
        } else {
            // NULs without a newline (a crash extending the file) are a torn line.
            let log = result.unwrap();
            assert_eq!(log.next_seq(), 2);
            drop(log);
        }
    }
    // More than a line's worth of bytes without a newline is not a torn write: refuse.
    let big = vec![b'x'; (1 << 20) + 10];
    fs::write(&path, [&b"x\n"[..], &big[..]].concat()).unwrap();
    assert!(matches!(
        AuditLog::open(config(dir.path())),
        Err(AuditError::Corrupt { .. })
    ));
    assert!(fs::metadata(&path).unwrap().len() > (1 << 20));
}

#[test]
fn oversized_entry_is_refused_and_does_not_break_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(config(dir.path())).unwrap();
    log.record(delivery(1)).unwrap();
    let huge = AuditEvent::ConfigReload {
        ok: false,
        error: Some("e".repeat(2 << 20)),
    };
    assert!(matches!(log.record(huge), Err(AuditError::TooLarge(_))));
    assert_eq!(log.record(delivery(2)).unwrap(), 2);
    assert!(verify_dir(dir.path()).is_ok());
}

#[test]
fn timestamps_are_rfc3339_utc() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(config(dir.path())).unwrap();
    let before = SystemTime::now();
    log.record(AuditEvent::AdminAction {
        action: "flush".into(),
        target: "queue".into(),
        client: "127.0.0.1".into(),
    })
    .unwrap();
    let l = lines(&log.current_file().unwrap());
    let time = json(&l[0])["time"].as_str().unwrap().to_string();
    let parsed = tlsgate::audit::parse_rfc3339(&time).unwrap();
    assert!(parsed + Duration::from_millis(1) >= before, "{time}");
    assert!(parsed <= SystemTime::now());
}

/// Group commit (issue 10 item 9): entries submitted from many threads at once are all written,
/// numbered without gaps, chained, and rotated by size mid-batch without breaking the chain.
#[test]
fn concurrent_submits_are_grouped_and_all_written_in_one_chain() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = AuditConfig {
        max_file_bytes: 4 * 1024,
        ..config(dir.path())
    };
    let log = Arc::new(AuditLog::open(cfg).unwrap());
    let threads: Vec<_> = (0..16)
        .map(|t| {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                for i in 0..25 {
                    log.submit(delivery(t * 100 + i)).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(log.next_seq(), 401, "every submitted entry got a number");
    let report = verify_dir(dir.path());
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.lines, 400);
    assert!(report.files > 1, "rotated by size");
    let mut queue_ids: Vec<String> = files(dir.path())
        .iter()
        .flat_map(|f| lines(f))
        .map(|l| json(&l)["event"]["queue_id"].as_str().unwrap().to_string())
        .collect();
    queue_ids.sort();
    queue_ids.dedup();
    assert_eq!(queue_ids.len(), 400, "no entry lost or written twice");
}

/// Issue 16 item 7: `audit::submit` (the server's fire-and-forget path) queues entries for one
/// writer task instead of a blocking task each. Entries from many tasks, mixed with blocking
/// `AuditLog::submit` calls, are all written once, numbered without gaps and chained (S1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_submits_share_one_writer_and_are_all_written() {
    let dir = tempfile::tempdir().unwrap();
    let shared = Arc::new(AuditLog::open(config(dir.path())).unwrap());
    let log = Some(shared.clone());
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..16 {
        let log = log.clone();
        tasks.spawn(async move {
            for i in 0..25 {
                tlsgate::audit::submit(&log, delivery(t * 100 + i));
                tokio::task::yield_now().await;
            }
        });
    }
    let blocking = {
        let shared = shared.clone();
        tokio::task::spawn_blocking(move || {
            for i in 0..20 {
                shared.submit(delivery(9000 + i)).unwrap();
            }
        })
    };
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    blocking.await.unwrap();
    let log = shared;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while log.next_seq() < 421 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(log.next_seq(), 421, "every submitted entry got a number");
    let report = verify_dir(dir.path());
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.lines, 420);
    let mut queue_ids: Vec<String> = files(dir.path())
        .iter()
        .flat_map(|f| lines(f))
        .map(|l| json(&l)["event"]["queue_id"].as_str().unwrap().to_string())
        .collect();
    queue_ids.sort();
    queue_ids.dedup();
    assert_eq!(queue_ids.len(), 420, "no entry lost or written twice");
}
