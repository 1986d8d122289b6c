#!/usr/bin/env bash
# The README's test command: installs what the tests need on a fresh machine, then runs
# `cargo test`. `.ci/run` calls this same script after fmt and clippy. Arguments are passed on
# to `cargo test` (e.g. `bash scripts/test.sh --test delivery`).
#
# Outside programs the tests use:
#   python3 + dkimpy  tests/auth_interop.rs (an independent DKIM signer, D4) and
#                     tests/peers/old_tls_smtp.py (a TLS 1.0/1.1-only OpenSSL peer)
#   python3 + PyYAML  tests/spf_suite.rs (the RFC 7208 test suite, downloaded with pip
#                     from pyspf's source distribution into target/rfc7208-suite)
#   promtool          tests/deploy_files.rs (alert rules checked and unit-tested)
#   nmap              tests/open_relay_scan.rs (the smtp-open-relay audit script)
#   unbound           tests/dnssec.rs (a validating resolver on loopback, dns.dnssec = "resolver")
#   cargo-deb         tests/packaging.rs (builds the .deb from the test binary, checks its files)
#   script            tests/compliance.rs (a pseudo-terminal for the progress bar; util-linux)
#   mkfs.ext4, losetup, mount, fsfreeze
#                     tests/queue_watchdog.rs (a frozen ext4 loop file system; needs root)
set -euo pipefail
cd "$(dirname "$0")/.."

apt_updated=0
apt_install() {
  command -v apt-get >/dev/null || { echo "scripts/test.sh: cannot install $* (no apt-get)" >&2; return 1; }
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  if [ "$apt_updated" -eq 0 ]; then
    $sudo apt-get update -qq >/dev/null
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

command -v python3 >/dev/null || apt_install python3 python3-pip
if ! python3 -c "import dkim" 2>/dev/null; then
  python3 -m pip install -q dkimpy >/dev/null 2>&1 \
    || python3 -m pip install -q --break-system-packages dkimpy >/dev/null
fi
# tests/spf_suite.rs reads the RFC 7208 suite's YAML (fetched with pip at test time).
if ! python3 -c "import yaml" 2>/dev/null; then
  python3 -m pip install -q pyyaml >/dev/null 2>&1 \
    || python3 -m pip install -q --break-system-packages pyyaml >/dev/null
fi
command -v promtool >/dev/null || apt_install prometheus || echo "scripts/test.sh: promtool not installed; tests/deploy_files.rs checks the rules structurally only" >&2
command -v nmap >/dev/null || apt_install nmap
# The tests start their own unbound on a free loopback port (the package's service is not used).
[ -x /usr/sbin/unbound ] || command -v unbound >/dev/null || apt_install unbound

command -v script >/dev/null || apt_install bsdutils
command -v mkfs.ext4 >/dev/null || apt_install e2fsprogs
command -v fsfreeze >/dev/null || apt_install util-linux

# cargo-deb: about 3 minutes to build once; pinned to a version that builds on Rust 1.95.
cargo deb --version >/dev/null 2>&1 || cargo install --locked --quiet cargo-deb@3.8.0

exec cargo test --locked "$@"
