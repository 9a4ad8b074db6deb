#!/usr/bin/env bash
# Build, on this x86-64 machine, what tools/device_check.sh runs on a lent
# GPU machine (which has no registry access): stripped release binaries of
# lumind and of the GPU-capable test suites, in out/device/ (about 22 MB;
# give it to the device tool as `carry: ["out/device"]`).
set -euo pipefail
cd "$(dirname "$0")/.."
out=out/device
rm -rf "$out" && mkdir -p "$out"
cargo build --profile device --bin lumind
cp target/device/lumind "$out/"
for t in oracle oracle_train device; do
  exe=$(cargo test --profile device --no-run --test "$t" --message-format json 2>/dev/null |
    python3 -c 'import json,sys; print([m["executable"] for m in map(json.loads, sys.stdin) if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]][-1])')
  cp "$exe" "$out/$t"
done
# the tests find their fixtures under the path they were built in
pwd > "$out/ROOT"
git rev-parse HEAD > "$out/COMMIT"
du -sh "$out"
