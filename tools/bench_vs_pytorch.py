"""lumind against PyTorch and llama.cpp on the same definition and the same
random weights, in one run: eager PyTorch (tools/reference/torch_minimind.py)
in fp32 and bf16 (bf16 weights for inference, autocast for the training
step) for prefill, a KV-cache decode loop and a training step, transformers'
`generate` where transformers is installed, llama.cpp's `llama-bench` on the
weights exported to GGUF (f32, and bf16, q8_0 and q4_0 by its own
llama-quantize) where a llama.cpp build is present
(tools/build_llama_cpp.sh), and `lumind bench` in fp32, bf16 and q8 (also
with one thread, for decode's scaling), measured in turn for several rounds. Prints the tables
(medians) and the ratios the issues target (the median of each round's
ratio, and their range).

Each PyTorch round runs in a child process that has exited before lumind
starts: PyTorch's OpenMP threads keep spinning after their work, and with
PyTorch loaded in this process they took cores from lumind (lumind's
training step measured 645 tokens/s so, 833 with OMP_WAIT_POLICY=PASSIVE).

    python tools/bench_vs_pytorch.py [--model models/minimind-small-T.toml] [--threads 2] [--rounds 3] [--device cpu|cuda]
                                     [--llama-cpp BUILD_DIR | --no-llama-cpp] [--json OUT]

Needs torch (and a release build of lumind, or LUMIND=path). On the CPU the
reference venv (tools/reference/requirements.txt) has everything; on a GPU
machine torch alone is enough.
"""
import argparse
import copy
import glob
import json
import os
import subprocess
import sys
import tempfile
import time
import tomllib

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "reference"))
import torch_minimind  # noqa: E402

LUMIND = os.environ.get("LUMIND", "target/release/lumind")


def cpu_model():
    """The CPU's model name, as Linux reports it."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown CPU"


def median(xs):
    xs, h = sorted(xs), len(xs) // 2
    return xs[h] if len(xs) % 2 else (xs[h - 1] + xs[h]) / 2


def timed(f, reps, sync):
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        f()
        sync()
        out.append(time.perf_counter() - t)
    return median(out)


def hf_generate_rate(model_toml, weights, ids, device, reps, sync):
    """tokens/s of transformers' greedy `generate`, or None without transformers."""
    try:
        from safetensors.torch import load_file
        from minimind_ref import build, load_def
    except ImportError:
        return None
    model = build(load_def(model_toml))
    model.load_state_dict(load_file(weights), strict=False)
    model.tie_weights()
    model.eval().to(device)
    gen = lambda: model.generate(ids, max_new_tokens=128, min_new_tokens=128, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        gen()
        return 128 / timed(gen, reps, sync)


def torch_round(a, d, model, w, dev, sync):
    """One round of PyTorch measurements: tokens/s per test. Under bf16 the
    inference tests run a bf16 copy of the model, and the training step
    autocasts to bf16 (the f32 master weights and AdamW state kept)."""
    vocab = d["vocab_size"]
    bf16 = a.torch_dtype == "bf16"
    infer = copy.deepcopy(model).to(torch.bfloat16) if bf16 else model
    ids = lambda n, s=1: torch.tensor([[3 + (i * 7919 + s * 104729) % (vocab - 3) for i in range(n)]], device=dev)
    infer.eval()
    res = {}
    with torch.no_grad():
        for n in (64, 256):
            x = ids(n)
            infer(x, last_only=True)
            res[f"pp{n}"] = n / timed(lambda: infer(x, last_only=True), a.reps, sync)
        x = ids(1, 2)

        def decode():
            caches = infer.new_caches()
            tok = infer(x, caches, 0, True).argmax(-1)
            for i in range(1, 128):
                tok = infer(tok, caches, i, True).argmax(-1)
        decode()
        res["tg128 (KV loop)"] = 128 / timed(decode, a.reps, sync)
    hf = None if bf16 else hf_generate_rate(a.model, w, x, dev, a.reps, sync)
    if hf is not None:
        res["tg128 (HF generate)"] = hf
    b, s_len = map(int, a.train.split("x"))
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = torch.cat([ids(s_len, r + 3) for r in range(b)])

    def step():
        with torch.autocast(dev, dtype=torch.bfloat16, enabled=bf16):
            logits = model(batch).float()
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, vocab), batch[:, 1:].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    step()
    sync()
    res[f"train{a.train}"] = b * s_len / timed(step, a.reps, sync)
    return res


