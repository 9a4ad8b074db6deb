"""lumind against transformers/PyTorch on the same definition and the same
random weights, in one run, with the same number of threads. Prints both
tables and the ratios the issue targets.

    /path/to/venv/bin/python tools/bench_vs_pytorch.py [--model models/minimind-small-T.toml] [--threads 2]

Needs the reference venv (tools/reference/requirements.txt) and a release
build of lumind (cargo build --release).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import torch
from safetensors.torch import load_file

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "reference"))
from minimind_ref import build, load_def  # noqa: E402

LUMIND = os.environ.get("LUMIND", "target/release/lumind")


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


def timed(f, reps):
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        f()
        out.append(time.perf_counter() - t)
    return median(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="models/minimind-small-T.toml")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--train", default="4x256")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    d = load_def(a.model)
    with tempfile.TemporaryDirectory() as tmp:
        w = os.path.join(tmp, "w.safetensors")
        subprocess.run([LUMIND, "init", "--model", a.model, "--seed", "0", "--out", w], check=True, capture_output=True)
        model = build(d)
        missing, unexpected = model.load_state_dict(load_file(w), strict=False)
        assert not unexpected and all("lm_head" in k for k in missing), (missing, unexpected)
        model.tie_weights()
    model.eval()
    vocab = d["vocab_size"]
    ids = lambda n, s=1: torch.tensor([[3 + (i * 7919 + s * 104729) % (vocab - 3) for i in range(n)]])
    torch_res = {}
    with torch.no_grad():
        for n in (64, 256):
            x = ids(n)
            model(x, logits_to_keep=1)
            torch_res[f"pp{n}"] = n / timed(lambda: model(x, logits_to_keep=1), a.reps)
        x = ids(1, 2)
        gen = lambda: model.generate(x, max_new_tokens=128, min_new_tokens=128, do_sample=False, pad_token_id=0)
        gen()
        torch_res["tg128 (HF generate)"] = 128 / timed(gen, a.reps)

        def manual():
            out = model(x, use_cache=True)
            past, tok = out.past_key_values, out.logits[:, -1:].argmax(-1)
            for _ in range(127):
                out = model(tok, past_key_values=past, use_cache=True)
                past, tok = out.past_key_values, out.logits[:, -1:].argmax(-1)
        manual()
        torch_res["tg128 (KV loop)"] = 128 / timed(manual, a.reps)
    b, s = map(int, a.train.split("x"))
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = torch.cat([ids(s, r + 3) for r in range(b)])

    def step():
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    step()
    torch_res[f"train{a.train}"] = b * s / timed(step, a.reps)

    env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads))
    out = subprocess.run([LUMIND, "--threads", str(a.threads), "bench", "--model", a.model, "--train", a.train,
                          "--reps", str(a.reps), "--json"], check=True, capture_output=True, text=True, env=env)
    lum = json.loads(out.stdout)
    print(f"{d['name']}, {a.threads} threads, torch {torch.__version__}")
    print(f"memory read bandwidth {lum['read_bandwidth_gbs']:.1f} GB/s, weights {lum['weight_mb']:.1f} MB"
          f" -> decode bound {lum['decode_bound_tokens_per_s']:.1f} tokens/s\n")
    print("PyTorch (tokens/s):")
    for k, v in torch_res.items():
        print(f"  {k:<22} {v:10.1f}")
    print("\nlumind (tokens/s):")
    for r in lum["results"]:
        print(f"  {r['fusion']:<8} {r['test']:<13} {r['tokens_per_s']:10.1f}   compile {r['compile_ms']:.1f} ms")
    full = {r["test"]: r for r in lum["results"] if r["fusion"] == "full"}
    print("\nratios (lumind full / PyTorch), targets in brackets:")
    print(f"  prefill 256      {full['pp256']['tokens_per_s'] / torch_res['pp256']:.2f}x   [>= 1.5x]")
    print(f"  decode vs HF     {full['tg128']['tokens_per_s'] / torch_res['tg128 (HF generate)']:.2f}x   [>= 3x]")
    print(f"  decode vs bound  {full['tg128']['tokens_per_s'] / lum['decode_bound_tokens_per_s']:.0%}    [>= 60%]")
    print(f"  compile          {full['pp256']['compile_ms']:.1f} ms [< 1000 ms]")
    print(f"  train {a.train}   {full['train' + a.train]['tokens_per_s'] / torch_res['train' + a.train]:.2f}x   [>= 1x]")


if __name__ == "__main__":
    main()
