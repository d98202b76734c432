#!/usr/bin/env python3
"""Python reference for the training benchmark, built to match `trainer bench` step for step:
`transformers` BertModel + masked mean pooling + dropout + linear head (the trainer's model),
BCE-with-logits on multi-hot targets, AdamW (weight decay 0.01, none on biases/LayerNorm),
gradient clipping 1.0, constant learning rate.

Batching: --batches FILE replays exactly the batches `trainer bench --write-batches` took (the
fair comparison); otherwise --batching `bucketed` is the trainer's sampler (trainer/src/batches.rs: shuffle,
pools of 50 batches sorted by length, batches shuffled; what `group_by_length=True` does in the
transformers Trainer), `plain` is shuffled batches with dynamic padding. Texts are tokenized
before the timed loop, as the trainer does. --precision bf16 runs the forward under
torch.autocast(bfloat16) with fp32 master weights, like the trainer's bf16.

Prints one line per timed window (--repeats, default 1): samples/s, real (unpadded) tokens/s and
padded tokens/s over --steps steps, after 3 untimed warm-up steps; each window replays the same
batches, so repeats in one process measure the same work without paying start-up again.
"""
import argparse
import random
import time

import torch
from transformers import AutoModel, AutoTokenizer

POOL_BATCHES = 50
WARMUP = 3


def batches(lengths, batch_size, seed, bucketed):
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if not bucketed:
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    out = []
    pool = batch_size * POOL_BATCHES
    for start in range(0, len(order), pool):
        chunk = sorted(order[start:start + pool], key=lambda i: lengths[i])
        out.extend(chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(out)
    return out


class MeanPooled(torch.nn.Module):
    def __init__(self, path, num_labels):
        super().__init__()
        self.bert = AutoModel.from_pretrained(path, torch_dtype=torch.float32, add_pooling_layer=False)
        hidden = self.bert.config.hidden_size
        self.dropout = torch.nn.Dropout(self.bert.config.hidden_dropout_prob)
        self.classifier = torch.nn.Linear(hidden, num_labels)
        torch.nn.init.normal_(self.classifier.weight, std=0.02)
        torch.nn.init.zeros_(self.classifier.bias)

    def forward(self, input_ids, attention_mask):
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
        return self.classifier(self.dropout(pooled))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True, help="train.tsv")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--batching", choices=["bucketed", "plain"], default="bucketed")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--repeats", type=int, default=1, help="timed windows of --steps steps (same batches each)")
    ap.add_argument("--batches", help="JSON batches (train.tsv line indices, warm-up first) from `trainer bench --write-batches`: run exactly these")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    if device.type == "cuda" and args.precision == "fp32":
        torch.backends.cuda.matmul.allow_tf32 = True  # as the trainer allows in fp32 mode

    rows = [line.rstrip("\n").split("\t") for line in open(args.data, encoding="utf-8")]
    tok = AutoTokenizer.from_pretrained(args.model)
    encoded = tok([r[0] for r in rows], truncation=True, max_length=args.max_length)["input_ids"]
    lengths = [len(ids) for ids in encoded]
    targets = torch.zeros(len(rows), 28)
    for i, r in enumerate(rows):
        for lab in r[1].split(","):
            targets[i, int(lab)] = 1.0

    model = MeanPooled(args.model, 28).to(device)
    model.train()
    decay = [p for n, p in model.named_parameters() if not (n.endswith("bias") or "LayerNorm" in n)]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias") or "LayerNorm" in n]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}], lr=args.lr
    )
    loss_fn = torch.nn.BCEWithLogitsLoss()
    if args.batches:
        import json

        order = json.load(open(args.batches))
    else:
        order = batches(lengths, args.batch_size, args.seed, args.batching == "bucketed")
    pad = tok.pad_token_id or 0

    def padded(batch):
        longest = max(lengths[i] for i in batch)
        ids = torch.full((len(batch), longest), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), longest), dtype=torch.long)
        for row, i in enumerate(batch):
            ids[row, : lengths[i]] = torch.tensor(encoded[i])
            mask[row, : lengths[i]] = 1
        return ids, mask, longest

    def run(steps):
        for step in range(steps):
            batch = order[step % len(order)]
            ids, mask, longest = padded(batch)
            ids, mask = ids.to(device, non_blocking=True), mask.to(device, non_blocking=True)
            y = targets[batch].to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16"):
                logits = model(ids, mask)
            loss = loss_fn(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            yield batch, longest

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in run(WARMUP):
        pass
    # Warm-up took the first batches (the trainer's batch file starts with its own warm-up ones);
    # every timed window replays the ones after them.
    order = order[WARMUP:]
    for _ in range(args.repeats):
        sync()
        start, samples, real, padded_tokens = time.perf_counter(), 0, 0, 0
        for batch, longest in run(args.steps):
            samples += len(batch)
            real += sum(lengths[i] for i in batch)
            padded_tokens += longest * len(batch)
        sync()
        elapsed = time.perf_counter() - start
        print(
            f"python-transformers train: {samples / elapsed:.1f} samples/s, {real / elapsed:.0f} real tokens/s, "
            f"{padded_tokens / elapsed:.0f} padded tokens/s over {args.steps} steps (batch {args.batch_size}, "
            f"max-len {args.max_length}, threads {args.threads}, batching {args.batching}, precision {args.precision}, "
            f"device {args.device})",
            flush=True,
        )

if __name__ == "__main__":
    main()
