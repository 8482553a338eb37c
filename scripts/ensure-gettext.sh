#!/usr/bin/env bash
# The translation tests extract every app's strings with GNU gettext's xgettext (as makemessages
# does). Installs Debian's `gettext` when it is missing and we may; otherwise says what to install.
set -euo pipefail
if command -v xgettext >/dev/null && command -v msgmerge >/dev/null; then exit 0; fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "[i18n] installing gettext with apt-get" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=600 update -qq >/dev/null
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends gettext >/dev/null
else
  echo "[i18n] GNU gettext is missing: install it (Debian/Ubuntu: sudo apt-get install gettext)" >&2
  exit 1
fi
