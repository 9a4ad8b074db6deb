"""A dense MiniMind in plain PyTorch (no transformers), for benchmarks on
machines that have torch but not transformers (the GPU machine). Same
parameter names as lumind / Hugging Face, RoPE rotate-half, GQA through
`scaled_dot_product_attention`, SwiGLU, tied head; a KV cache for decoding.
`check` compares its logits with lumind's on the CPU.

    python tools/reference/torch_minimind.py check --model models/tiny-llama.toml
"""
import argparse
import os
import subprocess
import sys
import tempfile

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import model_def  # noqa: E402


def load_def(path):
    d = model_def.load_def(path)
    if set(d["layer_kinds"]) != {"swiglu"} or d["qk_norm"] or d.get("rope_scaling"):
        raise SystemExit(f"{path}: torch_minimind covers dense models without q/k norm or RoPE scaling")
    return d


class RMSNorm(nn.Module):
    def __init__(self, n, eps):
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.ones(n)), eps

    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


def rotate(x, cos, sin):
    a, b = x.chunk(2, -1)
    return x * cos + torch.cat((-b, a), -1) * sin


class Attention(nn.Module):
    def __init__(self, d):
        super().__init__()
        h, hd = d["hidden_size"], d["head_dim"]
        self.nh, self.nkv, self.hd = d["num_attention_heads"], d["num_key_value_heads"], hd
        self.q_proj = nn.Linear(h, self.nh * hd, bias=False)
        self.k_proj = nn.Linear(h, self.nkv * hd, bias=False)
        self.v_proj = nn.Linear(h, self.nkv * hd, bias=False)
        self.o_proj = nn.Linear(self.nh * hd, h, bias=False)

    def forward(self, x, cos, sin, cache):
        b, s, _ = x.shape
        q = self.q_proj(x).view(b, s, self.nh, self.hd).transpose(1, 2)
        k = self.k_proj(x).view(b, s, self.nkv, self.hd).transpose(1, 2)
        v = self.v_proj(x).view(b, s, self.nkv, self.hd).transpose(1, 2)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        if cache is not None:
            if cache[0] is not None:
                k, v = torch.cat((cache[0], k), 2), torch.cat((cache[1], v), 2)
            cache[0], cache[1] = k, v
        rep = self.nh // self.nkv
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=s > 1)
        return self.o_proj(o.transpose(1, 2).reshape(b, s, -1))


class MLP(nn.Module):
    def __init__(self, d):
        super().__init__()
        h, f = d["hidden_size"], d["intermediate_size"]
        self.gate_proj, self.up_proj = nn.Linear(h, f, bias=False), nn.Linear(h, f, bias=False)
        self.down_proj = nn.Linear(f, h, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Layer(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.input_layernorm = RMSNorm(d["hidden_size"], d["rms_norm_eps"])
        self.self_attn = Attention(d)
        self.post_attention_layernorm = RMSNorm(d["hidden_size"], d["rms_norm_eps"])
        self.mlp = MLP(d)

    def forward(self, x, cos, sin, cache):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class Body(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.embed_tokens = nn.Embedding(d["vocab_size"], d["hidden_size"])
        self.layers = nn.ModuleList(Layer(d) for _ in range(d["num_hidden_layers"]))
        self.norm = RMSNorm(d["hidden_size"], d["rms_norm_eps"])


class MiniMind(nn.Module):
    def __init__(self, d, max_positions=4096):
        super().__init__()
        self.model = Body(d)
        self.lm_head = nn.Linear(d["hidden_size"], d["vocab_size"], bias=False)
        if d.get("tie_word_embeddings", True):
            self.lm_head.weight = self.model.embed_tokens.weight
        hd = d["head_dim"]
        inv = 1.0 / (d["rope_theta"] ** (torch.arange(0, hd, 2).float() / hd))
        f = torch.outer(torch.arange(max_positions).float(), inv)
        emb = torch.cat((f, f), -1)
        self.register_buffer("cos", emb.cos(), persistent=False)
        self.register_buffer("sin", emb.sin(), persistent=False)

    def forward(self, ids, caches=None, past=0, last_only=False):
        s = ids.shape[1]
        cos, sin = self.cos[past:past + s], self.sin[past:past + s]
        x = self.model.embed_tokens(ids)
        for i, layer in enumerate(self.model.layers):
            x = layer(x, cos, sin, None if caches is None else caches[i])
        x = self.model.norm(x)
        return self.lm_head(x[:, -1:] if last_only else x)

    def new_caches(self):
        return [[None, None] for _ in self.model.layers]


def load(model_toml, weights, device="cpu"):
    from safetensors.torch import load_file
    d = load_def(model_toml)
    m = MiniMind(d)
    state = load_file(weights)
    missing, unexpected = m.load_state_dict(state, strict=False)
    assert not unexpected and all(k == "lm_head.weight" for k in missing), (missing, unexpected)
    return d, m.to(device)


def check(a):
    lumind = os.environ.get("LUMIND", "target/release/lumind")
    with tempfile.TemporaryDirectory() as tmp:
        w, l = os.path.join(tmp, "w.safetensors"), os.path.join(tmp, "l.safetensors")
        subprocess.run([lumind, "init", "--model", a.model, "--seed", "3", "--out", w], check=True, capture_output=True)
        toks = [3 + (i * 7919) % 100 for i in range(12)]
        subprocess.run([lumind, "logits", "--model", a.model, "--weights", w, "--tokens", ",".join(map(str, toks)), "--out", l],
                       check=True, capture_output=True)
        from safetensors.torch import load_file
        want = load_file(l)["logits"].reshape(len(toks), -1)
        _, m = load(a.model, w)
        with torch.no_grad():
            got = m(torch.tensor([toks]))[0]
            # the KV-cache path gives the same last row
            caches = m.new_caches()
            m(torch.tensor([toks[:-1]]), caches)
            step = m(torch.tensor([toks[-1:]]), caches, past=len(toks) - 1)[0, -1]
    d1, d2 = (got - want).abs().max().item(), (step - want[-1]).abs().max().item()
    print(f"{a.model}: max |torch - lumind| = {d1:.2e} (full), {d2:.2e} (cached decode step)")
    sys.exit(0 if max(d1, d2) < 1e-4 else 1)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check")
    c.add_argument("--model", default="models/tiny-llama.toml")
    a = ap.parse_args()
    check(a)
