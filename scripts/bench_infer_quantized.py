#!/usr/bin/env python3
"""What a Python user would pick to serve the same checkpoint faster than fp32, on the same texts,
threads and machine as the predictor benchmark: ONNX Runtime fp32 and its dynamic int8
quantization, PyTorch with `quantize_dynamic` int8, and the plain PyTorch fp32 loop they all
start from (bf16 and the `pipeline` are in bench_infer_transformers.py).

All sides compute exactly what the predictor serves (mean pooling over tokens, sigmoid), not what
a plain `AutoModelForSequenceClassification` would (its CLS pooler), so the quality guard means
something: test macro-F1 at the checkpoint's stored per-label thresholds, beside fp32's.
Throughput: length-sorted batches of 32, tokenization included, one pass over the texts.

Prints one line per side: `<side>: <texts/s> texts/s; macro-F1 <f1> (fp32 <f1>, delta <d>)`.
"""
import argparse
import json
import os
import tempfile
import time

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer


class MeanPooled(torch.nn.Module):
    """The predictor's forward pass: encoder, mask-aware mean pooling, classifier, sigmoid. (Mean-pooled
    checkpoints load as this class with trust_remote_code=True too; spelled out here so that CLS-era
    checkpoints and the ONNX export get the same graph.)"""

    def __init__(self, checkpoint, attention="sdpa"):
        super().__init__()
        full = AutoModelForSequenceClassification.from_pretrained(checkpoint, attn_implementation=attention,
                                                                  trust_remote_code=True)
        self.bert, self.classifier = full.bert, full.classifier

    def forward(self, input_ids, attention_mask):
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        m = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * m).sum(1) / m.sum(1).clamp_min(1e-9)
        return torch.sigmoid(self.classifier(pooled))


def macro_f1(probs, gold, thresholds):
    pred = probs >= thresholds[None, :]
    f1s = []
    for j in range(gold.shape[1]):
        tp = np.sum(pred[:, j] & gold[:, j])
        fp = np.sum(pred[:, j] & ~gold[:, j])
        fn = np.sum(~pred[:, j] & gold[:, j])
        f1s.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(np.mean(f1s))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", required=True, help="a version folder (config, weights, tokenizer, manifest.json)")
    ap.add_argument("--texts", required=True, help="test.tsv: text, comma-separated label ids, id")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sides", default="torch-fp32,onnx-fp32,onnx-int8,torch-int8")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    manifest = json.load(open(os.path.join(args.checkpoint, "manifest.json")))
    thresholds = np.array(manifest["thresholds"], dtype=np.float32)
    rows = [line.rstrip("\n").split("\t") for line in open(args.texts, encoding="utf-8")]
    texts = [r[0] for r in rows]
    gold = np.zeros((len(rows), len(thresholds)), dtype=bool)
    for i, r in enumerate(rows):
        for label in r[1].split(","):
            gold[i, int(label)] = True
    tok = AutoTokenizer.from_pretrained(args.checkpoint, trust_remote_code=True)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    batches = [order[s:s + 32] for s in range(0, len(order), 32)]

    def run(score):
        """Scores every text (length-sorted batches of 32, tokenization included); texts/s and probs."""
        probs = np.zeros((len(texts), len(thresholds)), dtype=np.float32)
        start = time.perf_counter()
        for batch in batches:
            enc = tok([texts[i] for i in batch], padding=True, truncation=True,
                      max_length=manifest["max_length"], return_tensors="np")
            probs[batch] = score(enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64))
        return len(texts) / (time.perf_counter() - start), probs

    model = MeanPooled(args.checkpoint).eval()

    def torch_scorer(m):
        def score(ids, mask):
            with torch.inference_mode():
                return m(torch.from_numpy(ids), torch.from_numpy(mask)).float().numpy()
        return score

    fp32_rate, reference = run(torch_scorer(model))
    f1_fp32 = macro_f1(reference, gold, thresholds)

    def report(side, rate, probs):
        f1 = macro_f1(probs, gold, thresholds)
        print(f"{side}: {rate:.1f} texts/s; macro-F1 {f1:.4f} (fp32 {f1_fp32:.4f}, delta {f1 - f1_fp32:+.4f}); "
              f"max |dp| vs fp32 {np.abs(probs - reference).max():.4f}", flush=True)

    sides = args.sides.split(",")
    if "torch-fp32" in sides:
        report("torch-fp32", fp32_rate, reference)
    with tempfile.TemporaryDirectory() as tmp:
        if any(s.startswith("onnx") for s in sides):
            import onnxruntime as ort
            from onnxruntime.quantization import QuantType, quantize_dynamic

            fp32_path, int8_path = os.path.join(tmp, "model.onnx"), os.path.join(tmp, "model.int8.onnx")
            sample = tok(["a sample text"], return_tensors="pt")
            # The TorchScript exporter traces the eager attention (same weights, same function).
            torch.onnx.export(MeanPooled(args.checkpoint, "eager").eval(), (sample["input_ids"], sample["attention_mask"]),
                              fp32_path, dynamo=False,
                              input_names=["input_ids", "attention_mask"], output_names=["probs"], opset_version=17,
                              dynamic_axes={"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"},
                                            "probs": {0: "batch"}})
            quantize_dynamic(fp32_path, int8_path, weight_type=QuantType.QInt8)
            opts = ort.SessionOptions()
            opts.intra_op_num_threads, opts.inter_op_num_threads = args.threads, 1
            for side, path in (("onnx-fp32", fp32_path), ("onnx-int8", int8_path)):
                if side not in sides:
                    continue
                session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
                rate, probs = run(lambda ids, mask: session.run(None, {"input_ids": ids, "attention_mask": mask})[0])
                report(side, rate, probs)
        if "torch-int8" in sides:
            quantized = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
            rate, probs = run(torch_scorer(quantized))
            report("torch-int8", rate, probs)


if __name__ == "__main__":
    main()
