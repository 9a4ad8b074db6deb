"""Write lumind's oracle fixtures (tests/fixtures/oracle/) from transformers.

For each tiny test model: random weights (std 0.2), the logits of a token
sequence, greedy continuations with and without transformers' KV cache, the
training loss (cross-entropy with ignored labels, plus the MoE auxiliary
loss) and every parameter's gradient on a padded batch, and for two models
the first steps of a MiniMind-style AdamW run (accumulation, clipping,
cosine schedule).
Run from the repository root:

    /path/to/venv/bin/python tools/reference/make_fixtures.py

Pinned versions: tools/reference/requirements.txt. CI only reads the files.
"""
import json
import os
import sys

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(__file__))
from minimind_ref import build, hf_state_dict, load_def, moe_aux_loss, randomize  # noqa: E402

OUT = "tests/fixtures/oracle"
# (definition, weights taken from another fixture or None)
MODELS = [
    ("tiny-llama", None),
    ("tiny-llama-linear", "tiny-llama"),
    ("tiny-llama-yarn", "tiny-llama"),
    ("tiny-qwen3", None),
    ("tiny-moe", None),
    ("tiny-moe3", None),
]
SEQ = 12
PROMPT = 4
NEW = 16


def greedy_cached(model, prompt, n):
    out, past = [], None
    ids = torch.tensor([prompt])
    gaps = []
    with torch.no_grad():
        for _ in range(n):
            r = model(input_ids=ids, past_key_values=past, use_cache=True)
            past = r.past_key_values
            logits = r.logits[0, -1]
            top = torch.topk(logits, 2).values
            gaps.append(float(top[0] - top[1]))
            t = int(logits.argmax())
            out.append(t)
            ids = torch.tensor([[t]])
    return out, min(gaps)


def greedy_full(model, prompt, n):
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            seq.append(int(model(input_ids=torch.tensor([seq])).logits[0, -1].argmax()))
    return seq[len(prompt):]


def training_batch(gen, vocab, rows, seq, pad_last=3):
    """`rows` sequences of `seq` ids; the last row ends in `pad_last` pads
    (id 0) whose labels are -100, as MiniMind's pretraining data."""
    ids = torch.randint(3, vocab, (rows, seq), generator=gen)
    labels = ids.clone()
    if pad_last:
        ids[-1, -pad_last:] = 0
        labels[-1, -pad_last:] = -100
    return ids, labels


def lm_loss(model, d, ids, labels):
    out = model(input_ids=ids, labels=labels)
    aux = moe_aux_loss(model, d)
    return out.loss + aux, out.loss, aux


def get_lr(step, total, lr):
    """MiniMind's schedule (trainer_utils.get_lr), step counted from 1."""
    import math
    return lr * (0.1 + 0.45 * (1 + math.cos(math.pi * step / total)))


def adamw_run(model, d, batches, accum, lr):
    """MiniMind's loop: lr set every micro-step, loss / accum, clip 1.0 and
    AdamW step every `accum` micro-steps."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = []
    total = len(batches)
    for step, (ids, labels) in enumerate(batches, start=1):
        for g in opt.param_groups:
            g["lr"] = get_lr(step, total, lr)
        loss, _, _ = lm_loss(model, d, ids, labels)
        losses.append(loss.item())
        (loss / accum).backward()
        if step % accum == 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
    return losses


def main():
    torch.manual_seed(0)
    os.makedirs(OUT, exist_ok=True)
    manifest = []
    weights = {}
    for i, (name, weights_from) in enumerate(MODELS):
        d = load_def(f"models/{name}.toml")
        model = build(d)
        if weights_from is None:
            gen = torch.Generator().manual_seed(1000 + i)
            randomize(model, gen)
            sd = hf_state_dict(model, d)
            path = f"{OUT}/{name}.safetensors"
            save_file(sd, path, metadata={"format": "pt"})
            weights[name] = (path, sd)
        else:
            path, sd = weights[weights_from]
            missing, unexpected = model.load_state_dict(sd, strict=False)
            assert not unexpected and all("lm_head" in k for k in missing), (missing, unexpected)
            model.tie_weights()
        gen = torch.Generator().manual_seed(2000 + i)
        tokens = torch.randint(3, d["vocab_size"], (SEQ,), generator=gen).tolist()
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([tokens])).logits[0].float().contiguous()
        save_file({"logits": logits}, f"{OUT}/{name}.logits.safetensors")
        greedy, gap = greedy_cached(model, tokens[:PROMPT], NEW)
        assert greedy == greedy_full(model, tokens[:PROMPT], NEW), name
        assert gap > 1e-3, f"{name}: greedy top-2 gap {gap} too small to compare reliably"
        manifest.append({
            "model": f"models/{name}.toml",
            "weights": path,
            "logits": f"{OUT}/{name}.logits.safetensors",
            "tokens": tokens,
            "prompt": tokens[:PROMPT],
            "greedy": greedy,
            "min_top2_gap": gap,
            "max_abs_logit": float(logits.abs().max()),
        })
        entry = manifest[-1]
        if weights_from is None:
            # loss and gradients on a padded batch of two rows
            ids, labels = training_batch(gen, d["vocab_size"], 2, 10)
            model.zero_grad(set_to_none=True)
            model.train()
            loss, ce, aux = lm_loss(model, d, ids, labels)
            loss.backward()
            grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
            grads.update({"loss": loss.detach().reshape(()), "ce": ce.detach().reshape(()), "aux": aux.detach().reshape(())})
            save_file(grads, f"{OUT}/{name}.grads.safetensors")
            entry["grad_batch"] = {"ids": ids.tolist(), "labels": labels.tolist(), "file": f"{OUT}/{name}.grads.safetensors"}
            model.zero_grad(set_to_none=True)
        if name in ("tiny-llama", "tiny-moe"):
            # six micro-steps, accumulation 2 -> three AdamW steps
            batches = [training_batch(gen, d["vocab_size"], 2, 8) for _ in range(6)]
            losses = adamw_run(model, d, batches, accum=2, lr=1e-2)
            final = hf_state_dict(model, d)
            final["losses"] = torch.tensor(losses)
            save_file(final, f"{OUT}/{name}.adamw.safetensors")
            entry["adamw"] = {"accum": 2, "lr": 1e-2, "batches": [{"ids": i.tolist(), "labels": l.tolist()} for i, l in batches],
                              "file": f"{OUT}/{name}.adamw.safetensors", "losses": losses}
        model.eval()
        print(f"{name}: max |logit| {logits.abs().max():.2f}, greedy {greedy}, min top-2 gap {gap:.4f}")
    with open(f"{OUT}/manifest.json", "w") as f:
        json.dump({"generated_by": "tools/reference/make_fixtures.py", "torch": torch.__version__,
                   "transformers": __import__("transformers").__version__, "fixtures": manifest}, f, indent=1)


if __name__ == "__main__":
    main()
