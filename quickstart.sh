#!/usr/bin/env bash
# lumind quickstart: build, pretrain the small quickstart model on the
# shipped corpus for a few minutes, then continue a few prompts with it.
# Re-running resumes (or reuses) the run in runs/quickstart/.
set -euo pipefail
cd "$(dirname "$0")"
cargo build --release
lumind=target/release/lumind

resume() { [ -f "$1/checkpoint.safetensors" ] && echo --resume || true; }

$lumind train --config configs/quickstart.toml $(resume runs/quickstart/pretrain)
echo "loss curve: runs/quickstart/pretrain/loss.svg"

for prompt in "Shall I compare thee" "KING HENRY V (Henry V):" "《静夜思》"; do
  echo "--- $prompt"
  $lumind generate --model models/quickstart.toml --weights runs/quickstart/pretrain/model.safetensors \
    --prompt "$prompt" --max-new-tokens 40 --temperature 0.7 --top-k 40 --seed 1
done
