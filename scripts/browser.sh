#!/usr/bin/env bash
# Installs the headless browser the playground's browser tests (tests/serving/test_page.py) drive: Debian's `chromium` and
# `chromium-driver` packages (browser downloads at test time do not work offline). Needs root or sudo and apt;
# runs `apt-get update` once, only when the packages are missing. A failure leaves
# ${TQSTAR_SERVERS_DIR:-~/.cache/tqstar/servers}/browser.FAILED with the log's tail, and the browser tests are
# reported as skipped with that reason instead of passing silently.
set -uo pipefail

CACHE=${TQSTAR_SERVERS_DIR:-$HOME/.cache/tqstar/servers}
mkdir -p "$CACHE"
log="$CACHE/browser.log"

if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
    rm -f "$CACHE/browser.FAILED"
    exit 0
fi
if [ "$(id -u)" -eq 0 ]; then SUDO=""; elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then SUDO="sudo -n"
else
    echo "browser set-up skipped on $(date -u +%FT%TZ): installing chromium and chromium-driver needs root or sudo" \
        "(run: sudo apt-get install chromium chromium-driver)" > "$CACHE/browser.FAILED"
    echo "browser.sh: cannot install chromium without root; see $CACHE/browser.FAILED" >&2
    exit 1
fi
echo "browser.sh: installing chromium and chromium-driver with apt-get (once per machine)" >&2
if { $SUDO apt-get update && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y chromium chromium-driver; } > "$log" 2>&1 &&
    command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
    rm -f "$CACHE/browser.FAILED"
    exit 0
fi
{ echo "browser set-up failed on $(date -u +%FT%TZ); last lines of $log:"; tail -n 20 "$log"; } > "$CACHE/browser.FAILED"
echo "browser.sh: chromium set-up failed, see $CACHE/browser.FAILED" >&2
exit 1
