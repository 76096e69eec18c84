#!/usr/bin/env python3
"""The PyTorch side of a checkpoint's cost: GPT-2 (transformers' GPT2LMHeadModel) after one AdamW
step, its state saved as PyTorch users save it, `torch.save({"model": ..., "optimizer": ...})`,
here made durable the way `lowrank train` writes a checkpoint (a temporary file, fsync, rename,
fsync of the folder).
Prints one JSON line: the bytes, the seconds of torch.save and of the fsync and rename, which a
training loop calling torch.save waits for in full."""

import argparse
import json
import os
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel

PRESETS = {
    "gpt2": dict(n_embd=768, n_layer=12, n_head=12),
    "gpt2-medium": dict(n_embd=1024, n_layer=24, n_head=16),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", choices=sorted(PRESETS), default="gpt2-medium")
    ap.add_argument("--out", required=True, help="a folder on the disk lowrank's runs write to")
    a = ap.parse_args()
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(**PRESETS[a.model]))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randint(0, 50257, (1, 32))
    model(x, labels=x).loss.backward()
    opt.step()  # AdamW's moments exist from the first step on
    os.makedirs(a.out, exist_ok=True)
    path = os.path.join(a.out, "checkpoint.pt")
    tmp = path + ".tmp"
    t0 = time.perf_counter()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, tmp)
    t1 = time.perf_counter()
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.rename(tmp, path)
    fd = os.open(a.out, os.O_RDONLY)  # the rename made durable, as ours does
    os.fsync(fd)
    os.close(fd)
    t2 = time.perf_counter()
    size = os.path.getsize(path)
    os.remove(path)
    print(json.dumps({
        "model": a.model,
        "torch": torch.__version__,
        "bytes": size,
        "save_s": round(t1 - t0, 3),
        "fsync_rename_s": round(t2 - t1, 3),
        "total_s": round(t2 - t0, 3),
    }))


if __name__ == "__main__":
    main()
