"""Check that llama.cpp runs lumind's GGUF export as lumind does: the same
greedy tokens for the same prompts, at each export type.

    tools/build_llama_cpp.sh                        # once: builds llama.cpp (cached)
    python tools/check_gguf_llama_cpp.py [--model M.toml --weights W.safetensors] [--tokens 32]

For each of f32, bf16 and q8_0 it writes `lumind export --format gguf`, then
for each prompt runs `lumind generate --temperature 0` on the GGUF file and
llama.cpp's `llama-completion --temp 0` on the same file, and compares the
continuations: how many of lumind's first tokens llama.cpp's text repeats.
lumind runs the f32 and bf16 files in fp32 (their values, widened) and the
q8_0 file with `--precision q8`; llama.cpp multiplies bf16 and q8_0 in
those types (with its activations rounded to them), so those rows measure
two implementations of the same precision, and f32 must agree exactly.
Without --weights, the model gets seeded random weights (`lumind init`),
whose near-ties make the low-precision rows disagree sooner than a trained
model's would. Exits non-zero when f32 disagrees on any prompt.
"""
import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
LUMIND = os.environ.get("LUMIND", os.path.join(ROOT, "target", "release", "lumind"))

PROMPTS = [
    "The capital of France is",
    "Once upon a time, there was a",
    "中国的首都是",
    "1, 2, 3, 4,",
    "The quick brown fox",
    "人工智能是",
    "def fibonacci(n):",
    "Water boils at",
]


def byte_decoder():
    """GPT-2's byte-level alphabet inverted: the character a byte-level BPE token uses -> that byte."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    chars, n = {}, 0
    for b in range(256):
        if b in keep:
            chars[chr(b)] = b
        else:
            chars[chr(256 + n)] = b
            n += 1
    return chars


def token_bytes(tokenizer_dir):
    """Each token id's bytes, as llama.cpp prints them (control tokens print nothing)."""
    with open(os.path.join(tokenizer_dir, "tokenizer.json"), encoding="utf-8") as f:
        spec = json.load(f)
    dec = byte_decoder()
    out = {i: bytes(dec[c] for c in t) for t, i in spec["model"]["vocab"].items()}
    for t in spec["added_tokens"]:
        out[t["id"]] = b"" if t["special"] else t["content"].encode()
    return out


def llama_cpp_bin():
    root = os.environ.get("LUMIND_LLAMA_CPP", os.path.expanduser("~/.cache/lumind/llama.cpp"))
    found = sorted(glob.glob(os.path.join(root, "*", "build", "bin", "llama-completion")))
    if not found:
        raise SystemExit("no llama.cpp build with llama-completion: run tools/build_llama_cpp.sh first")
    return found[-1]


def llama_text(binary, gguf, prompt, n, threads):
    # lumind's `generate --prompt` puts a bos token (<|im_start|>) first, as MiniMind's
    # pretraining data does; llama.cpp adds none for this tokenizer, so it is spelled out
    out = subprocess.run([binary, "-m", gguf, "-p", "<|im_start|>" + prompt, "-n", str(n), "--temp", "0", "--ignore-eos", "-no-cnv",
                          "--no-display-prompt", "-c", "512", "-t", str(threads), "--no-warmup"],
                         capture_output=True)
    if out.returncode != 0:
        raise SystemExit(f"llama-completion failed on {gguf}:\n{out.stderr.decode(errors='replace')[-2000:]}")
    # (bytes: llama.cpp prints each token's bytes, which may split a character)
    return out.stdout


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=os.path.join(ROOT, "models", "minimind-small-T.toml"))
    p.add_argument("--weights", help="safetensors weights (default: seeded random ones)")
    p.add_argument("--tokenizer", help="tokenizer directory (default: lumind's built-in MiniMind tokenizer)")
    p.add_argument("--tokens", type=int, default=32, help="greedy tokens per prompt")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--types", default="f32,bf16,q8_0")
    a = p.parse_args()
    binary = llama_cpp_bin()
    pieces = token_bytes(a.tokenizer or os.path.join(ROOT, "data", "tokenizer"))
    with tempfile.TemporaryDirectory() as tmp:
        weights = a.weights
        if not weights:
            weights = os.path.join(tmp, "w.safetensors")
            subprocess.run([LUMIND, "init", "--model", a.model, "--seed", "0", "--out", weights], check=True, capture_output=True)
        failed = False
        print(f"{'type':<6} {'prompts agreeing on all':>24} {'mean leading tokens agreeing':>29}")
        for ty in a.types.split(","):
            gguf = os.path.join(tmp, f"model-{ty}.gguf")
            cmd = [LUMIND, "export", "--model", a.model, "--weights", weights, "--format", "gguf", "--outtype", ty, "--out", gguf]
            if a.tokenizer:
                cmd += ["--tokenizer", a.tokenizer]
            subprocess.run(cmd, check=True, capture_output=True)
            precision = "q8" if ty == "q8_0" else "fp32"
            agree, leading = 0, []
            for prompt in PROMPTS:
                out = subprocess.run([LUMIND, "generate", "--model", a.model, "--weights", gguf, "--precision", precision, "--prompt", prompt,
                                      "--max-new-tokens", str(a.tokens), "--temperature", "0", "--ignore-eos", "--json"]
                                     + (["--tokenizer", a.tokenizer] if a.tokenizer else []),
                                     check=True, capture_output=True, text=True).stdout
                ours = json.loads(next(l for l in out.splitlines() if l.startswith("{")))
                theirs = llama_text(binary, gguf, prompt, a.tokens, a.threads)
                # how many of lumind's tokens llama.cpp's text begins with
                n = 0
                text = b""
                for k, t in enumerate(ours["tokens"]):
                    text += pieces[t]
                    if not theirs.startswith(text):
                        break
                    n = k + 1
                leading.append(n)
                agree += n == len(ours["tokens"])
                if ty == "f32" and n != len(ours["tokens"]):
                    failed = True
                    print(f"  f32 differs on {prompt!r} after {n} tokens:\n    lumind:    {ours['text']!r}\n    llama.cpp: {theirs.decode(errors='replace')!r}")
            print(f"{ty:<6} {f'{agree}/{len(PROMPTS)}':>24} {sum(leading) / len(leading):>26.1f}/{a.tokens}")
        if failed:
            raise SystemExit("llama.cpp and lumind differ on the f32 file")


if __name__ == "__main__":
    main()
