#!/usr/bin/env python3
"""llm.c's trainers timed on the same GPT-2 shapes as `lowrank bench-train`, so that the ratio to llm.c
is measured side by side: `cpu` runs train_gpt2.c (fp32, OpenMP) here; `build-cuda` compiles
train_gpt2.cu (bf16, cuBLASLt) for Hopper on a machine without a GPU, and `cuda` runs that binary
on the GPU machine (scripts/gpu-stage.sh and gpu-run.sh call the two).

llm.c is not vendored: give a checkout with --llmc (scripts/cpu-train-bench.sh clones one into
target/llm.c when LLMC_DIR is unset; gpu-stage.sh builds the CUDA peer only when LLMC_DIR is set).

cpu: compiles train_gpt2.c with llm.c's Makefile's CPU flags, writes each model as a
GPT-2-initialised checkpoint in llm.c's format (the file train_gpt2.c loads, gpt2_124M.bin, whatever
the size) and random tokens in llm.c's shard format where main() looks for them, runs it, and reads
the step times it prints. train_gpt2.c's main() fixes its batch, sequence length and step count; a
--batch or --seq that differs from its source is refused. Its timed region holds the batch's load,
forward, zero_grad, backward and AdamW; its first two steps are dropped as warm-up (step 0
allocates the gradients and moments), as bench-train drops its own.

cuda: random tokens as llm.c shards, the model from llm.c's own random init (`-e dL`, its GPT-2
preset of L layers: 12 is GPT-2 small, 24 medium), no validation, sampling or checkpoints; its
step time (llm.c's CUDA events around the batch's upload, forward, backward, gradient norm and
AdamW) over the steps after two warm-up steps, once per --recompute.

Each run prints one JSON object per configuration, as scripts/peer-train.py does."""
import argparse, array, json, os, random, re, shutil, statistics, subprocess, sys, tempfile

SHARD_MAGIC, CKPT_MAGIC = 20240520, 20240326
VOCAB = 50257


def padded_vocab(v):
    return (v + 127) // 128 * 128


def write_checkpoint(path, layers, heads, c, max_t, seed=0):
    """GPT-2's init in train_gpt2.c's order: N(0, 0.02) matrices, residual projections scaled by
    1/sqrt(2L), layer-norm weights 1, biases 0 (llm.c's train_gpt2.py writes the same layout)."""
    import numpy as np  # here only: the CUDA modes run without it

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
    """llm.c's shard: a 256-int32 header (magic, version 1, token count), then uint16 tokens."""
    header = array.array("i", [SHARD_MAGIC, 1, tokens] + [0] * 253)
    rng = random.Random(seed)
    body = array.array("H", (rng.randrange(VOCAB) for _ in range(tokens)))
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "wb") as f:
        header.tofile(f)
        body.tofile(f)


def source_constant(source, name):
    m = re.search(rf"\bint {name} = (\d+);", source)
    if not m:
        sys.exit(f"peer-llmc: could not find `int {name} = ...;` in train_gpt2.c's main(); this llm.c differs from the one this script reads")
    return int(m.group(1))


