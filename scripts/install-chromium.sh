#!/usr/bin/env bash
# Installs Debian's chromium for the dashboard's browser test, only when it is
# missing. Prints the browser's path; exits non-zero when it cannot be had.
set -euo pipefail
for candidate in "${CHROMIUM:-}" /usr/bin/chromium /usr/bin/chromium-browser; do
    if [ -n "$candidate" ] && [ -x "$candidate" ]; then
        echo "$candidate"
        exit 0
    fi
done
if ! command -v apt-get >/dev/null; then
    echo "chromium is missing and there is no apt-get to install it" >&2
    exit 1
fi
sudo=""
if [ "$(id -u)" != 0 ]; then
    sudo="sudo -n"
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq >&2
$sudo apt-get install -y -qq --no-install-recommends chromium >&2
echo /usr/bin/chromium
