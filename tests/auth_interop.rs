//! D4 interoperability: a message DKIM-signed by an outside implementation (Python's dkimpy,
//! installed by .ci/run) verifies in tlsgate, and fails once its body is changed.

mod common;

use common::dns::TestDns;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;
use tlsgate::auth::{AuthPolicy, CheckInput, Verifier};

const MESSAGE: &str = "From: Kari <kari@bank.test>\r\nTo: <ola@example.no>\r\nSubject: signed elsewhere\r\nDate: Mon, 23 Nov 2026 08:00:00 +0000\r\nMessage-ID: <dkimpy@bank.test>\r\n\r\nSigned by dkimpy.\r\n";

/// (base64 public key, signed message) from dkimpy.
fn sign_with_dkimpy() -> (String, Vec<u8>) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/dkimpy_sign.py");
    let mut child = Command::new("python3")
        .args([script, "bank.test", "py2026"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 (installed by .ci/run)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(MESSAGE.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "dkimpy failed (pip install dkimpy): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let newline = out.stdout.iter().position(|&b| b == b'\n').unwrap();
    let key = String::from_utf8(out.stdout[..newline].to_vec()).unwrap();
    (key, out.stdout[newline + 1..].to_vec())
}

async fn dkim_result(dns: &TestDns, message: &[u8]) -> String {
    let verifier = Verifier::new(
        &[dns.addr],
        "mx.tlsgate.test",
        Duration::from_secs(10),
        AuthPolicy::default(),
    )
    .unwrap();
    let outcome = verifier
        .check(CheckInput {
            client_ip: "127.0.0.1".parse().unwrap(),
            helo: "mail.bank.test",
            mail_from: Some("kari@bank.test"),
            message,
        })
        .await;
    assert_eq!(outcome.dkim.len(), 1, "{outcome:?}");
    outcome.dkim[0].result.as_str().to_string()
}

#[tokio::test]
async fn a_dkimpy_signature_verifies_and_a_changed_body_fails() {
    let (public_key, signed) = tokio::task::spawn_blocking(sign_with_dkimpy).await.unwrap();
    let dns = TestDns::start().await;
    dns.add_txt(
        "py2026._domainkey.bank.test",
        &format!("v=DKIM1; k=rsa; p={public_key}"),
    );
    assert_eq!(dkim_result(&dns, &signed).await, "pass");
    let tampered = String::from_utf8(signed)
        .unwrap()
        .replace("Signed by dkimpy.", "Signed by someone else.");
    assert_eq!(dkim_result(&dns, tampered.as_bytes()).await, "fail");
}
