#!/usr/bin/env bash
# Render a run's report.html in headless Chromium (Debian's `chromium`) and save a PNG:
#   scripts/report_screenshot.sh runs/alexnet-<stamp> docs/images/report.png
# The flags keep Chromium off the network (the page is self-contained: it needs none).
set -euo pipefail
run=${1:?usage: $0 RUN_DIR OUT.png}
out=${2:?usage: $0 RUN_DIR OUT.png}
page=$(realpath "$run/report.html")
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --user-data-dir="$profile" --hide-scrollbars --window-size=1200,3000 \
  --screenshot="$(realpath -m "$out")" "file://$page"
