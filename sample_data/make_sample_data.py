"""Build sample_data/ and bench/data/ from Debian's wordnet-base and fortunes packages."""

import csv
import gzip
import json
import random
import re
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

root = Path(sys.argv[1])  # extracted .deb tree
out = Path(sys.argv[2])  # repo root


def wordnet_glosses():
    rows = []
    for pos in ["noun", "verb", "adj", "adv"]:
        for line in open(root / f"usr/share/wordnet/data.{pos}", encoding="latin-1"):
            if line.startswith("  ") or "|" not in line:
                continue
            head, gloss = line.split("|", 1)
            f = head.split()
            word = f[4].replace("_", " ")
            rows.append({"synset": f"{f[0]}.{f[2]}", "word": word, "pos": pos, "text": gloss.strip()})
    return rows


def fortunes():
    texts = []
    for name in [
        "fortunes",
        "wisdom",
        "science",
        "computers",
        "literature",
        "education",
        "work",
        "people",
        "humorists",
        "platitudes",
    ]:
        p = root / "usr/share/games/fortunes" / name
        if not p.exists():
            continue
        for block in p.read_text(encoding="utf-8", errors="replace").split("\n%\n"):
            t = re.sub(r"\s+", " ", block).strip()
            if 20 <= len(t) <= 1500:
                texts.append({"source": name, "text": t})
    return texts


rng = random.Random(1234)
gl = wordnet_glosses()
fo = fortunes()
print(len(gl), "glosses", len(fo), "fortunes")

# sample_data: 300 WordNet glosses
sample = rng.sample(gl, 300)
s = out / "sample_data"
s.mkdir(parents=True, exist_ok=True)
with open(s / "glosses.csv", "w", newline="", encoding="utf-8") as f:
    w = csv.DictWriter(f, fieldnames=["synset", "word", "pos", "text"])
    w.writeheader()
    w.writerows(sample)
# TSV has no quoting: a tab separates fields, a newline ends a record, quotes are text.
with open(s / "glosses.tsv", "w", newline="", encoding="utf-8") as f:
    names = ["synset", "word", "pos", "text"]
    f.write("\t".join(names) + "\n")
    for r in sample:
        f.write("\t".join(r[n] for n in names) + "\n")
with open(s / "glosses.jsonl", "w", encoding="utf-8") as f:
    for r in sample:
        f.write(json.dumps(r) + "\n")
with gzip.open(s / "glosses.jsonl.gz", "wt", encoding="utf-8") as f:
    for r in sample:
        f.write(json.dumps(r) + "\n")
pq.write_table(pa.Table.from_pylist(sample), s / "glosses.parquet", row_group_size=100)
with open(s / "glosses.txt", "w", encoding="utf-8") as f:
    for r in sample:
        f.write(r["text"].replace("\n", " ") + "\n")

# bench corpus: 3000 glosses + 1000 fortunes, shuffled: mixed lengths
b = [{"text": r["text"]} for r in rng.sample(gl, 3000)] + [
    {"text": r["text"]} for r in rng.sample(fo, min(1000, len(fo)))
]
rng.shuffle(b)
(out / "bench/data").mkdir(parents=True, exist_ok=True)
with gzip.open(out / "bench/data/mixed.jsonl.gz", "wt", encoding="utf-8") as f:
    for r in b:
        f.write(json.dumps(r) + "\n")
print(len(b), "bench rows")
