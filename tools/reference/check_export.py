"""Check `lumind export` in transformers and write the fixture CI compares
against (tests/fixtures/export/). For each tiny model: export with lumind,
load the directory with AutoModelForCausalLM (trust_remote_code for MoE),
compare its logits with `lumind logits`, and record the exported config and
transformers' logits. Run from the repository root with the reference venv:

    /path/to/venv/bin/python tools/reference/check_export.py
"""
import json
import os
import subprocess
import tempfile

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

LUMIND = os.environ.get("LUMIND", "target/release/lumind")
OUT = "tests/fixtures/export"
MODELS = ["tiny-llama", "tiny-qwen3", "tiny-moe", "tiny-moe3"]
TOKENS = [5, 17, 99, 3, 42, 7, 120, 64]


def main():
    os.makedirs(OUT, exist_ok=True)
    manifest = []
    for name in MODELS:
        weights = f"tests/fixtures/oracle/{name}.safetensors"
        with tempfile.TemporaryDirectory() as tmp:
            d = os.path.join(tmp, "export")
            subprocess.run([LUMIND, "export", "--model", f"models/{name}.toml", "--weights", weights, "--out", d], check=True)
            moe = os.path.exists(os.path.join(d, "modeling_lumind_moe.py"))
            model = AutoModelForCausalLM.from_pretrained(d, trust_remote_code=moe, dtype=torch.float32).eval()
            AutoTokenizer.from_pretrained(d)  # the tokenizer files load too
            with torch.no_grad():
                hf = model(torch.tensor([TOKENS])).logits[0].contiguous()
            lg = os.path.join(tmp, "l.safetensors")
            subprocess.run([LUMIND, "logits", "--model", f"models/{name}.toml", "--weights", weights,
                            "--tokens", ",".join(map(str, TOKENS)), "--out", lg], check=True, capture_output=True)
            ours = load_file(lg)["logits"]
            diff = (hf - ours).abs().max().item()
            assert diff < 1e-4, f"{name}: transformers and lumind disagree by {diff}"
            config = json.load(open(os.path.join(d, "config.json")))
        save_file({"logits": hf}, f"{OUT}/{name}.hf_logits.safetensors")
        manifest.append({"model": f"models/{name}.toml", "weights": weights, "tokens": TOKENS,
                         "hf_logits": f"{OUT}/{name}.hf_logits.safetensors", "config": config,
                         "class": type(model).__name__, "max_abs_diff": diff})
        print(f"{name}: loaded as {type(model).__name__}, max |logits diff| {diff:.2e}")
    with open(f"{OUT}/manifest.json", "w") as f:
        json.dump({"generated_by": "tools/reference/check_export.py", "fixtures": manifest}, f, indent=1)


if __name__ == "__main__":
    main()