def llmc_commit(checkout):
    """LLMC_COMMIT names the commit of a copy that is not a git checkout."""
    return os.environ.get("LLMC_COMMIT") or subprocess.run(
        ["git", "-C", checkout, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip() or "unknown"


def run_cpu(args):
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
    commit = llmc_commit(args.llmc)

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


# What train_gpt2.cu needs beyond the compiler (scripts/install-cuda-compiler.sh), from CUDA 13.0's
# wheels: cuBLAS's headers and the libraries to link against (at run time the GPU machine's own
# libcublasLt.so.13 is loaded), the header-only NVTX 3, cuda_profiler_api.h.
BUILD_DEPS = ["nvidia-cublas==13.0.2.14", "nvidia-nvtx==13.0.85", "nvidia-cuda-profiler-api==13.0.85"]
# llm.c's Makefile's flags for train_gpt2cu without cuDNN or multi-GPU, for Hopper (its -arch
# comes from the GPU it is built on; this machine has none). Half-precision: its bf16 default.
NVCC_FLAGS = ["-O3", "-t=0", "--use_fast_math", "-std=c++17", "-DENABLE_BF16", "-gencode", "arch=compute_90,code=sm_90"]
# llm.c's `-e dL` builds (gpt2_set_hyperparameters): layers -> (channels, heads).
LLMC_DEPTHS = {6: (384, 6), 12: (768, 12), 24: (1024, 16), 36: (1280, 20), 48: (1600, 25)}
STEP_LINE = re.compile(r"^step +(\d+)/(\d+) \| loss .*?\| ([\d.]+) ms \|", re.M)
WARMUP_STEPS = 2


def repo_root():
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build_cuda(args):
    source = os.path.join(args.llmc, "train_gpt2.cu")
    if not os.path.isfile(source):
        sys.exit(f"peer-llmc: {source} not found: --llmc must be a checkout of github.com/karpathy/llm.c")
    nvcc = args.nvcc or next((c for c in [os.path.join(repo_root(), ".cuda/nvidia/cu13/bin/nvcc"), shutil.which("nvcc")]
                              if c and os.access(c, os.X_OK)), None)
    if not nvcc:
        sys.exit("peer-llmc: no nvcc: run scripts/install-cuda-compiler.sh or pass --nvcc")
    include, lib = (os.path.join(args.deps, "nvidia/cu13", d) for d in ("include", "lib"))
    wanted = os.path.join(args.deps, "installed.txt")
    if not os.path.isfile(wanted) or open(wanted).read().split() != BUILD_DEPS:
        print(f"peer-llmc: installing {' '.join(BUILD_DEPS)} into {args.deps} (~570 MB)", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
                        "--upgrade", "--target", args.deps, *BUILD_DEPS], check=True)
        with open(wanted, "w") as f:
            f.write("\n".join(BUILD_DEPS) + "\n")
    # -lcublas wants the unversioned names; the wheel ships only libcublas.so.13.
    links = os.path.join(args.deps, "link")
    os.makedirs(links, exist_ok=True)
    for name in ("cublas", "cublasLt"):
        target, link = os.path.abspath(os.path.join(lib, f"lib{name}.so.13")), os.path.join(links, f"lib{name}.so")
        if os.path.lexists(link):
            os.remove(link)
        os.symlink(target, link)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    # The compiler's own lib/ holds cudart_static, which nvcc links.
    cuda_lib = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(nvcc))), "lib")
    command = [nvcc, *NVCC_FLAGS, f"-I{include}", f"-L{links}", f"-L{cuda_lib}", source, "-lcublas", "-lcublasLt", "-o", args.out]
    subprocess.run(command, check=True)
    version = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout.strip().splitlines()[-1]
    with open(args.out + ".json", "w") as f:
        json.dump({"llmc_commit": llmc_commit(args.llmc), "nvcc": version, "flags": " ".join(NVCC_FLAGS), "deps": " ".join(BUILD_DEPS)}, f)
        f.write("\n")
    print(f"peer-llmc: built {args.out} (llm.c {llmc_commit(args.llmc)}, {version})", file=sys.stderr)


def llmc_depth(spec):
    """The `-e dL` that builds NAME:LAYERS:HEADS:CHANNELS in llm.c, or an error naming those it has."""
    name, layers, heads, c = spec.split(":")[:4]
    layers, heads, c = int(layers), int(heads), int(c)
    if LLMC_DEPTHS.get(layers) != (c, heads):
        have = ", ".join(f"{l}:{h}:{ch}" for l, (ch, h) in LLMC_DEPTHS.items())
        sys.exit(f"peer-llmc: llm.c's -e dL has no {layers} layers of {c} channels in {heads} heads; it builds LAYERS:HEADS:CHANNELS {have}")
    return name, layers


def step_times(stdout):
    """(step, seconds) of each training step llm.c printed, in order."""
    return [(int(step), float(ms) / 1e3) for step, _, ms in STEP_LINE.findall(stdout)]


