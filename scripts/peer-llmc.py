#!/usr/bin/env python3
"""llm.c's CPU trainer (train_gpt2.c: fp32, OpenMP) timed on the same GPT-2 shapes, batch, sequence
length and thread count as `lowrank bench-train`, so that the ratio to llm.c is measured side by side.

llm.c is not vendored: give a checkout with --llmc (scripts/cpu-train-bench.sh clones one into
target/llm.c when LLMC_DIR is unset). The script compiles train_gpt2.c with llm.c's Makefile's CPU
flags, writes each model as a GPT-2-initialised checkpoint in llm.c's format (the file train_gpt2.c
loads, gpt2_124M.bin, whatever the size) and random tokens in llm.c's shard format where main()
looks for them, runs it, and reads the step times it prints. train_gpt2.c's main() fixes its batch,
sequence length and step count; a --batch or --seq that differs from its source is refused.
Its timed region holds the batch's load, forward, zero_grad, backward and AdamW; its first two
steps are dropped as warm-up (step 0 allocates the gradients and moments), as bench-train drops
its own. Prints one JSON object per configuration, as scripts/peer-train.py does."""
import argparse, json, os, re, statistics, subprocess, sys
import numpy as np

SHARD_MAGIC, CKPT_MAGIC = 20240520, 20240326
VOCAB = 50257


def padded_vocab(v):
    return (v + 127) // 128 * 128


def write_checkpoint(path, layers, heads, c, max_t, seed=0):
    """GPT-2's init in train_gpt2.c's order: N(0, 0.02) matrices, residual projections scaled by
    1/sqrt(2L), layer-norm weights 1, biases 0 (llm.c's train_gpt2.py writes the same layout)."""
    vp = padded_vocab(VOCAB)
    rng = np.random.default_rng(seed)
    normal = lambda *shape, std=0.02: rng.normal(0.0, std, shape).astype(np.float32)
    ones, zeros = (lambda *s: np.ones(s, np.float32)), (lambda *s: np.zeros(s, np.float32))
    proj_std = 0.02 / (2 * layers) ** 0.5
    wte = normal(vp, c)
    wte[VOCAB:] = 0.0  # llm.c's padding rows
    tensors = [
        wte, normal(max_t, c), ones(layers, c), zeros(layers, c),
        normal(layers, 3 * c, c), zeros(layers, 3 * c),
        normal(layers, c, c, std=proj_std), zeros(layers, c),
        ones(layers, c), zeros(layers, c),
        normal(layers, 4 * c, c), zeros(layers, 4 * c),
        normal(layers, c, 4 * c, std=proj_std), zeros(layers, c),
        ones(c), zeros(c),
    ]
    header = np.zeros(256, np.int32)
    header[:8] = [CKPT_MAGIC, 3, max_t, VOCAB, layers, heads, c, vp]
    with open(path, "wb") as f:
        header.tofile(f)
        for t in tensors:
            t.tofile(f)
    return sum(t.size for t in tensors)


def write_shard(path, tokens, seed):
    header = np.zeros(256, np.int32)
    header[:3] = [SHARD_MAGIC, 1, tokens]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        header.tofile(f)
        np.random.default_rng(seed).integers(0, VOCAB, tokens, dtype=np.uint16).tofile(f)


def source_constant(source, name):
    m = re.search(rf"\bint {name} = (\d+);", source)
    if not m:
        sys.exit(f"peer-llmc: could not find `int {name} = ...;` in train_gpt2.c's main(); this llm.c differs from the one this script reads")
    return int(m.group(1))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--llmc", required=True, help="a checkout of github.com/karpathy/llm.c")
    ap.add_argument("--config", action="append", required=True, help="NAME:LAYERS:HEADS:CHANNELS[:MAX_T], e.g. gpt2:12:12:768")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--work", default="target/llmc-work", help="folder for the binary, checkpoints and shards")
    ap.add_argument("--cc", default=os.environ.get("CC", "cc"))
    args = ap.parse_args()

    source_path = os.path.join(args.llmc, "train_gpt2.c")
    if not os.path.isfile(source_path):
        sys.exit(f"peer-llmc: {source_path} not found: --llmc must be a checkout of github.com/karpathy/llm.c")
    source = open(source_path).read()
    batch, seq = source_constant(source, "B"), source_constant(source, "T")
    if (batch, seq) != (args.batch, args.seq):
        sys.exit(f"peer-llmc: llm.c's train_gpt2.c trains at B = {batch}, T = {seq}, fixed in its main(); "
                 f"asked for {args.batch} × {args.seq}. Run the comparison at BATCH={batch} SEQ={seq}")

    os.makedirs(args.work, exist_ok=True)
    binary = os.path.abspath(os.path.join(args.work, "train_gpt2"))
    # llm.c's Makefile's CPU recipe (CFLAGS, the OpenMP flags it adds where libgomp is found).
    flags = ["-Ofast", "-Wno-unused-result", "-Wno-ignored-pragmas", "-Wno-unknown-attributes",
             "-march=native", "-fopenmp", "-DOMP"]
    subprocess.run([args.cc, *flags, source_path, "-lm", "-lgomp", "-o", binary], check=True)
    compiler = subprocess.run([args.cc, "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    # LLMC_COMMIT names the commit of a copy that is not a git checkout.
    commit = os.environ.get("LLMC_COMMIT") or subprocess.run(
        ["git", "-C", args.llmc, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip() or "unknown"

    for spec in args.config:
        name, layers, heads, c, *rest = spec.split(":")
        layers, heads, c = int(layers), int(heads), int(c)
        max_t = int(rest[0]) if rest else 1024
        run_dir = os.path.join(args.work, name)
        os.makedirs(run_dir, exist_ok=True)
        params = write_checkpoint(os.path.join(run_dir, "gpt2_124M.bin"), layers, heads, c, max_t)
        data = os.path.join(run_dir, "dev/data/tinyshakespeare")
        write_shard(os.path.join(data, "tiny_shakespeare_train.bin"), 1 << 16, seed=1)
        write_shard(os.path.join(data, "tiny_shakespeare_val.bin"), 1 << 14, seed=2)
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
        run = subprocess.run([binary], cwd=run_dir, env=env, capture_output=True, text=True)
        steps = [(int(s), float(ms) / 1e3) for s, ms in re.findall(r"^step (\d+): train loss \S+ \(took ([\d.]+) ms\)", run.stdout, re.M)]
        if run.returncode != 0 or len(steps) < 4:
            sys.exit(f"peer-llmc: train_gpt2 in {run_dir} exited {run.returncode} after {len(steps)} steps:\n{run.stdout[-2000:]}{run.stderr[-2000:]}")
        timed = [t for s, t in steps if s >= 2]
        median = statistics.median(timed)
        print(json.dumps({
            "peer": "llm.c", "model": name, "batch": batch, "seq": seq, "threads": args.threads,
            "params": params, "steps": len(timed), "median_step_s": median,
            "mean_step_s": statistics.fmean(timed), "tok_per_s": batch * seq / median,
            "llmc_commit": commit, "compiler": compiler,
        }), flush=True)


if __name__ == "__main__":
    main()
