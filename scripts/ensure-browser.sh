#!/usr/bin/env bash
# The browser tests drive Debian's Chromium with Playwright (never a downloaded browser).
# Install it when it is missing and we may (root with apt-get); otherwise say how.
set -u
CHROMIUM="${SENDFLOWR_TEST_CHROMIUM:-/usr/bin/chromium}"
[ -x "$CHROMIUM" ] && exit 0
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian's chromium for the browser tests..."
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq chromium >/dev/null
fi
[ -x "$CHROMIUM" ] && exit 0
echo "error: $CHROMIUM is missing; install it (apt-get install chromium) or set SENDFLOWR_TEST_CHROMIUM" >&2
exit 1
