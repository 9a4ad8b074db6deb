"""Oracle fixtures for the fine-tuning stages (tests/fixtures/stages/), from
transformers, PEFT and PyTorch, on models/tiny-chat.toml (vocab 6400, so the
conversations go through the real tokenizer and chat template):

- SFT: token ids and the assistant-only labels of three conversations
  (multi-turn, with a system turn), MiniMind's masking written again here;
  the loss and every gradient;
- LoRA (PEFT, r=4, alpha=8 on q_proj and o_proj, B started non-zero): the
  loss, the adapter gradients, the merged weights; and an adapter that
  `lumind train` saved, loaded with `PeftModel.from_pretrained`;
- DPO: two pairs, policy != reference; the loss, the margins and every
  policy gradient.

Run from the repository root with the reference venv (and a release build):
    /path/to/venv/bin/python tools/reference/make_stage_fixtures.py
"""
import json
import os
import subprocess
import sys
import tempfile

import torch
import torch.nn.functional as F
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer

sys.path.insert(0, os.path.dirname(__file__))
from minimind_ref import build, hf_state_dict, load_def, randomize  # noqa: E402

OUT = "tests/fixtures/stages"
LUMIND = os.environ.get("LUMIND", "target/release/lumind")


def rows(path, n, skip=0):
    with open(path, encoding="utf-8") as f:
        return [json.loads(l) for l in f.readlines()[skip:skip + n]]


def encode(tok, messages):
    """MiniMind's SFT preprocessing: chat template, then labels only inside
    assistant replies (after `<|im_start|>assistant\\n` up to and including
    `<|im_end|>\\n`)."""
    text = tok.apply_chat_template(messages, tokenize=False)
    ids = tok(text, add_special_tokens=False).input_ids
    bos = tok("<|im_start|>assistant\n", add_special_tokens=False).input_ids
    eos = tok("<|im_end|>\n", add_special_tokens=False).input_ids
    labels = [-100] * len(ids)
    i = 0
    while i < len(ids):
        if ids[i:i + len(bos)] == bos:
            start = i + len(bos)
            end = start
            while end < len(ids):
                if ids[end:end + len(eos)] == eos:
                    break
                end += 1
            for j in range(start, min(end + len(eos), len(ids))):
                labels[j] = ids[j]
            i = end + len(eos) if end < len(ids) else len(ids)
        else:
            i += 1
    return ids, labels


def pad(batch):
    n = max(len(i) for i, _ in batch)
    ids = torch.tensor([i + [0] * (n - len(i)) for i, _ in batch])
    labels = torch.tensor([l + [-100] * (n - len(l)) for _, l in batch])
    return ids, labels


