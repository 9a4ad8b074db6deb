#!/usr/bin/env bash
# The GPU checks of the CUDA backend, in one run that fits the device tool's
# 15 minutes on a fresh H200 machine with no registry access. Build first,
# here: tools/device_build.sh; then, through the device tool:
#     run  command: tools/device_check.sh   carry: ["out/device"]
# Results go to $OUT (the device tool's folder; default out/device-results):
#   machine.txt   nvidia-smi, versions
#   oracle.txt    logits, KV-cache decode and greedy tokens on the GPU against
#                 the transformers fixtures, every fusion strategy, tiny dense,
#                 q/k-norm and MoE models (tolerances in tests/oracle.rs)
#   train.txt     losses, gradients and AdamW steps on the GPU against PyTorch
#   ptx.txt       every generated module compiled by NVRTC for sm_90
#   bench.txt     minimind-small-T: prefill, decode, training step, lumind
#                 (fused and unfused) against eager PyTorch on the same GPU
#   summary.txt   exit status of each part
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/device-results}
mkdir -p "$OUT"
bin=out/device
[ -x "$bin/lumind" ] || { echo "no $bin/lumind: run tools/device_build.sh and carry out/device" >&2; exit 2; }
py=$(command -v python3 || command -v python)

# CUDA libraries: the driver's libcuda, and NVRTC / cuBLAS from the CUDA
# toolkit or from the nvidia-* wheels torch brings
wheels=$("$py" - <<'PY' 2>/dev/null
import glob, os
try:
    import nvidia
    print(":".join(sorted({os.path.dirname(p) for b in nvidia.__path__ for p in glob.glob(os.path.join(b, "*", "lib", "lib*.so*"))})))
except Exception:
    pass
PY
)
export LD_LIBRARY_PATH="${wheels:+$wheels:}/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

root=$(cat "$bin/ROOT")
if [ "$root" != "$PWD" ] && [ ! -e "$root" ]; then mkdir -p "$(dirname "$root")" && ln -s "$PWD" "$root"; fi

step() { # name timeout command...
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1
  local rc=$?
  echo "$name: exit $rc in $((SECONDS - t0)) s" | tee -a "$OUT/summary.txt"
}

: > "$OUT/summary.txt"
{ nvidia-smi; echo; echo "lumind commit $(cat "$bin/COMMIT")"; "$py" -c 'import torch; print("torch", torch.__version__, torch.version.cuda)'; echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"; } > "$OUT/machine.txt" 2>&1
step ptx 180 env LUMIND_REQUIRE_NVRTC=1 "$bin/device" --nocapture
step oracle 240 env LUMIND_TEST_BACKENDS=cuda "$bin/oracle" --nocapture --test-threads 1
step train 180 env LUMIND_TEST_BACKENDS=cuda "$bin/oracle_train" --nocapture --test-threads 1
step bench 300 env LUMIND="$bin/lumind" "$py" tools/bench_vs_pytorch.py --device cuda --reps 3 --json "$OUT/bench.json"
cat "$OUT/summary.txt"
