#!/usr/bin/env python3
"""Which of our kernels a GPU run's selftests verified: the "verified" column of benches/STATUS.md.

Reads `lowrank selftest --json` files (each case lists the kernels of ours it launched on the device)
and, with --doctor, the `lowrank doctor --json` of the same binary (every kernel it embeds). A kernel
is verified when at least one passing case launched it and no failing case did; failed when a
failing case launched it (that case may fail for another kernel it launched: its line names them);
never launched when no case did. A kernel launched only around the op a case checks (the NaN fill
that poisons an output, say) is verified only as far as that check reaches.

    python3 scripts/kernel-status.py OUT/selftest-lowrank.json OUT/selftest-attention.json \\
        OUT/selftest.json --doctor OUT/doctor.json [--md OUT/kernels.md]
"""
import argparse
import json
import sys


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("selftest_json", nargs="+", help="`lowrank selftest --json` files")
    ap.add_argument("--doctor", help="`lowrank doctor --json` of the same binary: lists kernels never launched")
    ap.add_argument("--md", help="also write the table here")
    args = ap.parse_args()

    kernels = {}  # name -> {"pass": n, "fail": [case, ...], "worst": (rel_err / bound, case)}
    device = None
    for path in args.selftest_json:
        with open(path) as f:
            doc = json.load(f)
        device = device or (doc.get("device") or {}).get("name")
        for c in doc["cases"]:
            case = f'{c["op"]} {c["shape"]}'
            for k in c.get("kernels", []):
                e = kernels.setdefault(k, {"pass": 0, "fail": [], "worst": (0.0, "")})
                if c["pass"]:
                    e["pass"] += 1
                    ratio = (c["rel_err"] or 0.0) / c["bound"]
                    if ratio >= e["worst"][0]:
                        e["worst"] = (ratio, case)
                else:
                    e["fail"].append(case)

    compiled = set()
    if args.doctor:
        with open(args.doctor) as f:
            for file in json.load(f)["kernels"]:
                compiled.update(r["kernel"] for r in file["resources"])

    lines = [
        f"Kernels verified by selftest on {device or 'an unnamed device'} ({', '.join(args.selftest_json)})",
        "",
        "| kernel | status | passing cases | failing cases | worst passing case (rel err / bound) |",
        "|---|---|---|---|---|",
    ]
    for k in sorted(kernels):
        e = kernels[k]
        status = "FAILED" if e["fail"] else "verified"
        worst = f'{e["worst"][1]} ({e["worst"][0]:.2g})' if e["pass"] else "-"
        fails = "; ".join(e["fail"][:3]) + (f" (+{len(e['fail']) - 3} more)" if len(e["fail"]) > 3 else "")
        lines.append(f"| {k} | {status} | {e['pass']} | {fails or '-'} | {worst} |")
    never = sorted(compiled - set(kernels))
    for k in never:
        lines.append(f"| {k} | never launched | 0 | - | - |")
    unknown = sorted(set(kernels) - compiled) if compiled else []
    verified = sum(1 for e in kernels.values() if not e["fail"])
    failed = len(kernels) - verified
    lines.append("")
    if unknown:
        lines.append(f"launched but not in the doctor's list (another binary?): {', '.join(unknown)}")
    # Last, as gpu-run.sh's summary quotes it.
    lines.append(
        f"{verified} verified, {failed} failed, {len(never)} never launched"
        + (f" (of {len(compiled)} compiled)" if compiled else "")
    )
    text = "\n".join(lines)
    print(text)
    if args.md:
        with open(args.md, "w") as f:
            f.write(text + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