def seq_logp(logits, labels):
    """MiniMind's DPO: log-probabilities of the next tokens, summed where scored."""
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1)
    y = labels[:, 1:]
    mask = (y != -100).float()
    picked = torch.gather(logp, 2, y.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (picked * mask).sum(-1)


def main():
    torch.manual_seed(0)
    os.makedirs(OUT, exist_ok=True)
    tok = AutoTokenizer.from_pretrained("data/tokenizer")
    d = load_def("models/tiny-chat.toml")
    model = build(d)
    randomize(model, torch.Generator().manual_seed(7), std=0.3)
    weights = hf_state_dict(model, d)
    save_file(weights, f"{OUT}/tiny-chat.safetensors", metadata={"format": "pt"})
    manifest = {"model": "models/tiny-chat.toml", "weights": f"{OUT}/tiny-chat.safetensors"}

    # SFT: a two-turn conversation with a system turn, and two single turns
    convs = [r["conversations"] for r in rows("data/sft.jsonl", 400)]
    picked = [next(c for c in convs if c[0]["role"] == "system"), next(c for c in convs if sum(m["role"] == "assistant" for m in c) == 2), convs[0]]
    enc = [encode(tok, c) for c in picked]
    ids, labels = pad(enc)
    model.zero_grad(set_to_none=True)
    loss = model(input_ids=ids, labels=labels).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    grads["loss"] = loss.detach().reshape(())
    save_file(grads, f"{OUT}/sft.grads.safetensors")
    manifest["sft"] = {"conversations": picked, "ids": [e[0] for e in enc], "labels": [e[1] for e in enc], "file": f"{OUT}/sft.grads.safetensors"}
    print(f"sft: loss {loss.item():.6f}, rows {[len(e[0]) for e in enc]}")

    # LoRA with PEFT on the same batch
    base = build(d)
    base.load_state_dict(weights, strict=False)
    base.tie_weights()
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "o_proj"], lora_dropout=0.0, bias="none")
    peft_model = get_peft_model(base, cfg)
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_A" in n:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif "lora_B" in n:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))  # non-zero, so dL/dA is not trivially 0
    adapter_dir = f"{OUT}/lora_adapter"
    peft_model.save_pretrained(adapter_dir)
    loss = peft_model(input_ids=ids, labels=labels).loss
    loss.backward()
    lg = {n.replace(".default", ""): p.grad.clone() for n, p in peft_model.named_parameters() if "lora_" in n}
    lg["loss"] = loss.detach().reshape(())
    save_file(lg, f"{OUT}/lora.grads.safetensors")
    merged = peft_model.merge_and_unload()
    save_file({k: v.contiguous() for k, v in merged.state_dict().items() if ("q_proj" in k or "o_proj" in k)}, f"{OUT}/lora.merged.safetensors")
    manifest["lora"] = {"rank": 4, "alpha": 8, "targets": ["q_proj", "o_proj"], "adapter": adapter_dir,
                        "grads": f"{OUT}/lora.grads.safetensors", "merged": f"{OUT}/lora.merged.safetensors"}
    print(f"lora: loss {loss.item():.6f}, {len(lg) - 1} adapter gradients")

    # an adapter lumind trained and saved, loaded by PEFT
    with tempfile.TemporaryDirectory() as tmp:
        conf = os.path.join(tmp, "lora.toml")
        with open(conf, "w") as f:
            f.write(f'stage = "lora"\nmodel = "models/tiny-chat.toml"\nweights = "{OUT}/tiny-chat.safetensors"\nout = "{tmp}/run"\n'
                    '[data]\ntrain = "data/lora_identity.jsonl"\nmax_seq_len = 64\n[lora]\nrank = 4\nalpha = 8\n'
                    '[optim]\nlearning_rate = 1e-2\nbatch_size = 4\nmax_steps = 3\n')
        subprocess.run([LUMIND, "train", "--config", conf], check=True, capture_output=True)
        base = build(d)
        base.load_state_dict(weights, strict=False)
        base.tie_weights()
        loaded = PeftModel.from_pretrained(base, f"{tmp}/run/adapter").eval()
        toks = ids[:1, :24]
        with torch.no_grad():
            peft_logits = loaded(toks).logits[0]
        lf = os.path.join(tmp, "l.safetensors")
        subprocess.run([LUMIND, "logits", "--model", "models/tiny-chat.toml", "--weights", f"{OUT}/tiny-chat.safetensors",
                        "--adapter", f"{tmp}/run/adapter", "--tokens", ",".join(map(str, toks[0].tolist())), "--out", lf], check=True)
        diff = (load_file(lf)["logits"] - peft_logits).abs().max().item()
        assert diff < 1e-4, f"PEFT and lumind disagree on lumind's adapter by {diff}"
        manifest["lora"]["peft_loads_lumind_adapter"] = {"max_abs_logits_diff": diff,
                                                        "adapter_config": json.load(open(f"{tmp}/run/adapter/adapter_config.json")),
                                                        "tensors": sorted(load_file(f"{tmp}/run/adapter/adapter_model.safetensors").keys())}
        print(f"peft loads lumind's adapter: logits agree to {diff:.2e}")

    # DPO: two pairs, reference != policy
    ref = build(d)
    randomize(ref, torch.Generator().manual_seed(8), std=0.3)
    ref_w = hf_state_dict(ref, d)
    save_file(ref_w, f"{OUT}/tiny-chat.ref.safetensors", metadata={"format": "pt"})
    pairs = rows("data/dpo.jsonl", 2)
    ch = [encode(tok, p["chosen"]) for p in pairs]
    rj = [encode(tok, p["rejected"]) for p in pairs]
    ids, labels = pad(ch + rj)
    beta = 0.1
    model.zero_grad(set_to_none=True)
    pi = seq_logp(model(ids).logits, labels)
    with torch.no_grad():
        rf = seq_logp(ref(ids).logits, labels)
    n = len(pairs)
    logits = (pi[:n] - pi[n:]) - (rf[:n] - rf[n:])
    loss = -F.logsigmoid(beta * logits).mean()
    loss.backward()
    dg = {k: p.grad.clone() for k, p in model.named_parameters()}
    dg["loss"] = loss.detach().reshape(())
    dg["logits"] = logits.detach()
    save_file(dg, f"{OUT}/dpo.grads.safetensors")
    manifest["dpo"] = {"beta": beta, "pairs": pairs, "reference": f"{OUT}/tiny-chat.ref.safetensors", "file": f"{OUT}/dpo.grads.safetensors",
                       "ids": ids.tolist(), "labels": labels.tolist()}
    print(f"dpo: loss {loss.item():.6f}, logits {logits.tolist()}")
    with open(f"{OUT}/manifest.json", "w") as f:
        json.dump({"generated_by": "tools/reference/make_stage_fixtures.py", **manifest}, f, indent=1, ensure_ascii=False)


if __name__ == "__main__":
    main()
