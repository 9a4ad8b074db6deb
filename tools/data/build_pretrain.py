"""Build data/pretrain.jsonl (and data/pretrain_eval.jsonl, 2% held out)
from the public-domain fact tables of the shared MiniMind data set:
Shakespeare's sonnets and speeches, Bierce's Devil's Dictionary, classical
Chinese poems. Python standard library only; deterministic.

    python3 tools/data/build_pretrain.py --facts ../shared/data/facts --out data
"""
import argparse
import json
import random


def rows(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(l) for l in f if l.strip()]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--facts", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=20261128)
    a = ap.parse_args()
    texts = []
    for s in rows(f"{a.facts}/sonnets.jsonl"):
        texts.append(f"Sonnet {s['number']}\n" + "\n".join(s["lines"]))
    for s in rows(f"{a.facts}/shakespeare_speeches.jsonl"):
        texts.append(f"{s['speaker']} ({s['play']}):\n" + "\n".join(s["lines"]))
    for d in rows(f"{a.facts}/devil.jsonl"):
        texts.append(f"{d['word']}, {d['pos']} {d['definition']}")
    for p in rows(f"{a.facts}/poems_zh.jsonl"):
        texts.append(f"《{p['title']}》 {p['author']}\n" + "\n".join(p["lines"]))
    random.Random(a.seed).shuffle(texts)
    n_eval = len(texts) // 50
    for name, part in (("pretrain_eval.jsonl", texts[:n_eval]), ("pretrain.jsonl", texts[n_eval:])):
        with open(f"{a.out}/{name}", "w", encoding="utf-8") as f:
            for t in part:
                f.write(json.dumps({"text": t}, ensure_ascii=False) + "\n")
        print(f"{a.out}/{name}: {len(part)} records")


if __name__ == "__main__":
    main()
