#!/usr/bin/env python3
"""The whole training step beside its peers, from one gpu-run.sh folder: our `bench-train` lines
(bench-train*.log), PyTorch's (peer-train.log, scripts/peer-train.py) and llm.c's CUDA trainer's
(peer-llmc.log, scripts/peer-llmc.py cuda), each a JSON object with the median step time. Prints a
table and the ratios users judge the project by: ours against PyTorch, dense, with efficient
InRank's factors as its reference code trains them (peer-train-efficient.log beside
bench-train-efficient.log) and with LoRA adapters as loralib and PEFT train them
(peer-train-lora.log beside bench-train-lora.log), and against llm.c with the GELU kept (llm.c's
-r 0 beside our default) and recomputed (llm.c's default -r 1 beside our --recompute-gelu). A
ratio is the peer's step time over ours: above 1, ours is faster. A missing log leaves its rows out
and its ratios "-". Standard library only."""
import argparse, glob, json, os


def rows(path):
    """The JSON objects of a log that carry a step time (other lines are the program's own)."""
    found = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("{"):
                try:
                    r = json.loads(line)
                except ValueError:
                    continue
                if "median_step_s" in r:
                    found.append(r)
    return found


def label(name, r):
    if r.get("peer") == "llm.c":
        return f"{name} -r {r['recompute']} (llm.c)"
    if r.get("peer") == "pytorch":
        return f"{name} (PyTorch {r['torch']})" if r.get("torch") else f"{name} (PyTorch)"
    return name


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folder", help="a gpu-run.sh output folder")
    args = ap.parse_args()
    table = {}
    for path in sorted(glob.glob(os.path.join(args.folder, "*.log"))):
        name = os.path.basename(path)[:-4]
        if name.startswith(("bench-train", "peer-train", "peer-llmc")):
            for r in rows(path):
                table[label(name, r)] = r
    if not table:
        print("steps: no bench-train, peer-train or peer-llmc results")
        return
    print(f"{'step':<44} {'model':<8} {'batch x seq':>12} {'median s':>9} {'tok/s':>9}")
    for name, r in table.items():
        print(f"{name:<44} {r['model']:<8} {str(r['batch']) + ' x ' + str(r['seq']):>12} {r['median_step_s']:9.4f} {r['tok_per_s']:9.0f}")

    def method(r):
        """The parameterisation a row trained, with its rank where it has one."""
        mode = r.get("lowrank") or "dense"
        return (mode, None if mode == "dense" else r.get("rank_init"))

    def ratio(ours, peer):
        a, b = table.get(ours), table.get(peer)
        if not a or not b:
            return "-"
        if (a["model"], a["batch"], a["seq"]) != (b["model"], b["batch"], b["seq"]):
            return "- (different shapes)"
        if method(a) != method(b):
            return "- (different methods)"
        return f"{b['median_step_s'] / a['median_step_s']:.2f}x"

    def pytorch(mode):
        return next((k for k, r in table.items() if r.get("peer") == "pytorch" and method(r)[0] == mode), None)

    print(f"ours / PyTorch: {ratio('bench-train', pytorch('dense'))} (dense), "
          f"{ratio('bench-train-efficient', pytorch('efficient'))} (efficient InRank, as its reference code), "
          f"{ratio('bench-train-lora', pytorch('lora'))} (LoRA, as loralib); "
          f"ours / llm.c: {ratio('bench-train', 'peer-llmc -r 0 (llm.c)')} "
          f"(GELU kept, llm.c -r 0), {ratio('bench-train-recompute', 'peer-llmc -r 1 (llm.c)')} (GELU recomputed, llm.c's default -r 1)")


if __name__ == "__main__":
    main()
