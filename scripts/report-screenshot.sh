#!/usr/bin/env bash
# Renders a `tlsgate domains check --html` report in a real browser (issue 15 item 2): Debian's
# headless Chromium takes a screenshot, so a person can see that the page lays out (and that
# it needs nothing from outside: networking, sync and updates are off, a fresh profile is used
# and removed).
#
#   scripts/report-screenshot.sh FILE.html OUT.png
#
# Installs the `chromium` package when it is missing (needs root and apt).
set -euo pipefail

if [ $# -ne 2 ]; then
    echo "usage: $0 FILE.html OUT.png" >&2
    exit 2
fi
page=$(realpath -- "$1")
out=$(realpath -m -- "$2")
if [ ! -r "$page" ]; then
    echo "$0: cannot read $1" >&2
    exit 1
fi

browser=$(command -v chromium || true)
if [ -z "$browser" ]; then
    apt-get install -y chromium
    browser=$(command -v chromium)
fi

profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
# Bounded: a browser that hangs must not hang the caller.
timeout 120 "$browser" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --user-data-dir="$profile" --screenshot="$out" --window-size=1280,1600 "file://$page"
test -s "$out"
echo "wrote $out"
