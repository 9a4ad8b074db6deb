"""lumind's models/*.toml definitions read in Python, with defaults resolved
as lumind resolves them. No torch or transformers, so every reference and
benchmark script can use it.
"""
import math
import tomllib


def ffn_rule(rule, h):
    if rule == "minimind3":
        return math.ceil(h * math.pi / 64) * 64
    return 64 * math.ceil(int(h * 8 / 3) / 64)


def load_def(path):
    """A models/*.toml definition with defaults resolved (as lumind does)."""
    with open(path, "rb") as f:
        d = tomllib.load(f)
    d.setdefault("num_key_value_heads", d["num_attention_heads"])
    d.setdefault("head_dim", d["hidden_size"] // d["num_attention_heads"])
    if "intermediate_size" not in d:
        d["intermediate_size"] = ffn_rule(d.get("intermediate_rule", "minimind2"), d["hidden_size"])
    d.setdefault("tie_word_embeddings", True)
    d.setdefault("qk_norm", False)
    d.setdefault("ffn", "swiglu")
    kinds = [d["ffn"]] * d["num_hidden_layers"]
    for o in d.get("layer", []):
        for l in o["layers"]:
            if "ffn" in o:
                kinds[l] = o["ffn"]
    d["layer_kinds"] = kinds
    if "moe" in d:
        m = d["moe"]
        m.setdefault("n_shared_experts", 0)
        m.setdefault("norm_topk_prob", True)
        m.setdefault("aux_loss_alpha", 0.01)
        m.setdefault("seq_aux", True)
        m.setdefault("moe_intermediate_size", d["intermediate_size"])
    return d
