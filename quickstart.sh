#!/usr/bin/env bash
# lumind quickstart: build, pretrain the small quickstart model on the
# shipped corpus, fine-tune it on the shipped conversations (SFT), then
# continue a prompt with the pretrained model and ask the SFT model a few
# questions in chat format. About ten minutes on two cores, build included.
# Re-running resumes (or reuses) the runs in runs/quickstart/.
set -euo pipefail
cd "$(dirname "$0")"
cargo build --release
lumind=target/release/lumind
model=models/quickstart.toml

resume() { [ -f "$1/checkpoint.safetensors" ] && echo --resume || true; }

echo "=== 1/2 pretraining (configs/quickstart.toml)"
$lumind train --config configs/quickstart.toml $(resume runs/quickstart/pretrain)
echo "=== 2/2 supervised fine-tuning (configs/sft.toml)"
$lumind train --config configs/sft.toml $(resume runs/quickstart/sft)
echo "loss curves: runs/quickstart/pretrain/loss.svg, runs/quickstart/sft/loss.svg"

echo "=== the pretrained model continues text"
prompt="Shall I compare thee"
echo "> $prompt"
$lumind generate --model $model --weights runs/quickstart/pretrain/model.safetensors \
  --prompt "$prompt" --max-new-tokens 40 --temperature 0.7 --top-k 40 --seed 1

echo "=== the fine-tuned model answers in chat format (greedy)"
questions=("Which Shakespeare play contains the line \"Now is the winter of our discontent\"?"
  "How does Ambrose Bierce's Devil's Dictionary define \"Bore\"?"
  "What is the first line of Shakespeare's Sonnet 18?"
  "计算：64 × 7")
for q in "${questions[@]}"; do printf '%s\n/reset\n' "$q"; done |
  $lumind chat --model $model --weights runs/quickstart/sft/model.safetensors --temperature 0 --max-new-tokens 60 2>&1 |
  grep -v -e "conversation cleared" -e "^> /reset$" -e "^> $"
echo "chat yourself: $lumind chat --model $model --weights runs/quickstart/sft/model.safetensors"
