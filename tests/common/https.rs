//! A small HTTPS server on loopback for the tests that fetch over HTTPS (MTA-STS policies,
//! RFC 8461 section 3.3; the domain list of `domain_list.url`, T10): it answers every request
//! with the current status and body as text/plain, counts requests, and reads each request
//! with a size and time bound. Its certificate is the test's (e.g. from the relay's test CA).

use super::mx_sink::free_port;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// The running server: what it answers and how often it was asked.
pub struct HttpsServer {
    requests: Arc<AtomicUsize>,
    body: Arc<Mutex<Vec<u8>>>,
    status: Arc<AtomicU16>,
}

impl HttpsServer {
    /// Requests answered so far.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// The body of the next 200 answers.
    pub fn set_body(&self, body: &[u8]) {
        *self.body.lock().unwrap() = body.to_vec();
    }

    /// The status of the next answers (200 carries the body, any other an empty one).
    pub fn set_status(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }
}

/// A listener on `ip` at a free port, bound before the relay starts so that its port can go
/// into the relay's configuration (the certificate can come from the relay's CA, later).
pub async fn bind_https_port(ip: &str) -> (TcpListener, u16) {
    for _ in 0..200 {
        let port = free_port();
        let addr: SocketAddr = format!("{ip}:{port}").parse().unwrap();
        if let Ok(listener) = TcpListener::bind(addr).await {
            return (listener, port);
        }
    }
    panic!("no free port for the HTTPS server in 200 tries");
}

/// Serves HTTPS on `listener` with `tls`: one request per connection, answered 200 with
/// `body` as text/plain until [`HttpsServer::set_status`] or [`HttpsServer::set_body`] change
/// it.
pub fn serve_https(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    body: &[u8],
) -> HttpsServer {
    let server = HttpsServer {
        requests: Arc::default(),
        body: Arc::new(Mutex::new(body.to_vec())),
        status: Arc::new(AtomicU16::new(200)),
    };
    let (requests, body, status) = (
        server.requests.clone(),
        server.body.clone(),
        server.status.clone(),
    );
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, requests, body, status) = (
                acceptor.clone(),
                requests.clone(),
                body.clone(),
                status.clone(),
            );
            tokio::spawn(async move {
                let exchange = async {
                    let mut stream = acceptor.accept(tcp).await.ok()?;
                    let mut request = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        let n = stream.read(&mut buf).await.ok()?;
                        if n == 0 || request.len() > 16 * 1024 {
                            return None;
                        }
                        request.extend_from_slice(&buf[..n]);
                    }
                    requests.fetch_add(1, Ordering::SeqCst);
                    let code = status.load(Ordering::SeqCst);
                    let mut response = if code == 200 {
                        let body = body.lock().unwrap().clone();
                        let mut head = format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\n\
                             Content-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len()
                        )
                        .into_bytes();
                        head.extend_from_slice(&body);
                        head
                    } else {
                        format!(
                            "HTTP/1.1 {code} Test\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        )
                        .into_bytes()
                    };
                    stream.write_all(&response).await.ok()?;
                    response.clear();
                    stream.shutdown().await.ok()
                };
                let _ = tokio::time::timeout(Duration::from_secs(10), exchange).await;
            });
        }
    });
    server
}
