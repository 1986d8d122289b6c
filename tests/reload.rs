//! SIGHUP reload (issue 6): a new certificate is used by new sessions; a broken configuration
//! is refused and the running one stays in force.

mod common;

use common::{TestServer, HOSTNAME, STEP};
use rustls_pki_types::ServerName;
use std::net::SocketAddr;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

async fn read_reply(reader: &mut BufReader<TcpStream>, line: &mut String) {
    line.clear();
    tokio::time::timeout(STEP, reader.read_line(line))
        .await
        .expect("reply in time")
        .expect("read");
}

/// The certificate the server presents after STARTTLS (DER).
async fn presented_certificate(addr: SocketAddr, ca: &common::TestCa) -> Vec<u8> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    read_reply(&mut reader, &mut line).await; // banner
    reader
        .get_mut()
        .write_all(b"EHLO c.test\r\n")
        .await
        .unwrap();
    loop {
        read_reply(&mut reader, &mut line).await;
        if line.as_bytes().get(3) == Some(&b' ') {
            break;
        }
    }
    reader.get_mut().write_all(b"STARTTLS\r\n").await.unwrap();
    read_reply(&mut reader, &mut line).await;
    assert!(line.starts_with("220"), "{line}");
    let connector = tokio_rustls::TlsConnector::from(ca.client_config());
    let tls = tokio::time::timeout(
        STEP,
        connector.connect(ServerName::try_from(HOSTNAME).unwrap(), reader.into_inner()),
    )
    .await
    .unwrap()
    .unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

#[tokio::test]
async fn a_reloaded_certificate_is_used_by_new_sessions_and_a_bad_config_is_refused() {
    let server = TestServer::start().await;
    let before = presented_certificate(server.inbound(), &server.ca).await;

    // A new certificate in the same files, as after a renewal.
    server.ca.write_server_files(server.dir.path(), &[HOSTNAME]);
    server.running().reload().expect("reload accepted");
    let after = presented_certificate(server.inbound(), &server.ca).await;
    assert_ne!(before, after, "new sessions use the reloaded certificate");

    // A broken configuration is refused; the server keeps serving with what it has.
    let path = server.dir.path().join("tlsgate.toml");
    let good = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, format!("{good}\n[server.typo]\n")).unwrap();
    let err = server.running().reload().unwrap_err().to_string();
    assert!(err.contains("tlsgate.toml"), "{err}");
    assert_eq!(
        presented_certificate(server.inbound(), &server.ca).await,
        after
    );
    std::fs::write(&path, good).unwrap();
}