def torch_child(a, weights, dtype):
    """One PyTorch round in a child process (see the module comment)."""
    cmd = [sys.executable, os.path.abspath(__file__), "--model", a.model, "--threads", str(a.threads), "--reps", str(a.reps),
           "--train", a.train, "--device", a.device, "--torch-round", weights, "--torch-dtype", dtype]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def lumind_round(a, dev):
    """One run of `lumind bench` (JSON)."""
    fusion = a.fusion or ("none,full" if dev == "cuda" else "none,generic,full,search")
    precision = "fp32" if dev == "cuda" else "fp32,bf16,q8"
    env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads))
    out = subprocess.run([LUMIND, "--threads", str(a.threads), "bench", "--model", a.model, "--train", a.train, "--device", dev,
                          "--fusion", fusion, "--precision", precision, "--reps", str(a.reps), "--json"],
                         check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout)


def lumind_one_thread_decode(a):
    """tokens/s of `lumind bench --tg 128` (full) on one thread."""
    out = subprocess.run([LUMIND, "--threads", "1", "bench", "--model", a.model, "--fusion", "full", "--pp", "8", "--tg", "128",
                          "--reps", str(a.reps), "--json"], check=True, capture_output=True, text=True, env=dict(os.environ, RAYON_NUM_THREADS="1"))
    return next(r["tokens_per_s"] for r in json.loads(out.stdout)["results"] if r["test"] == "tg128")


def llama_cpp_build(a):
    """The llama.cpp build directory to use, or None."""
    if a.no_llama_cpp:
        return None
    if a.llama_cpp:
        return a.llama_cpp
    root = os.environ.get("LUMIND_LLAMA_CPP", os.path.expanduser("~/.cache/lumind/llama.cpp"))
    found = sorted(glob.glob(os.path.join(root, "*", "build", "bin", "llama-bench")))
    return os.path.dirname(os.path.dirname(found[-1])) if found else None


# Run llama.cpp's converter told what the MiniMind tokenizer is: byte-level
# BPE (the converter's Llama class tries SentencePiece first) with GPT-2's
# split pattern (`gpt-2`; the converter does not know its hash).
CONVERT = """
import sys
src = sys.argv.pop(1)
sys.path.insert(0, src)
sys.path.insert(1, src + "/gguf-py")
import conversion.base, conversion.llama
conversion.base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "gpt-2"
conversion.llama.LlamaModel.set_vocab = lambda self: self._set_vocab_gpt2()
import convert_hf_to_gguf
convert_hf_to_gguf.main()
"""


def to_gguf(build, model, weights, tmp):
    """The weights as an f32 GGUF file, through `lumind export` and llama.cpp's converter."""
    hf, gguf = os.path.join(tmp, "hf"), os.path.join(tmp, "model-f32.gguf")
    tokenizer = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "tokenizer")
    subprocess.run([LUMIND, "export", "--model", model, "--weights", weights, "--tokenizer", tokenizer, "--out", hf],
                   check=True, capture_output=True)
    src = os.path.join(os.path.dirname(build.rstrip("/")), "src", "vendor", "llama.cpp")
    out = subprocess.run([sys.executable, "-c", CONVERT, src, hf, "--outtype", "f32", "--outfile", gguf], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"llama.cpp's converter failed:\n{out.stderr[-3000:]}")
    return gguf


