#!/usr/bin/env python3
"""An SMTP server whose STARTTLS speaks only TLS 1.0 and 1.1 (OpenSSL via Python's ssl module),
for the T8 test: tlsgate must refuse to deliver over it. Usage:
old_tls_smtp.py IP PORT CERT KEY [MIN MAX CIPHERS], where MIN and MAX are TLS versions (1.0 …
1.3, default 1.0 and 1.1) and CIPHERS an OpenSSL cipher list for TLS 1.2 and older (default
"DEFAULT:@SECLEVEL=0"), so that tests can offer what rustls does not speak (issue 12 item 4).
Prints "ready" once listening; serves connections until killed; every read has a timeout."""
import socket
import ssl
import sys
import warnings

# TLS 1.0/1.1 are deprecated, which is the point of this peer.
warnings.simplefilter("ignore", DeprecationWarning)


def main():
    ip, port, cert, key = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    versions = {
        "1.0": ssl.TLSVersion.TLSv1,
        "1.1": ssl.TLSVersion.TLSv1_1,
        "1.2": ssl.TLSVersion.TLSv1_2,
        "1.3": ssl.TLSVersion.TLSv1_3,
    }
    low, high, ciphers = (sys.argv[5:8] + ["1.0", "1.1", "DEFAULT:@SECLEVEL=0"][len(sys.argv[5:8]):])
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = versions[low]
    ctx.maximum_version = versions[high]
    # OpenSSL 3 refuses TLS 1.0/1.1 at its default security level.
    ctx.set_ciphers(ciphers)
    ctx.load_cert_chain(cert, key)
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((ip, port))
    server.listen(8)
    print("ready", flush=True)
    while True:
        conn, _ = server.accept()
        conn.settimeout(20)
        try:
            serve(conn, ctx)
        except Exception as e:  # a failed handshake is the expected outcome
            print("session ended:", e, file=sys.stderr, flush=True)
        finally:
            conn.close()


def serve(conn, ctx):
    f = conn.makefile("rb")
    conn.sendall(b"220 old.tls.test ESMTP\r\n")
    while True:
        line = f.readline()
        if not line:
            return
        verb = line.strip().upper().split(b" ")[0]
        if verb == b"EHLO":
            conn.sendall(b"250-old.tls.test\r\n250-PIPELINING\r\n250 STARTTLS\r\n")
        elif verb == b"STARTTLS":
            conn.sendall(b"220 2.0.0 go ahead\r\n")
            tls = ctx.wrap_socket(conn, server_side=True)
            print("handshake done:", tls.version(), file=sys.stderr, flush=True)
            tls.sendall(b"421 4.3.0 this peer only checks handshakes\r\n")
            return
        elif verb == b"QUIT":
            conn.sendall(b"221 bye\r\n")
            return
        else:
            conn.sendall(b"250 ok\r\n")


if __name__ == "__main__":
    main()
