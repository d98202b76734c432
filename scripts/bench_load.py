#!/usr/bin/env python3
"""Helpers for scripts/bench-load.sh.

  bench_load.py texts CHECKPOINT TEST_TSV OUT_DIR   writes short.txt, median.txt, long.txt (one text per line)
  bench_load.py report RESULTS_JSONL OUT_DIR         prints markdown tables, writes load.svg and results.json

Text classes, by token count with the checkpoint's tokenizer ([CLS] and [SEP] included): short (at most 12
tokens), median (within 2 tokens of the test split's median), long (test texts joined until they pass 128
tokens, so every one is truncated to the 128-token limit).
"""
import json
import statistics
import sys


def make_texts(checkpoint, test_tsv, out_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(checkpoint, trust_remote_code=True)
    texts = [line.split("\t")[0] for line in open(test_tsv, encoding="utf-8")]
    lengths = [len(ids) for ids in tok(texts, truncation=True, max_length=128)["input_ids"]]
    median = statistics.median(lengths)
    short = [t for t, n in zip(texts, lengths) if n <= 12]
    middle = [t for t, n in zip(texts, lengths) if abs(n - median) <= 2]
    long, current = [], []
    for t in texts:
        current.append(t)
        if len(tok(" ".join(current))["input_ids"]) > 128:
            long.append(" ".join(current))
            current = []
    for name, chosen in (("short", short), ("median", middle), ("long", long)):
        with open(f"{out_dir}/{name}.txt", "w", encoding="utf-8") as f:
            f.writelines(t.replace("\n", " ") + "\n" for t in chosen)
    print(f"median test text: {median:.0f} tokens; short {len(short)}, median {len(middle)}, long {len(long)} texts")


COLORS = {"fp32": "#1f77b4", "bf16": "#d62728"}


def chart(x0, title, xlabels, series, ylabel, width=300, height=220):
    """One line chart at horizontal offset x0: categorical x axis, series = {name: [y or None]}."""
    values = [v for ys in series.values() for v in ys if v is not None]
    top = max(values) * 1.1 if values else 1.0
    left, bottom = x0 + 50, 40 + height
    out = [f'<text x="{x0 + 50 + width / 2}" y="22" text-anchor="middle" font-weight="bold">{title}</text>',
           f'<line x1="{left}" y1="{bottom}" x2="{left + width}" y2="{bottom}" stroke="black"/>',
           f'<line x1="{left}" y1="40" x2="{left}" y2="{bottom}" stroke="black"/>',
           f'<text x="{x0 + 12}" y="{40 + height / 2}" transform="rotate(-90 {x0 + 12} {40 + height / 2})" '
           f'text-anchor="middle" font-size="11">{ylabel}</text>']
    for i in range(5):
        v = top * i / 4
        y = bottom - height * i / 4
        out.append(f'<line x1="{left - 4}" y1="{y}" x2="{left + width}" y2="{y}" stroke="#ddd"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4}" text-anchor="end" font-size="10">{v:.0f}</text>')
    step = width / max(1, len(xlabels) - 1) if len(xlabels) > 1 else 0
    xs = [left + (step * i if len(xlabels) > 1 else width / 2) for i in range(len(xlabels))]
    for x, label in zip(xs, xlabels):
        out.append(f'<text x="{x}" y="{bottom + 16}" text-anchor="middle" font-size="10">{label}</text>')
    for k, (name, ys) in enumerate(series.items()):
        color = COLORS.get(name.split()[0], "#2ca02c")
        dash = ' stroke-dasharray="4 3"' if "p50" in name else ""
        points = [(x, bottom - height * y / top) for x, y in zip(xs, ys) if y is not None]
        out.append(f'<polyline fill="none" stroke="{color}" stroke-width="2"{dash} '
                   f'points="{" ".join(f"{x:.1f},{y:.1f}" for x, y in points)}"/>')
        out += [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{color}"/>' for x, y in points]
        out.append(f'<text x="{left + 8}" y="{52 + 14 * k}" font-size="11" fill="{color}">{name}</text>')
    return out


def report(results_jsonl, out_dir):
    rows = [json.loads(line) for line in open(results_jsonl)]
    precisions = sorted({r["precision"] for r in rows}, key=lambda p: ["fp32", "bf16"].index(p) if p in ("fp32", "bf16") else 9)
    streams = sorted({r["streams"] for r in rows if r["kind"] == "streams"})
    classes = ["short", "median", "long"]

    def pick(kind, precision, key, **match):
        found = [r for r in rows if r["kind"] == kind and r["precision"] == precision
                 and all(r.get(k) == v for k, v in match.items())]
        return found[0][key] if found else None

    print("### Throughput and latency against concurrent streams (each stream one text in flight)\n")
    print("| streams | " + " | ".join(f"{p} texts/s | {p} p50 ms | {p} p99 ms" for p in precisions) + " |")
    print("|---:|" + "---:|---:|---:|" * len(precisions))
    for n in streams:
        cells = []
        for p in precisions:
            cells += [pick("streams", p, k, streams=n) for k in ("texts_per_second", "p50_ms", "p99_ms")]
        print(f"| {n} | " + " | ".join("–" if c is None else f"{c:.1f}" for c in cells) + " |")
    print("\n### Against text length (8 streams, each one text in flight)\n")
    print("| texts | " + " | ".join(f"{p} texts/s | {p} p99 ms" for p in precisions) + " |")
    print("|---|" + "---:|---:|" * len(precisions))
    for c in classes:
        cells = []
        for p in precisions:
            cells += [pick("length", p, k, texts=c) for k in ("texts_per_second", "p99_ms")]
        print(f"| {c} | " + " | ".join("–" if x is None else f"{x:.1f}" for x in cells) + " |")
    print("\n### Cold start (process start to answering GetModelInfo) and peak RSS\n")
    print("| precision | from disk, s (median of runs) | from S3 (s3s-fs on loopback), s | peak RSS under load |")
    print("|---|---:|---:|---:|")
    for p in precisions:
        cold = {}
        for source in ("disk", "s3"):
            v = [r["seconds"] for r in rows if r["kind"] == "cold" and r["precision"] == p and r["source"] == source]
            cold[source] = f"{statistics.median(v):.2f} ({min(v):.2f}–{max(v):.2f})" if v else "–"
        rss = [r["peak_rss_kb"] for r in rows if r["precision"] == p and r.get("peak_rss_kb")]
        print(f"| {p} | {cold['disk']} | {cold['s3']} | {max(rss) / 1024:.0f} MB |" if rss else f"| {p} | {cold['disk']} | {cold['s3']} | – |")

    parts = []
    parts += chart(0, "Throughput vs streams", [str(n) for n in streams],
                   {f"{p}": [pick("streams", p, "texts_per_second", streams=n) for n in streams] for p in precisions},
                   "texts/s")
    lat = {}
    for p in precisions:
        lat[f"{p} p99"] = [pick("streams", p, "p99_ms", streams=n) for n in streams]
        lat[f"{p} p50"] = [pick("streams", p, "p50_ms", streams=n) for n in streams]
    parts += chart(380, "Latency vs streams", [str(n) for n in streams], lat, "ms")
    parts += chart(760, "Throughput vs text length (8 streams)", classes,
                   {p: [pick("length", p, "texts_per_second", texts=c) for c in classes] for p in precisions}, "texts/s")
    svg = ('<svg xmlns="http://www.w3.org/2000/svg" width="1120" height="300" font-family="sans-serif">'
           '<rect width="100%" height="100%" fill="white"/>' + "".join(parts) + "</svg>\n")
    open(f"{out_dir}/load.svg", "w").write(svg)
    json.dump(rows, open(f"{out_dir}/results.json", "w"), indent=1)
    print(f"\n(plot: {out_dir}/load.svg)")


if __name__ == "__main__":
    if sys.argv[1] == "texts":
        make_texts(*sys.argv[2:5])
    elif sys.argv[1] == "report":
        report(*sys.argv[2:4])
    else:
        sys.exit(__doc__)
