#!/usr/bin/env python3
"""Reads a `lowrank export` directory with Hugging Face transformers (GPT2LMHeadModel) and prints
the mean cross-entropy over the first windows of an llm.c token shard, taken as `lowrank eval`
takes them (window k = tokens[k*T : k*T + T + 1], inputs its first T, targets its last T), so the
two numbers can be compared:

    lowrank export --ckpt RUN --out DIR
    lowrank eval --ckpt DIR --data SHARD --batch 4 --seq 64 --max-batches 4
    python3 scripts/hf-check.py DIR SHARD --seq 64 --windows 16

With `--stride S`, every token of the shard but its first instead, in Hugging Face's sliding-window
recipe ("Perplexity of fixed-length models" in transformers' docs: windows of T+1 ids S apart, each
scoring the labels past the previous window's end), except that the last window is moved back to
end at the shard's end with a whole window of context, as `lowrank eval --stride` does (the guide's
last window is shorter):

    lowrank eval --ckpt DIR --data SHARD --seq 64 --stride 32
    python3 scripts/hf-check.py DIR SHARD --seq 64 --stride 32

With `--time`, the windows' forward runs once untimed and once timed, and the seconds of the timed
one and the process's peak memory are printed beside the loss, to set against the same
`lowrank eval` timed whole (benches/results/cpu-eval-2026-12-07-forward-only.md):

    /usr/bin/time -f "%e s %M KB" lowrank eval --ckpt DIR --data SHARD --batch 8 --seq 1024 --max-batches 1
    python3 scripts/hf-check.py DIR SHARD --seq 1024 --windows 8 --time

With `--adapter ADAPTER` (from `lowrank export --adapter` of a LoRA run), DIR is the LoRA base's
export and PEFT applies the adapter to it. Needs torch and transformers (and peft for
--adapter); CPU is enough.
"""
import argparse
import resource
import time

import numpy as np
import torch
import torch.nn.functional as F
from transformers import GPT2LMHeadModel

MAGIC, HEADER_INTS = 20240520, 256


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="a directory written by `lowrank export`")
    p.add_argument("shard", help="an llm.c-format token shard (`lowrank tokenize`)")
    p.add_argument("--seq", type=int, default=64, help="T, tokens per window")
    p.add_argument("--windows", type=int, default=16, help="windows from the shard's start")
    p.add_argument("--stride", type=int, help="score every token, in windows this many tokens apart")
    p.add_argument("--adapter", help="a PEFT LoRA adapter (`lowrank export --adapter`) to apply")
    p.add_argument("--time", action="store_true", help="time the windows' forward (after one untimed)")
    a = p.parse_args()
    if a.stride is not None and not 1 <= a.stride <= a.seq:
        raise SystemExit(f"--stride {a.stride}: must be 1 to --seq {a.seq}")
    if a.stride is not None and a.time:
        raise SystemExit("--time times the windows' one forward: leave out --stride")

    header = np.fromfile(a.shard, dtype=np.int32, count=HEADER_INTS)
    if header[0] != MAGIC:
        raise SystemExit(f"{a.shard}: not an llm.c token shard (magic {header[0]})")
    tokens = np.fromfile(a.shard, dtype=np.uint16, offset=HEADER_INTS * 4)[: header[2]]
    model = GPT2LMHeadModel.from_pretrained(a.model, torch_dtype=torch.float32).eval()
    if a.adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, a.adapter).eval()
    what = f"{a.model} + {a.adapter}" if a.adapter else a.model
    if a.stride is not None:  # every token: --windows does not apply
        loss, scored = sliding(model, tokens, a.seq, a.stride)
        print(f"{what}: loss {loss:.4f} on {scored} tokens of {a.shard}, stride {a.stride} "
              f"(transformers {model.__class__.__name__})")
        return
    available = (len(tokens) - 1) // a.seq
    if available < a.windows:
        raise SystemExit(f"{a.shard} holds {available} windows of {a.seq + 1} tokens, fewer than {a.windows}")
    rows = np.stack([tokens[k * a.seq : k * a.seq + a.seq + 1] for k in range(a.windows)]).astype(np.int64)
    x, y = torch.from_numpy(rows[:, :-1]), torch.from_numpy(rows[:, 1:])
    with torch.no_grad():
        if a.time:
            model(x)
        started = time.perf_counter()
        logits = model(x).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        took = time.perf_counter() - started
    timed = ""
    if a.time:
        # KiB on Linux, / 1e6 as /usr/bin/time's %M is read beside it (not GB of 1e9 bytes).
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
        timed = f"; forward and loss {took:.2f} s on {torch.get_num_threads()} threads, peak memory {peak:.2f} GB"
    print(f"{what}: loss {loss.item():.4f} on {a.windows} windows of {a.shard} (transformers {model.__class__.__name__}){timed}")


def sliding(model, tokens, seq, stride):
    """Hugging Face's sliding-window loop over `tokens` (max_length = seq + 1 ids), its last
    window moved back to a whole one: the mean loss and the number of tokens scored."""
    ids = torch.from_numpy(tokens.astype(np.int64))[None]
    n, length = ids.shape[1], seq + 1
    if n < length:
        raise SystemExit(f"the shard's {n} tokens are fewer than a window of {length}")
    nll_sum, scored, prev_end = 0.0, 0, 0
    for begin in range(0, n, stride):
        begin = min(begin, n - length)  # the guide: end = min(begin + length, n), a shorter window
        end = begin + length
        trg_len = end - prev_end
        input_ids = ids[:, begin:end]
        labels = input_ids.clone()
        labels[:, :-trg_len] = -100
        with torch.no_grad():  # the last id predicts nothing scored: T ids, as the position table holds
            logits = model(input_ids[:, :-1]).logits
        # The model's own shift: logits at i predict label i + 1; -100 is ignored.
        losses = F.cross_entropy(logits[0], labels[0, 1:], ignore_index=-100, reduction="sum")
        nll_sum += losses.item()
        scored += int((labels[0, 1:] != -100).sum())
        prev_end = end
        if end == n:
            break
    return nll_sum / scored, scored


if __name__ == "__main__":
    main()
