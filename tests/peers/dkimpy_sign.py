#!/usr/bin/env python3
"""Signs a message with dkimpy (an independent DKIM implementation) for tests/auth_interop.rs.
Usage: dkimpy_sign.py DOMAIN SELECTOR < message. Generates an RSA key with the openssl CLI,
prints one line with the base64 public key (the DKIM p= value), then the signed message."""
import base64
import subprocess
import sys

import dkim


def main():
    domain, selector = sys.argv[1].encode(), sys.argv[2].encode()
    message = sys.stdin.buffer.read()
    key = subprocess.run(
        ["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        check=True, capture_output=True, timeout=60,
    ).stdout
    public_der = subprocess.run(
        ["openssl", "pkey", "-pubout", "-outform", "DER"],
        input=key, check=True, capture_output=True, timeout=60,
    ).stdout
    signature = dkim.sign(
        message, selector, domain, key,
        include_headers=[b"from", b"to", b"subject", b"date", b"message-id"],
        canonicalize=(b"relaxed", b"relaxed"),
    )
    sys.stdout.write(base64.b64encode(public_der).decode() + "\n")
    sys.stdout.flush()
    sys.stdout.buffer.write(signature + message)


if __name__ == "__main__":
    main()
