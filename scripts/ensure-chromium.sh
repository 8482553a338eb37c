#!/usr/bin/env bash
# The browser tests drive the system's Chromium through Playwright (no browser download).
# Installs Debian's `chromium` when it is missing and we may; otherwise says what to install.
set -euo pipefail
if command -v chromium >/dev/null || command -v chromium-browser >/dev/null; then exit 0; fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "[browser] installing chromium with apt-get" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=600 update -qq >/dev/null
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends chromium >/dev/null
else
  echo "[browser] Chromium is missing: install it (Debian/Ubuntu: sudo apt-get install chromium)" >&2
  exit 1
fi
