"""Read a GGUF file that `lumind export --format gguf` wrote with the `gguf`
package (llama.cpp's own reader) and check it against the safetensors
weights it came from.

    python tools/reference/check_gguf.py model.gguf model.safetensors

Checks: the metadata llama.cpp needs (architecture, sizes, RoPE, the
tokenizer and chat template); every tensor's name, shape and type; and its
values, dequantized by the `gguf` package, against the f32 weights (after
undoing the llama architecture's pairing of q/k rows), within what the
type's rounding allows. Prints one line per type seen and exits non-zero on
the first mismatch. Needs only `gguf` (and numpy): `pip install gguf`.
"""
import json
import struct
import sys

import numpy as np
from gguf import GGUFReader, GGMLQuantizationType
from gguf.quants import dequantize


def safetensors(path):
    """{name: float32 array} of a safetensors file (F32 only, as lumind writes)."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        body = f.read()
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        assert t["dtype"] == "F32", (name, t["dtype"])
        a, b = t["data_offsets"]
        out[name] = np.frombuffer(body[a:b], dtype="<f4").reshape(t["shape"])
    return out


def field(reader, key):
    f = reader.fields.get(key)
    if f is None:
        raise SystemExit(f"missing metadata `{key}`")
    return f.contents()


def unpair(w, heads):
    """llama.cpp's llama rows back to transformers' (the converter's permute, inverted)."""
    rows, cols = w.shape
    hd = rows // heads
    return w.reshape(heads, hd // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


def main():
    gguf_path, weights_path = sys.argv[1], sys.argv[2]
    r = GGUFReader(gguf_path)
    w = safetensors(weights_path)
    arch = field(r, "general.architecture")
    assert arch in ("llama", "qwen3"), arch
    layers = field(r, f"{arch}.block_count")
    heads, kv = field(r, f"{arch}.attention.head_count"), field(r, f"{arch}.attention.head_count_kv")
    hidden = field(r, f"{arch}.embedding_length")
    assert field(r, "tokenizer.ggml.model") == "gpt2"
    assert field(r, "tokenizer.ggml.pre") == "gpt-2"
    tokens = field(r, "tokenizer.ggml.tokens")
    assert len(tokens) == field(r, f"{arch}.vocab_size"), (len(tokens), field(r, f"{arch}.vocab_size"))
    assert len(field(r, "tokenizer.ggml.merges")) > 0
    assert "im_start" in field(r, "tokenizer.chat_template")
    for k in ("bos_token_id", "eos_token_id", "padding_token_id"):
        assert 0 <= field(r, f"tokenizer.ggml.{k}") < len(tokens)
    seen = {}
    names = {t.name for t in r.tensors}
    for l in range(layers):
        for part in ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down"):
            assert f"blk.{l}.{part}.weight" in names, f"blk.{l}.{part}.weight"
    hf = {
        "token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head",
        "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
        "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
        "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
        "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
    }
    for t in r.tensors:
        parts = t.name.split(".")
        if parts[0] == "blk":
            name = f"model.layers.{parts[1]}.{hf[parts[2]]}.weight"
        else:
            name = f"{hf[parts[0]]}.weight"
        want = w[name]
        # the reader gives shapes innermost first, as the file stores them
        assert list(reversed([int(d) for d in t.shape])) == list(want.shape), (t.name, t.shape, want.shape)
        got = dequantize(t.data, t.tensor_type).astype(np.float32).reshape(want.shape)
        if arch == "llama" and parts[-2] in ("attn_q", "attn_k"):
            got = unpair(got, heads if parts[-2] == "attn_q" else kv)
        ty = GGMLQuantizationType(t.tensor_type)
        if want.ndim == 1:
            assert ty == GGMLQuantizationType.F32, (t.name, ty)
        err = np.abs(got - want)
        scale = np.abs(want)
        if ty == GGMLQuantizationType.F32:
            ok = err.max() == 0
        elif ty == GGMLQuantizationType.F16:
            ok = (err <= scale / 2048 + 6e-8).all()
        elif ty == GGMLQuantizationType.BF16:
            ok = (err <= scale / 256).all()
        elif ty == GGMLQuantizationType.Q8_0:
            # within half a step of its block's max / 127, and the f16 scale's rounding
            blocks = np.abs(want).reshape(-1, 32).max(axis=1, keepdims=True)
            ok = (err.reshape(-1, 32) <= 0.6 * blocks / 127 + 1e-7).all()
        else:
            raise SystemExit(f"{t.name}: unexpected type {ty.name}")
        if not ok:
            raise SystemExit(f"{t.name} ({ty.name}): values differ from {name} by up to {err.max()}")
        seen[ty.name] = seen.get(ty.name, 0) + 1
    assert hidden == w["model.embed_tokens.weight"].shape[1]
    print(f"{gguf_path}: {arch}, {layers} layers, {len(tokens)} tokens; tensors by type: {seen}; all match {weights_path}")


if __name__ == "__main__":
    main()
