//! DANE authentication in real rustls handshakes on 127.0.0.1 (RFC 7672 §3, D1): a client
//! made by `ClientTls::dane_for` completes the handshake when a TLSA record matches the
//! server's certificate, and fails with `TlsFailure::DaneMismatch` (metric label
//! `dane_mismatch`) when none does.

mod common;

use common::{TestCa, STEP};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::sync::Arc;
use tlsgate::dns::Tlsa;
use tlsgate::policy::NamePattern;
use tlsgate::tls::client::{ClientTls, TlsFailure};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MX: &str = "mx.partner.test";

/// A server certificate chain (leaf first, then the CA) and its key, issued by the harness CA.
fn server_identity(ca: &TestCa) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let (leaf_pem, key_pem) = ca.issue(&[MX]);
    let mut chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(leaf_pem.as_bytes())
            .map(|c| c.unwrap())
            .collect();
    chain.extend(CertificateDer::pem_slice_iter(ca.cert_pem.as_bytes()).map(|c| c.unwrap()));
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
    (chain, key)
}

/// A TLS server on loopback for one connection: it completes the handshake (TLS 1.2 only if
/// `tls12_only`), writes `ok` and closes.
async fn serve_once(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    tls12_only: bool,
) -> SocketAddr {
    let versions: &[&rustls::SupportedProtocolVersion] = if tls12_only {
        &[&rustls::version::TLS12]
    } else {
        tlsgate::tls::PROTOCOL_VERSIONS
    };
    let config = rustls::ServerConfig::builder_with_provider(tlsgate::tls::crypto_provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let Ok(Ok((tcp, _))) = tokio::time::timeout(STEP, listener.accept()).await else {
            return;
        };
        // The client's verifier may refuse the certificate: the server's side then fails too.
        if let Ok(Ok(mut tls)) = tokio::time::timeout(STEP, acceptor.accept(tcp)).await {
            let _ = tls.write_all(b"ok").await;
            let _ = tls.shutdown().await;
        }
    });
    addr
}

/// Connects with `config` as the MX host (SNI = MX host name, RFC 7672 §8.1) and reads what
/// the server writes; the handshake error classified as delivery would classify it.
async fn connect(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> Result<String, TlsFailure> {
    let tcp = tokio::time::timeout(STEP, tokio::net::TcpStream::connect(addr))
        .await
        .expect("connect timed out")
        .unwrap();
    let connector = tokio_rustls::TlsConnector::from(config);
    let name = ServerName::try_from(MX).unwrap();
    let mut tls = tokio::time::timeout(STEP, connector.connect(name, tcp))
        .await
        .expect("handshake timed out")
        .map_err(|e| TlsFailure::from_handshake_error(&e, MX))?;
    let mut text = String::new();
    tokio::time::timeout(STEP, tls.read_to_string(&mut text))
        .await
        .expect("read timed out")
        .unwrap();
    Ok(text)
}

/// The `usage selector=1 matching=1` record (SHA-256 of the SubjectPublicKeyInfo) of `cert`.
fn spki_sha256(usage: u8, cert: &CertificateDer<'_>) -> Tlsa {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).unwrap();
    Tlsa {
        usage,
        selector: 1,
        matching: 1,
        data: Sha256::digest(parsed.tbs_certificate.subject_pki.raw).to_vec(),
    }
}

fn mx_name() -> Vec<NamePattern> {
    vec![NamePattern::parse(MX)]
}

#[tokio::test]
async fn dane_ee_record_that_matches_completes_the_handshake_over_tls13_and_tls12() {
    // RFC 7672 §3.1.1: DANE-EE "3 1 1" of the server's key authenticates it; the handshake
    // signatures are still checked (both TLS versions tlsgate speaks, T8).
    let ca = TestCa::new();
    let client = ClientTls::new(&[]).unwrap();
    for tls12_only in [false, true] {
        let (chain, key) = server_identity(&ca);
        let record = spki_sha256(3, &chain[0]);
        let config = client.dane_for(vec![record], mx_name(), false).unwrap();
        let addr = serve_once(chain, key, tls12_only).await;
        assert_eq!(
            connect(addr, config).await,
            Ok("ok".to_string()),
            "TLS 1.2 only: {tls12_only}"
        );
    }
}

#[tokio::test]
async fn dane_ta_record_for_the_presented_ca_completes_the_handshake() {
    // RFC 7672 §3.1.2: a DANE-TA(2) record for the CA certificate the server sends; the leaf
    // chains to it and names the MX host (§3.2.2).
    let ca = TestCa::new();
    let client = ClientTls::new(&[]).unwrap();
    let (chain, key) = server_identity(&ca);
    let record = spki_sha256(2, &chain[1]);
    let config = client.dane_for(vec![record], mx_name(), false).unwrap();
    let addr = serve_once(chain, key, false).await;
    assert_eq!(connect(addr, config).await, Ok("ok".to_string()));
}

#[tokio::test]
async fn no_matching_record_fails_the_handshake_with_dane_mismatch() {
    // RFC 6698 §4.1, RFC 7672 §3: usable TLSA records, none matching → no delivery; the
    // reason names the records and the leaf's key digest for the DSN and the log.
    let ca = TestCa::new();
    let client = ClientTls::new(&[]).unwrap();
    let (chain, key) = server_identity(&ca);
    let (other_chain, _) = server_identity(&ca);
    let record = spki_sha256(3, &other_chain[0]);
    let config = client.dane_for(vec![record], mx_name(), false).unwrap();
    let leaf_digest: String = spki_sha256(3, &chain[0])
        .data
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let addr = serve_once(chain, key, false).await;
    let failure = connect(addr, config)
        .await
        .expect_err("must not authenticate");
    assert_eq!(failure.metric_label(), "dane_mismatch");
    let TlsFailure::DaneMismatch(text) = &failure else {
        panic!("not a DANE failure: {failure:?}");
    };
    assert!(
        text.starts_with(
            "no TLSA record matched the certificate (1 usable TLSA record(s) for mx.partner.test;"
        ),
        "{text}"
    );
    assert!(text.contains(&leaf_digest), "{text}");
    assert_eq!(failure.to_string(), *text);
}

#[tokio::test]
async fn records_that_are_all_unusable_give_no_dane_configuration() {
    // RFC 7672 §3.1.3: PKIX-EE(1) is unusable for SMTP, even when it would match; with none
    // usable the caller must fall back to unauthenticated TLS, so `dane_for` refuses.
    let ca = TestCa::new();
    let client = ClientTls::new(&[]).unwrap();
    let (chain, _) = server_identity(&ca);
    let record = spki_sha256(1, &chain[0]);
    let Err(failure) = client.dane_for(vec![record], mx_name(), false) else {
        panic!("a configuration from unusable records");
    };
    assert_eq!(failure.metric_label(), "dane_mismatch");
}
