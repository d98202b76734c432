#!/usr/bin/env python3
"""Writes GoEmotions relabelled as other label sets, as data folders the trainer reads (JSON Lines):

    python3 scripts/relabel_goemotions.py GOEMOTIONS_DIR OUT_DIR

  OUT_DIR/ekman/        multi-label, Ekman's 6 emotions + neutral: a text carries each group any of its labels is in
  OUT_DIR/single28/     single-label, the 28 labels: only the texts with exactly one label
  OUT_DIR/sentiment4/   single-label, positive / negative / ambiguous / neutral: texts whose labels fall in one

Each keeps the official train / dev / test split of every text it keeps and prints how many it kept.
Standard library only.
"""
import json
import os
import sys


def read_split(path):
    with open(path, encoding="utf-8") as f:
        for line in f:
            text, ids, example_id = line.rstrip("\n").split("\t")
            yield text, [int(i) for i in ids.split(",")], example_id


def groups_of(mapping_path, names):
    with open(mapping_path, encoding="utf-8") as f:
        mapping = json.load(f)
    group = {}
    for g, members in mapping.items():
        for m in members:
            group[names.index(m)] = g
    group[names.index("neutral")] = "neutral"
    return group, sorted(set(mapping) | {"neutral"})


def write(out_dir, labels, examples_by_split):
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "labels.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(labels) + "\n")
    for split, examples in examples_by_split.items():
        with open(os.path.join(out_dir, f"{split}.jsonl"), "w", encoding="utf-8") as f:
            for text, label_names, example_id in examples:
                f.write(json.dumps({"text": text, "labels": label_names, "id": example_id}) + "\n")
    sizes = ", ".join(f"{s} {len(e)}" for s, e in examples_by_split.items())
    print(f"{out_dir}: {len(labels)} labels; {sizes}")


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    src, out = sys.argv[1], sys.argv[2]
    with open(os.path.join(src, "emotions.txt"), encoding="utf-8") as f:
        names = [line.strip() for line in f if line.strip()]
    ekman, ekman_labels = groups_of(os.path.join(src, "ekman_mapping.json"), names)
    sentiment, sentiment_labels = groups_of(os.path.join(src, "sentiment_dict.json"), names)
    splits = {s: list(read_split(os.path.join(src, f"{s}.tsv"))) for s in ("train", "dev", "test")}

    write(os.path.join(out, "ekman"), ekman_labels, {
        s: [(t, sorted({ekman[i] for i in ids}), e) for t, ids, e in ex] for s, ex in splits.items()
    })
    write(os.path.join(out, "single28"), names, {
        s: [(t, [names[ids[0]]], e) for t, ids, e in ex if len(ids) == 1] for s, ex in splits.items()
    })
    write(os.path.join(out, "sentiment4"), sentiment_labels, {
        s: [(t, [sentiment[ids[0]]], e) for t, ids, e in ex if len({sentiment[i] for i in ids}) == 1]
        for s, ex in splits.items()
    })


if __name__ == "__main__":
    main()
