#!/usr/bin/env bash
# Segment's JavaScript libraries for the Segment tracking API: analytics.js (@segment/analytics-next,
# served by opsloop under /ingest/segment/analytics-next/bundles/) and @segment/analytics-node (the
# tests drive it). Installed from the npm registry into .node/ (git-ignored), pinned by
# scripts/segment-sdks/package-lock.json; does nothing when that lock is installed already.
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=scripts/segment-sdks
DEST=.node
if [ -f "$DEST/.installed" ] && cmp -s "$SRC/package-lock.json" "$DEST/.installed"; then exit 0; fi
if ! command -v npm >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "[segment-sdks] installing nodejs and npm with apt-get" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=600 update -qq >/dev/null
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends nodejs npm >/dev/null
  else
    echo "[segment-sdks] npm is missing: install Node.js 20+ and npm (@segment/analytics-node needs 20; Debian 12 ships 18: use NodeSource)" >&2
    exit 1
  fi
fi
echo "[segment-sdks] installing analytics.js and analytics-node into $DEST" >&2
mkdir -p "$DEST"
cp "$SRC/package.json" "$SRC/package-lock.json" "$DEST/"
(cd "$DEST" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
cp "$SRC/package-lock.json" "$DEST/.installed"
