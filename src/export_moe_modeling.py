"""transformers classes for MoE models exported by lumind: Llama / Qwen3
blocks whose MLP in the layers listed by `config.moe_layers` is MiniMind's
MoE FFN (softmax router, top-k routed experts weighted by their
renormalised probabilities, shared experts added). Loaded with
AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)."""
import torch
from torch import nn
from transformers import LlamaForCausalLM, Qwen3ForCausalLM


class SwiGLU(nn.Module):
    def __init__(self, h, f):
        super().__init__()
        self.gate_proj = nn.Linear(h, f, bias=False)
        self.up_proj = nn.Linear(h, f, bias=False)
        self.down_proj = nn.Linear(f, h, bias=False)

    def forward(self, x):
        return self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


class MoEFeedForward(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.k, self.norm = c.num_experts_per_tok, c.norm_topk_prob
        self.gate = nn.Linear(c.hidden_size, c.n_routed_experts, bias=False)
        self.experts = nn.ModuleList([SwiGLU(c.hidden_size, c.moe_intermediate_size) for _ in range(c.n_routed_experts)])
        self.shared_experts = nn.ModuleList([SwiGLU(c.hidden_size, c.moe_intermediate_size) for _ in range(c.n_shared_experts)])

    def forward(self, x):
        scores = self.gate(x).softmax(dim=-1)
        w, idx = torch.topk(scores, self.k, dim=-1, sorted=False)
        if self.norm:
            w = w / (w.sum(dim=-1, keepdim=True) + 1e-20)
        y = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            y = y + expert(x) * (w * (idx == e)).sum(dim=-1, keepdim=True)
        for s in self.shared_experts:
            y = y + s(x)
        return y


def _with_moe(model, config):
    for l in config.moe_layers:
        model.model.layers[l].mlp = MoEFeedForward(config)


class LumindLlamaMoeForCausalLM(LlamaForCausalLM):
    def __init__(self, config):
        super().__init__(config)
        _with_moe(self, config)
        self.post_init()


class LumindQwen3MoeForCausalLM(Qwen3ForCausalLM):
    def __init__(self, config):
        super().__init__(config)
        _with_moe(self, config)
        self.post_init()
