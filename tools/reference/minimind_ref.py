"""Reference models for lumind's oracle fixtures, written from the MiniMind
description (shared/notes/minimind-architecture.md) on top of transformers.

Dense and q/k-norm models are transformers' own LlamaForCausalLM and
Qwen3ForCausalLM. MoE layers replace a layer's `mlp` with `MoEFeedForward`
below, whose parameter names are MiniMind's (`mlp.gate.weight`,
`mlp.experts.{e}.*`, `mlp.shared_experts.{s}.*`).
"""

import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

from model_def import load_def  # noqa: F401 (re-exported for the fixture scripts)


def rope_scaling(d):
    r = d.get("rope_scaling")
    if r is None:
        return None
    out = {"rope_type": r["type"], "factor": r["factor"]}
    if r["type"] == "yarn":
        out["original_max_position_embeddings"] = r["original_max_position_embeddings"]
        out["beta_fast"] = r.get("beta_fast", 32.0)
        out["beta_slow"] = r.get("beta_slow", 1.0)
        if "attention_factor" in r:
            out["attention_factor"] = r["attention_factor"]
    return out


class SwiGLU(nn.Module):
    def __init__(self, h, f):
        super().__init__()
        self.gate_proj = nn.Linear(h, f, bias=False)
        self.up_proj = nn.Linear(h, f, bias=False)
        self.down_proj = nn.Linear(f, h, bias=False)

    def forward(self, x):
        return self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


class MoEFeedForward(nn.Module):
    """Softmax router, top-k routed experts weighted by their (renormalised)
    probabilities, shared experts added. Also keeps the router scores and
    top-k indices of the last call for the auxiliary loss."""

    def __init__(self, h, m):
        super().__init__()
        self.m = m
        self.gate = nn.Linear(h, m["n_routed_experts"], bias=False)
        self.experts = nn.ModuleList([SwiGLU(h, m["moe_intermediate_size"]) for _ in range(m["n_routed_experts"])])
        self.shared_experts = nn.ModuleList([SwiGLU(h, m["moe_intermediate_size"]) for _ in range(m["n_shared_experts"])])

    def forward(self, x):
        m = self.m
        scores = self.gate(x).softmax(dim=-1)
        w, idx = torch.topk(scores, m["num_experts_per_tok"], dim=-1, sorted=False)
        if m["norm_topk_prob"]:
            w = w / (w.sum(dim=-1, keepdim=True) + 1e-20)
        y = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            weight = (w * (idx == e)).sum(dim=-1, keepdim=True)
            y = y + expert(x) * weight
        for s in self.shared_experts:
            y = y + s(x)
        self.last_scores, self.last_idx = scores, idx
        return y


def build(d):
    """A transformers model for a definition (random init; set weights after)."""
    common = dict(
        vocab_size=d["vocab_size"], hidden_size=d["hidden_size"], num_hidden_layers=d["num_hidden_layers"],
        num_attention_heads=d["num_attention_heads"], num_key_value_heads=d["num_key_value_heads"],
        head_dim=d["head_dim"], intermediate_size=d["intermediate_size"], rms_norm_eps=d["rms_norm_eps"],
        rope_theta=d["rope_theta"], rope_scaling=rope_scaling(d), max_position_embeddings=d["max_position_embeddings"],
        tie_word_embeddings=d["tie_word_embeddings"], attention_bias=False, bos_token_id=1, eos_token_id=2,
        pad_token_id=None, attn_implementation="eager",  # MiniMind embeds without a padding_idx
    )
    if d["qk_norm"]:
        model = Qwen3ForCausalLM(Qwen3Config(**common))
    else:
        model = LlamaForCausalLM(LlamaConfig(mlp_bias=False, **common))
    for l, kind in enumerate(d["layer_kinds"]):
        if kind == "moe":
            model.model.layers[l].mlp = MoEFeedForward(d["hidden_size"], d["moe"])
    model.tie_weights()
    return model.eval()


def randomize(model, gen, std=0.2):
    """Large random weights (std 0.2; norms 1 + N(0, 0.1)) so greedy tokens
    change every step."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "layernorm" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(std * torch.randn(p.shape, generator=gen))


def hf_state_dict(model, d):
    """Parameters under Hugging Face names as lumind stores them (a tied head
    is saved once, as the embedding)."""
    sd = {k: v.detach().float().clone().contiguous() for k, v in model.state_dict().items() if "rotary_emb" not in k}
    if d["tie_word_embeddings"]:
        sd.pop("lm_head.weight", None)
    return sd


def moe_aux_loss(model, d):
    """MiniMind2's auxiliary load-balancing loss, summed over MoE layers
    (training only), from the router scores of the last forward."""
    total = torch.zeros(())
    for l, kind in enumerate(d["layer_kinds"]):
        if kind != "moe":
            continue
        mlp = model.model.layers[l].mlp
        m = d["moe"]
        alpha = m["aux_loss_alpha"]
        if alpha <= 0:
            continue
        scores, idx = mlp.last_scores, mlp.last_idx
        bsz, seq, E = scores.shape
        k = m["num_experts_per_tok"]
        if m["seq_aux"]:
            idx_flat = idx.view(bsz, -1)
            ce = torch.zeros(bsz, E)
            ce.scatter_add_(1, idx_flat, torch.ones(bsz, seq * k)).div_(seq * k / E)
            total = total + (ce * scores.mean(dim=1)).sum(dim=1).mean() * alpha
        else:
            mask_ce = nn.functional.one_hot(idx.view(-1), num_classes=E)
            ce = mask_ce.float().mean(0)
            pi = scores.view(-1, E).mean(0)
            fi = ce * E
            total = total + (pi * fi).sum() * alpha
    return total
