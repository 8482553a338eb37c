#!/usr/bin/env bash
# The browser tests drive the system's Chromium through Playwright (no browser download).
# Installs Debian's `chromium` when it is missing and we may, and a Chinese font so the pages in
# Simplified Chinese (and their screenshots) show characters rather than empty boxes; otherwise
# says what to install.
set -euo pipefail
packages=()
if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null; then packages+=(chromium); fi
if ! fc-list :lang=zh 2>/dev/null | grep -q .; then packages+=(fonts-wqy-microhei); fi
if [ ${#packages[@]} = 0 ]; then exit 0; fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "[browser] installing ${packages[*]} with apt-get" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=600 update -qq >/dev/null
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
elif [[ " ${packages[*]} " == *" chromium "* ]]; then
  echo "[browser] Chromium is missing: install it (Debian/Ubuntu: sudo apt-get install chromium)" >&2
  exit 1
else
  echo "[browser] no Chinese font: Chinese pages will show boxes (Debian/Ubuntu: sudo apt-get install fonts-wqy-microhei)" >&2
fi