def quantized(build, gguf, tmp, kind):
    """The f32 GGUF as `kind` (BF16, Q8_0, Q4_0) by llama.cpp's own `llama-quantize`, or None without it."""
    tool, out = os.path.join(build, "bin", "llama-quantize"), os.path.join(tmp, f"model-{kind}.gguf")
    if not os.path.exists(tool):
        return None
    subprocess.run([tool, gguf, out, kind], check=True, capture_output=True)
    return out


def llama_round(a, build, gguf):
    """One run of llama-bench: tokens/s of pp64, pp256 and tg128."""
    out = subprocess.run([os.path.join(build, "bin", "llama-bench"), "-m", gguf, "-p", "64,256", "-n", "128", "-t", str(a.threads),
                          "-r", str(a.reps), "-o", "json"], check=True, capture_output=True, text=True)
    res = {}
    for r in json.loads(out.stdout):
        test = f"pp{r['n_prompt']}" if r["n_prompt"] else f"tg{r['n_gen']}"
        res[test] = r["avg_ts"]
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="models/minimind-small-T.toml")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3,
                    help="PyTorch and lumind measured in turn this many times; the median of each is reported "
                         "(a shared machine's noise hits both sides alike)")
    ap.add_argument("--train", default="4x256")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--fusion", default=None, help="lumind strategies (default: all on cpu, none,full on cuda)")
    ap.add_argument("--llama-cpp", default=None, help="llama.cpp build directory (default: the newest tools/build_llama_cpp.sh build)")
    ap.add_argument("--no-llama-cpp", action="store_true", help="leave llama.cpp out")
    ap.add_argument("--json", default=None, help="also write the tables here")
    ap.add_argument("--torch-round", default=None, help=argparse.SUPPRESS)  # child: one PyTorch round on these weights
    ap.add_argument("--torch-dtype", default="fp32", help=argparse.SUPPRESS)  # ... in this precision
    a = ap.parse_args()
    dev = a.device
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    if a.torch_round:
        torch.set_num_threads(a.threads)
        d, model = torch_minimind.load(a.model, a.torch_round, dev)
        print(json.dumps(torch_round(a, d, model, a.torch_round, dev, sync)))
        return
    with open(a.model, "rb") as f:
        name = tomllib.load(f)["name"]
    torch_rounds, torch_bf16_rounds, lum_rounds, one_thread = [], [], [], []
    # llama.cpp's rounds per GGUF type
    llama = {"f32": [], "BF16": [], "Q8_0": [], "Q4_0": []}
    build = llama_cpp_build(a) if dev == "cpu" else None
    with tempfile.TemporaryDirectory() as tmp:
        w = os.path.join(tmp, "w.safetensors")
        subprocess.run([LUMIND, "init", "--model", a.model, "--seed", "0", "--out", w], check=True, capture_output=True)
        gguf = to_gguf(build, a.model, w, tmp) if build else None
        files = {"f32": gguf} if gguf else {}
        for kind in ("BF16", "Q8_0", "Q4_0") if gguf else ():
            files[kind] = quantized(build, gguf, tmp, kind)
        for r in range(a.rounds):
            print(f"round {r + 1}/{a.rounds} ...", file=sys.stderr, flush=True)
            torch_rounds.append(torch_child(a, w, "fp32"))
            if dev == "cpu":
                torch_bf16_rounds.append(torch_child(a, w, "bf16"))
            lum_rounds.append(lumind_round(a, dev))
            for kind, f in files.items():
                if f:
                    llama[kind].append(llama_round(a, build, f))
            if dev == "cpu" and a.threads > 1:
                one_thread.append(lumind_one_thread_decode(a))
    llama_rounds, llama_q8_rounds = llama["f32"], llama["Q8_0"]
    torch_res = {k: median([t[k] for t in torch_rounds]) for k in torch_rounds[0]}
    key = lambda r: (r["fusion"], r.get("precision", "fp32"), r["test"])
    lum = dict(lum_rounds[0])
    lum["results"] = [dict(r, tokens_per_s=median([next(x for x in L["results"] if key(x) == key(r))["tokens_per_s"] for L in lum_rounds]))
                      for r in lum_rounds[0]["results"]]
    where = torch.cuda.get_device_name() if dev == "cuda" else f"{cpu_model()}, {a.threads} threads"
    print(f"{name}, {where}, torch {torch.__version__}, median of {a.rounds} rounds")
    if dev == "cpu":
        print(f"memory read bandwidth {lum['read_bandwidth_gbs']:.1f} GB/s, weights {lum['weight_mb']:.1f} MB"
              f" -> decode bound {lum['decode_bound_tokens_per_s']:.1f} tokens/s")
        if lum.get("fma_peak_gflops"):
            print(f"fp32 FMA peak {lum['fma_peak_gflops']:.1f} GFLOP/s ({a.threads} threads)")
    print("\nPyTorch eager (tokens/s):")
    for k, v in torch_res.items():
        print(f"  {k:<22} {v:10.1f}")
    if torch_bf16_rounds:
        print("\nPyTorch eager bf16 (bf16 weights; training autocast to bf16; tokens/s):")
        for k in torch_bf16_rounds[0]:
            print(f"  {k:<22} {median([t[k] for t in torch_bf16_rounds]):10.1f}")
    for kind, rounds in llama.items():
        if rounds:
            print(f"\nllama.cpp {kind} ({build}, tokens/s):")
            for k in rounds[0]:
                print(f"  {k:<22} {median([r[k] for r in rounds]):10.1f}")
    if not llama_rounds and dev == "cpu":
        print("\nllama.cpp: no build found (tools/build_llama_cpp.sh builds one)")
    print("\nlumind (tokens/s):")
    for r in lum["results"]:
        print(f"  {r['fusion']:<8} {r.get('precision', 'fp32'):<5} {r['test']:<13} {r['tokens_per_s']:10.1f}   compile {r['compile_ms']:.1f} ms")

    def rate(L, fusion, test, precision="fp32"):
        return next((r["tokens_per_s"] for r in L["results"] if key(r) == (fusion, precision, test)), None)

    def ratio(test, torch_key, fusion="full", peer=None, precision="fp32"):
        """Median over rounds of lumind / the peer (PyTorch unless given) within a round, and the range."""
        rs = []
        for t, L in zip(peer or torch_rounds, lum_rounds):
            x = rate(L, fusion, test, precision)
            y = t.get(torch_key) if isinstance(torch_key, str) else torch_key(L)
            if x is not None and y:
                rs.append(x / y)
        if not rs:
            return "n/a"
        return f"{median(rs):.2f}x (rounds {min(rs):.2f}-{max(rs):.2f})" if len(rs) > 1 else f"{rs[0]:.2f}x"
    full = {r["test"]: r for r in lum["results"] if key(r)[:2] == ("full", "fp32")}
    none = {r["test"]: r for r in lum["results"] if key(r)[:2] == ("none", "fp32")}
    train = f"train{a.train}"
    print("\nratios (lumind full / PyTorch), targets in brackets:")
    if dev == "cuda":
        print(f"  decode           {full['tg128']['tokens_per_s']:.0f} tokens/s   [>= 2000]")
        print(f"  decode vs HF     {ratio('tg128', 'tg128 (HF generate)') if 'tg128 (HF generate)' in torch_res else 'transformers not installed'}   [>= 5x]")
        print(f"  prefill 256      {ratio('pp256', 'pp256')}   [>= 1x]")
        print(f"  train {a.train}   {ratio(train, train)}   [>= 1x]")
        if none:
            print(f"  decode full/none {full['tg128']['tokens_per_s'] / none['tg128']['tokens_per_s']:.2f}x   [>= 3x over unfused]")
    else:
        print(f"  prefill 256      {ratio('pp256', 'pp256')}   [>= 1.5x]")
        print(f"  decode vs HF     {ratio('tg128', 'tg128 (HF generate)')}   [>= 3x]")
        if llama_rounds:
            print(f"  prefill 256 vs llama.cpp f32  {ratio('pp256', 'pp256', peer=llama_rounds)}   [>= 1.5x]")
            print(f"  decode vs llama.cpp f32       {ratio('tg128', 'tg128', peer=llama_rounds)}   [>= 1.2x]")
        if llama["BF16"]:
            print(f"  bf16: prefill 256 vs llama.cpp bf16  {ratio('pp256', 'pp256', peer=llama['BF16'], precision='bf16')}")
            print(f"  bf16: decode vs llama.cpp bf16       {ratio('tg128', 'tg128', peer=llama['BF16'], precision='bf16')}   [>= 1.2x]")
        if llama_q8_rounds:
            print(f"  q8: prefill 256 vs llama.cpp q8_0  {ratio('pp256', 'pp256', peer=llama_q8_rounds, precision='q8')}")
            print(f"  q8: decode vs llama.cpp q8_0       {ratio('tg128', 'tg128', peer=llama_q8_rounds, precision='q8')}   [>= 1.2x]")
        if torch_bf16_rounds:
            print(f"  bf16: prefill 256 vs PyTorch bf16  {ratio('pp256', 'pp256', peer=torch_bf16_rounds, precision='bf16')}")
            print(f"  bf16: train {a.train} (mixed precision) vs PyTorch bf16 autocast  {ratio(train, train, peer=torch_bf16_rounds, precision='bf16')}   [>= 1.3x]")
        print(f"  bf16 / fp32 train  {ratio(train, lambda L: rate(L, 'full', train), precision='bf16')}   [>= 2x]")
        print(f"  bf16 / fp32 decode  {ratio('tg128', lambda L: rate(L, 'full', 'tg128'), precision='bf16')}")
        print(f"  q8 / fp32 decode  {ratio('tg128', lambda L: rate(L, 'full', 'tg128'), precision='q8')}   [>= 3x]")
        if one_thread:
            two = [rate(L, "full", "tg128") for L in lum_rounds]
            rs = [x / y for x, y in zip(two, one_thread)]
            print(f"  decode {a.threads} threads / 1  {median(rs):.2f}x (rounds {min(rs):.2f}-{max(rs):.2f}; one thread {median(one_thread):.1f} tokens/s)   [>= 1.8x]")
        print(f"  decode vs bound  {full['tg128']['tokens_per_s'] / lum['decode_bound_tokens_per_s']:.0%}    [>= 60%]")
        print(f"  compile          {full['pp256']['compile_ms']:.1f} ms [< 100 ms with a warm search cache]")
        print(f"  train {a.train}   {ratio(train, train)}   [>= 1.3x]")
        if any(r["fusion"] == "search" for r in lum["results"]):
            for test in ("pp256", "tg128", train):
                print(f"  search / full, {test:<10} {ratio(test, lambda L, t=test: rate(L, 'full', t), fusion='search')}")
        pb = (lum.get("prefill_bound_tokens_per_s") or {}).get("pp256")
        if pb:
            # what the 1.5x target asks of this CPU: the fp32 FMA peak over a token's FLOPs bounds any kernel
            print(f"\nprefill 256 bound (fp32 FMA peak {lum['fma_peak_gflops']:.0f} GFLOP/s / FLOPs per token): {pb:.0f} tokens/s;"
                  f" lumind at {full['pp256']['tokens_per_s'] / pb:.0%} of it, PyTorch at {torch_res['pp256'] / pb:.0%},"
                  f" 1.5x PyTorch would be {1.5 * torch_res['pp256'] / pb:.0%}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"device": dev, "where": where, "rounds": a.rounds, "torch": torch_rounds, "torch_bf16": torch_bf16_rounds,
                       "lumind": lum_rounds, "llama_cpp": llama, "lumind_one_thread_tg128": one_thread}, f, indent=1)


if __name__ == "__main__":
    main()
