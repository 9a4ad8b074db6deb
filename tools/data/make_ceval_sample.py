"""A small multiple-choice set in C-Eval's CSV format (id,question,A,B,C,D,answer),
made from the public-domain fact tables (C-Eval itself cannot be downloaded
here). One file per subject, 20 questions each; deterministic.

    python3 tools/data/make_ceval_sample.py --facts ../shared/data/facts --out data/ceval
"""
import argparse
import csv
import json
import random


def rows(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(l) for l in f if l.strip()]


def write(path, items):
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "question", "A", "B", "C", "D", "answer"])
        for i, (q, opts, ans) in enumerate(items):
            w.writerow([i, q, *opts, "ABCD"[ans]])


def choices(rng, right, pool):
    wrong = rng.sample([p for p in pool if p != right], 3)
    opts = wrong + [right]
    rng.shuffle(opts)
    return opts, opts.index(right)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--facts", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    rng = random.Random(20261128)
    poems = rows(f"{a.facts}/poems_zh.jsonl")
    authors = sorted({p["author"] for p in poems})
    items = []
    for p in rng.sample(poems, 20):
        opts, ans = choices(rng, p["author"], authors)
        items.append((f"《{p['title']}》的作者是谁？", opts, ans))
    write(f"{a.out}/chinese_poetry_val.csv", items)
    speeches = rows(f"{a.facts}/shakespeare_speeches.jsonl")
    plays = sorted({s["play"] for s in speeches})
    items = []
    for s in rng.sample(speeches, 20):
        opts, ans = choices(rng, s["play"], plays)
        items.append((f"Which play is this line from? \"{s['lines'][0]}\"", opts, ans))
    write(f"{a.out}/shakespeare_val.csv", items)
    items = []
    for _ in range(20):
        x, y = rng.randint(10, 99), rng.randint(10, 99)
        right = x + y
        opts = [right, right + rng.choice([1, 2, 10]), right - rng.choice([1, 2, 10]), right + 11]
        rng.shuffle(opts)
        items.append((f"{x} + {y} = ?", [str(o) for o in opts], opts.index(right)))
    write(f"{a.out}/arithmetic_val.csv", items)


if __name__ == "__main__":
    main()
