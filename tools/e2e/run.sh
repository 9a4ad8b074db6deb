#!/usr/bin/env bash
# End-to-end test of the web chat page: serve a tiny model, drive the page in
# headless Chromium (Debian's `chromium` package; playwright-core from npm).
# Usage: tools/e2e/run.sh [SCREENSHOT.png]
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v chromium >/dev/null || { echo "needs Chromium: apt-get install chromium" >&2; exit 1; }
command -v node >/dev/null || { echo "needs Node.js and npm" >&2; exit 1; }
cargo build --release -q
(cd tools/e2e && [ -d node_modules/playwright-core ] || npm install --silent --no-audit --no-fund >/dev/null)
tmp=$(mktemp -d)
trap 'kill $server 2>/dev/null || true; rm -rf "$tmp"' EXIT
target/release/lumind init --model models/tiny.toml --seed 1 --out "$tmp/w.safetensors" 2>/dev/null
target/release/lumind serve --model models/tiny.toml --weights "$tmp/w.safetensors" --port 0 2>"$tmp/log" &
server=$!
for _ in $(seq 100); do grep -q "on http://" "$tmp/log" && break; sleep 0.1; done
url=$(grep -o "http://[0-9.:]*" "$tmp/log" | head -1)
[ -n "$url" ] || { cat "$tmp/log"; exit 1; }
node tools/e2e/chat_page.mjs "$url/" "${1:-}"
# the same page against a server that wants an API key
target/release/lumind serve --model models/tiny.toml --weights "$tmp/w.safetensors" --port 0 --api-key e2e-key 2>"$tmp/log2" &
server2=$!
trap 'kill $server $server2 2>/dev/null || true; rm -rf "$tmp"' EXIT
for _ in $(seq 100); do grep -q "on http://" "$tmp/log2" && break; sleep 0.1; done
url2=$(grep -o "http://[0-9.:]*" "$tmp/log2" | head -1)
[ -n "$url2" ] || { cat "$tmp/log2"; exit 1; }
node tools/e2e/chat_page.mjs "$url2/" "" e2e-key
