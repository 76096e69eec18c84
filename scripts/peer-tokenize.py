#!/usr/bin/env python3
"""The peer of `lowrank tokenize`: OpenAI's tiktoken (Python) encoding the same files with GPT-2's BPE
in a process pool, as llm.c's data scripts (dev/data/fineweb.py) and nanoGPT's prepare.py do, so the
tokens/s are compared side by side; with --compare, also a check that both give the same tokens.

Each file is one document, `<|endoftext|>` + encode_ordinary(text), files in path order (by path
component, as ours), read without newline translation (as ours: "\\r\\n" stays two characters); a
whitespace-only file is no document, as in ours. Feed it files without WikiText article headers
(` = Title = ` lines), which ours splits into documents and this does not. Timed from the pool's
start (its processes' start-up and loading the ranks included) to the tokens in memory; ours is
timed as a whole process, reading, tokenizing and writing shards.

The BPE ranks are tiktoken-rs's copy of r50k_base (the same file tiktoken downloads, which this
machine may not reach): --bpe, or found in cargo's registry.

    python3 scripts/peer-tokenize.py DIR --procs 2 --compare 'OUT/NAME_train_*.bin'

where OUT was written by `lowrank tokenize DIR --out OUT --val-fraction 0` (every document to
train, in input order). Prints one JSON object; exit 1 if --compare finds other tokens."""
import argparse, glob, json, os, sys, time
from multiprocessing import Pool

EOT = 50256
# tiktoken's r50k_base pattern (tiktoken_ext/openai_public.py).
PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
_encoding = None


def find_bpe():
    home = os.path.expanduser(os.environ.get("CARGO_HOME", "~/.cargo"))
    found = sorted(glob.glob(os.path.join(home, "registry/src/*/tiktoken-rs-*/assets/r50k_base.tiktoken")))
    if not found:
        sys.exit("no r50k_base.tiktoken in cargo's registry: build lowrank once (cargo fetches "
                 "tiktoken-rs), or pass --bpe FILE")
    return found[-1]


def encoding(bpe):
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe
    return tiktoken.Encoding(name="gpt2", pat_str=PATTERN, mergeable_ranks=load_tiktoken_bpe(bpe),
                             special_tokens={"<|endoftext|>": EOT})


def init_worker(bpe):
    global _encoding
    _encoding = encoding(bpe)


def encode_file(path):
    with open(path, encoding="utf-8", newline="") as f:
        text = f.read()
    return [EOT] + _encoding.encode_ordinary(text) if text.strip() else []


def input_files(inputs):
    files = []
    for p in inputs:
        if os.path.isdir(p):
            found = []
            for root, dirs, names in os.walk(p):
                dirs[:] = [d for d in dirs if not d.startswith(".")]
                found += [os.path.join(root, n) for n in names if not n.startswith(".")]
            files += sorted(found, key=lambda p: p.split(os.sep))
        else:
            files.append(p)
    return files


def shard_tokens(pattern):
    """The tokens of llm.c-format shards matching `pattern`, in path order."""
    import struct
    tokens = []
    for path in sorted(glob.glob(pattern)):
        with open(path, "rb") as f:
            data = f.read()
        magic, version, count = struct.unpack("<3i", data[:12])
        assert (magic, version) == (20240520, 1), f"{path}: not a version-1 llm.c shard"
        tokens += struct.unpack(f"<{count}H", data[1024:1024 + 2 * count])
    return tokens


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("inputs", nargs="+", help="files or folders (hidden entries skipped)")
    ap.add_argument("--procs", type=int, default=os.cpu_count(), help="worker processes")
    ap.add_argument("--bpe", help="r50k_base.tiktoken [default: tiktoken-rs's, in cargo's registry]")
    ap.add_argument("--compare", metavar="GLOB", help="shards of ours to compare the tokens with")
    args = ap.parse_args()
    import tiktoken
    bpe = args.bpe or find_bpe()
    files = input_files(args.inputs)
    start = time.perf_counter()
    with Pool(args.procs, initializer=init_worker, initargs=(bpe,)) as pool:
        documents = pool.map(encode_file, files, chunksize=1)
    seconds = time.perf_counter() - start
    tokens = sum(len(d) for d in documents)
    result = {"peer": f"tiktoken {tiktoken.__version__}", "procs": args.procs, "files": len(files),
              "tokens": tokens, "seconds": round(seconds, 3), "tokens_per_s": round(tokens / seconds)}
    if args.compare:
        ours = shard_tokens(args.compare)
        theirs = [t for d in documents for t in d]
        first = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
        result["same_tokens"] = ours == theirs
        if ours != theirs:
            result["first_difference"] = first
            result["ours_tokens"] = len(ours)
    print(json.dumps(result))
    return 0 if result.get("same_tokens", True) else 1


if __name__ == "__main__":
    sys.exit(main())
