#!/usr/bin/env bash
# A headless browser for the dashboard test: Debian's chromium and its matching chromedriver (as root, apt-get).
set -euo pipefail
if command -v chromium >/dev/null && { command -v chromedriver >/dev/null || [ -x /usr/lib/chromium/chromedriver ]; }; then
    exit 0
fi
[ "$(id -u)" = 0 ] || { echo "chromium-setup: not root; apt-get install chromium chromium-driver" >&2; exit 1; }
echo "chromium-setup: installing chromium and chromium-driver with apt-get" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >&2
apt-get install -y -q --no-install-recommends chromium chromium-driver >/dev/null