def run_cuda(args):
    binary = os.path.abspath(args.binary)
    built = {}
    if os.path.isfile(binary + ".json"):
        with open(binary + ".json") as f:
            built = json.load(f)
    work = args.work or tempfile.mkdtemp(prefix="peer-llmc-")
    # Tokens for a few batches (llm.c wraps around a shard); the validation loader opens its shard
    # and wants one batch's worth even when no batch of it is read.
    train, val = os.path.join(work, "train.bin"), os.path.join(work, "val.bin")
    write_shard(train, 4 * args.batch * args.seq + 1, seed=1)
    write_shard(val, args.batch * args.seq + 1, seed=2)
    total = WARMUP_STEPS + args.steps
    for spec in args.config:
        name, layers = llmc_depth(spec)
        for recompute in args.recompute or [0, 1]:
            # No validation (-m 0 batches; -v past the last step, since -v 0 divides by zero in
            # llm.c), sampling, HellaSwag, checkpoints or log directory.
            command = [binary, "-i", train, "-j", val, "-e", f"d{layers}", "-b", str(args.batch), "-t", str(args.seq),
                       "-x", str(total), "-v", str(total + 1), "-m", "0", "-s", "0", "-h", "0", "-n", "0", "-r", str(recompute)]
            run = subprocess.run(command, cwd=work, capture_output=True, text=True)
            steps = step_times(run.stdout)
            if run.returncode != 0 or len(steps) != total:
                sys.exit(f"peer-llmc: {' '.join(command)} exited {run.returncode} after {len(steps)} of {total} steps:\n"
                         f"{run.stdout[-2000:]}{run.stderr[-2000:]}")
            timed = [t for s, t in steps[WARMUP_STEPS:]]
            median = statistics.median(timed)
            print(json.dumps({
                "peer": "llm.c", "device": "cuda", "model": name, "batch": args.batch, "seq": args.seq,
                "recompute": recompute, "steps": len(timed), "median_step_s": median,
                "mean_step_s": statistics.fmean(timed), "tok_per_s": args.batch * args.seq / median, **built,
            }), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="mode", required=True)
    cpu = sub.add_parser("cpu", help="build and time train_gpt2.c (fp32, OpenMP) here")
    cpu.add_argument("--llmc", required=True, help="a checkout of github.com/karpathy/llm.c")
    cpu.add_argument("--config", action="append", required=True, help="NAME:LAYERS:HEADS:CHANNELS[:MAX_T], e.g. gpt2:12:12:768")
    cpu.add_argument("--batch", type=int, default=4)
    cpu.add_argument("--seq", type=int, default=64)
    cpu.add_argument("--threads", type=int, default=os.cpu_count())
    cpu.add_argument("--work", default="target/llmc-work", help="folder for the binary, checkpoints and shards")
    cpu.add_argument("--cc", default=os.environ.get("CC", "cc"))
    cpu.set_defaults(run=run_cpu)
    build = sub.add_parser("build-cuda", help="compile train_gpt2.cu for sm_90 here, no GPU needed")
    build.add_argument("--llmc", required=True, help="a checkout of github.com/karpathy/llm.c")
    build.add_argument("--out", required=True, help="the binary to write; FILE.json beside it records how it was built")
    build.add_argument("--nvcc", default=None, help="default: .cuda's (scripts/install-cuda-compiler.sh), else PATH's")
    build.add_argument("--deps", default="target/llmc-cuda-deps", help=f"where pip installs {', '.join(BUILD_DEPS)} once")
    build.set_defaults(run=build_cuda)
    cuda = sub.add_parser("cuda", help="time a build-cuda binary on the GPU")
    cuda.add_argument("--binary", required=True)
    cuda.add_argument("--config", action="append", required=True, help="NAME:LAYERS:HEADS:CHANNELS, one of llm.c's GPT-2 presets (-e dL), e.g. gpt2:12:12:768")
    cuda.add_argument("--batch", type=int, default=8)
    cuda.add_argument("--seq", type=int, default=1024)
    cuda.add_argument("--steps", type=int, default=10, help="timed steps, after two warm-up steps")
    cuda.add_argument("--recompute", type=int, action="append", choices=[0, 1], help="llm.c's -r (repeatable; default 0 and 1: without and with the GELU recomputed)")
    cuda.add_argument("--work", default=None, help="folder for the shards (default: a temporary one)")
    cuda.set_defaults(run=run_cuda)
    args = ap.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
