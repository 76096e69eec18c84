#!/usr/bin/env python3
"""Nsight Compute's text report of `lowrank bench ... --capture` (gpu-run.sh's ncu-*.log) as tables:
per profiled kernel, the bench's capture label it ran under, its grid, duration, throughput against
the SM's and memory's peaks, L2 hit rate, occupancy, registers and shared memory; then, per layer and
pass, each implementation's kernels' total time beside cuBLASLt's (`cublas`). Standard library only.

    python3 scripts/ncu-summary.py OUT/ncu-lowrank-small.log OUT/ncu-lowrank-medium.log \\
        [--md OUT/ncu-summary.md] [--json OUT/ncu-summary.json]

The log holds, in order: the bench's `capture: LABEL` lines, each printed before its captured call,
with ncu's `==PROF== Profiling "KERNEL"` lines for that call's kernels between them, and after the
program ends the results, one block per profiled kernel in the same order (a header line
`NAME (grid)x(block), Context C, Stream S, Device D, CC X.Y`, then per section a table whose dashed
rule gives its columns' widths). A result is matched to its label by that order; where the counts
differ (results printed as each kernel finished, say), by the last label printed before it.
"""
import argparse
import json
import os
import re
import sys

CAPTURE = re.compile(r"^capture: (?P<label>.+?)\s*$")
PROFILING = re.compile(r'^==PROF== Profiling "(?P<name>[^"]+)"')
# A result's header: NAME (grid)x(block), then Context, Stream, Device, CC; a third (x, y, z) after
# the block's, as a cluster's dimensions might be printed, is allowed and ignored.
KERNEL = re.compile(r"^\s*(?P<name>\S.*?) \((\d+), (\d+), (\d+)\)x\((\d+), (\d+), (\d+)\)(?:x\(\d+, \d+, \d+\))?, "
                    r"(?P<rest>.*\bCC \d+\.\d+.*)$")
SECTION = re.compile(r"^\s+Section: (?P<name>.+?)\s*$")
RULE = re.compile(r"^\s+-+( -+)+\s*$")
TO_US = {"ns": 1e-3, "nsecond": 1e-3, "us": 1.0, "usecond": 1.0, "ms": 1e3, "msecond": 1e3, "s": 1e6, "second": 1e6}
TO_KB = {"byte/block": 1e-3, "Kbyte/block": 1.0, "Mbyte/block": 1e3}  # ncu's SI units
TO_TBS = {"byte/second": 1e-12, "Kbyte/second": 1e-9, "Mbyte/second": 1e-6, "Gbyte/second": 1e-3, "Tbyte/second": 1.0}
# The bench's labels of the low-rank layer: "IMPL PASS SHAPE", e.g. "fused bwd w0+lr 8192x768>3072 r96".
LAYER_LABEL = re.compile(r"^(?P<imp>\S+) (?P<pass_>(?:fwd|bwd) (?:w0\+lr|lr)) (?P<shape>\d+x\d+>\d+ r\d+)$")
# Its dense baselines: "dense 8192x768>3072 fwd", "... bwd dx", "... bwd dx+dW".
DENSE_LABEL = re.compile(r"^dense (?P<shape>\d+x\d+>\d+) (?P<call>fwd|bwd dx|bwd dx\+dW)$")


def number(text):
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return None


def columns(rule):
    """The (start, end) of each dashed group of a table's rule line."""
    return [(m.start(), m.end()) for m in re.finditer(r"-+", rule)]


def parse(text):
    """(kernels, problems): kernels as dicts with name, grid, block, label and
    metrics {section: {metric: [unit, value text]}}."""
    profiled, kernels, problems = [], [], []
    label, section, spans, kernel = None, None, None, None
    for line in text.splitlines():
        if m := CAPTURE.match(line):
            label = m["label"]
        elif m := PROFILING.match(line):
            profiled.append((m["name"], label))
        elif m := KERNEL.match(line):
            kernel = dict(name=m["name"], grid=[int(g) for g in m.groups()[1:4]],
                          block=[int(b) for b in m.groups()[4:7]], label_at_header=label, metrics={})
            kernels.append(kernel)
            section, spans = None, None
        elif kernel is None:
            continue
        elif m := SECTION.match(line):
            section, spans = m["name"], None
            if section in kernel["metrics"]:
                # A section twice under one header: the next kernel's header went unrecognised.
                # Its results go to a kernel of unknown name, not over the last one's.
                problems.append(f"a second {section!r} section after {kernel['name']!r}: a result header "
                                "this script did not recognise; its results are listed under '?'")
                kernel = dict(name="?", grid=None, block=None, label_at_header=label, metrics={})
                kernels.append(kernel)
        elif RULE.match(line):
            spans = columns(line)
        elif not line.strip():
            spans = None  # a table ends at a blank line; rule messages (OPT, WRN) follow one
        elif spans and section:
            cells = [line[a:b].strip() for a, b in spans[:-1]] + [line[spans[-1][0]:].strip()]
            if len(cells) == 2:
                cells.insert(1, "")
            name, unit, value = cells[0], cells[1], cells[-1]
            if name and name != "Metric Name":
                kernel["metrics"].setdefault(section, {})[name] = [unit, value]
    label_results(kernels, profiled, problems)
    return kernels, problems


def label_results(kernels, profiled, problems):
    """Each result's capture label: from the profiled kernel it is in order when the counts agree;
    else from the next profiled kernel of its name (ncu's progress line names the function), a
    result that has none left without a label; with no progress lines at all (results printed as
    each kernel finished), the label printed before the result."""
    if not profiled:
        for k in kernels:
            k["label"] = k.pop("label_at_header")
        return
    for k in kernels:
        del k["label_at_header"]
    if len(profiled) == len(kernels):
        for k, (name, lab) in zip(kernels, profiled):
            k["label"] = lab
            if name not in k["name"]:
                problems.append(f"result {k['name']!r} matched by order to profiled kernel {name!r}")
        return
    problems.append(f"{len(profiled)} kernels profiled but {len(kernels)} results: matched by name")
    j = 0
    for k in kernels:
        i = next((i for i in range(j, len(profiled)) if profiled[i][0] in k["name"]), None)
        if i is None:
            k["label"] = None
            problems.append(f"result {k['name']!r} matches no profiled kernel after the last matched: no label")
            continue
        if i > j:
            problems.append(f"no result for profiled {', '.join(repr(n) for n, _ in profiled[j:i])}")
        k["label"], j = profiled[i][1], i + 1


def metric(k, section_prefix, name):
    """(unit, value) of a metric in the first section whose name starts with section_prefix."""
    for section, rows in k["metrics"].items():
        if section.startswith(section_prefix) and name in rows:
            unit, value = rows[name]
            return unit, number(value)
    return None, None


# The per-kernel table's columns: key, heading, format, and the metric (section name's start, metric
# name, or a tuple of names whose values add up) it shows, with the units it converts from where the
# report's unit varies (else None).
COLUMNS = [
    ("us", "µs", "{:.1f}", "GPU Speed Of Light", "Duration", TO_US),
    ("sm_pct", "SM %", "{:.0f}", "GPU Speed Of Light", "Compute (SM) Throughput", None),
    ("mem_pct", "mem %", "{:.0f}", "GPU Speed Of Light", "Memory Throughput", None),
    ("dram_pct", "DRAM %", "{:.0f}", "GPU Speed Of Light", "DRAM Throughput", None),
    ("l2_pct", "L2 %", "{:.0f}", "GPU Speed Of Light", "L2 Cache Throughput", None),
    ("l2_hit_pct", "L2 hit %", "{:.0f}", "Memory Workload", "L2 Hit Rate", None),
    ("mem_tbs", "TB/s", "{:.2f}", "Memory Workload", "Memory Throughput", TO_TBS),
    ("ipc", "IPC", "{:.2f}", "Compute Workload", "Executed Ipc Active", None),
    ("occ_pct", "occ %", "{:.0f}", "Occupancy", "Achieved Occupancy", None),
    ("cycles_per_issue", "cyc/issue", "{:.1f}", "Warp State", "Warp Cycles Per Issued Instruction", None),
    ("regs", "regs", "{:.0f}", "Launch Statistics", "Registers Per Thread", None),
    ("smem_kb", "smem KB", "{:.1f}", "Launch Statistics",
     ("Dynamic Shared Memory Per Block", "Static Shared Memory Per Block"), TO_KB),
]


def summary(k):
    """The columns of the per-kernel table (None where the report lacks the metric or its unit is
    not one the column converts from)."""
    out = {}
    for key, _, _, section, names, scale in COLUMNS:
        values = []
        for name in (names,) if isinstance(names, str) else names:
            unit, value = metric(k, section, name)
            if scale is not None:
                value = value * scale[unit] if value is not None and unit in scale else None
            if value is not None:
                values.append(value)
        out[key] = sum(values) if values else None
    return out


def cell(fmt, v):
    return "-" if v is None else fmt.format(v)


def short(name, width=100):
    """The name without `void ` and its parameter list, cut to `width`."""
    name = re.sub(r"^void ", "", name)
    name = re.sub(r"\((?:[^()]|\([^()]*\))*\)$", "", name) if name.endswith(")") else name
    return name if len(name) <= width else name[: width - 1] + "…"


def kernel_table(kernels):
    dims = lambda d: "×".join(map(str, d)) if d else "-"  # noqa: E731 (None: a header not recognised)
    lines = ["| # | label | kernel | grid | block | " + " | ".join(c[1] for c in COLUMNS) + " |",
             "|---|---|---|---|---|" + "---:|" * len(COLUMNS)]
    for i, k in enumerate(kernels):
        s = k["summary"]
        lines.append(f"| {i} | {k['label'] or '-'} | `{short(k['name'])}` | {dims(k['grid'])} | {dims(k['block'])} | "
                     + " | ".join(cell(c[2], s[c[0]]) for c in COLUMNS) + " |")
    return lines


def layer_table(kernels):
    """Per layer and pass, the dense layer's kernel time (the bench's dense call that row is
    measured against: x·W0 forward, dy·W0ᵀ for w0+lr's backward, dy·W0ᵀ and xᵀ·dy for lr's), each
    implementation's total, and its ratio to cublas's."""
    totals, impls, dense = {}, [], {}
    for k in kernels:
        us = k["summary"]["us"]
        if us is not None and (d := DENSE_LABEL.match(k["label"] or "")):
            dense[(d["shape"], d["call"])] = dense.get((d["shape"], d["call"]), 0.0) + us
        m = LAYER_LABEL.match(k["label"] or "")
        if not m or us is None:
            continue
        row = totals.setdefault((m["pass_"], m["shape"]), {})
        row[m["imp"]] = row.get(m["imp"], 0.0) + us
        if m["imp"] not in impls:
            impls.append(m["imp"])
    if not totals:
        return []
    others = [i for i in impls if i != "cublas"]
    head = ["pass", "shape", "dense µs"] + [f"{i} µs" for i in impls] + [f"{i} / cublas" for i in others if "cublas" in impls]
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
    for (pass_, shape), row in totals.items():
        call = "fwd" if pass_.startswith("fwd") else "bwd dx" if pass_ == "bwd w0+lr" else "bwd dx+dW"
        cells = [pass_, shape, cell("{:.1f}", dense.get((shape.split(" ")[0], call)))]
        cells += [cell("{:.1f}", row.get(i)) for i in impls]
        if "cublas" in impls:
            base = row.get("cublas")
            cells += [cell("{:.2f}", row[i] / base if base and i in row else None) for i in others]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("logs", nargs="+", help="ncu's text output with the bench's capture lines (gpu-run.sh's ncu-*.log)")
    ap.add_argument("--md", help="also write the tables here")
    ap.add_argument("--json", help="every metric of every profiled kernel, with its label")
    args = ap.parse_args()
    out, doc = [], []
    for path in args.logs:
        try:
            with open(path, errors="replace") as f:
                kernels, problems = parse(f.read())
        except OSError as e:
            sys.exit(f"error: cannot read {path}: {e.strerror}")
        for k in kernels:
            k["summary"] = summary(k)
        doc.append(dict(log=path, kernels=kernels, problems=problems))
        out.append(f"## {os.path.basename(path)}: {len(kernels)} profiled kernels")
        out += [f"note: {p}" for p in problems]
        if not kernels:
            out.append("no Nsight Compute results in it (no ncu on the machine, or the step was cut before the program ended)")
            continue
        layers = layer_table(kernels)
        if layers:
            out += ["", "Total kernel time per call (ncu's Duration, summed over the call's kernels):", ""] + layers
        out += [""] + kernel_table(kernels) + [""]
    text = "\n".join(out)
    print(text)
    if args.md:
        with open(args.md, "w") as f:
            f.write(text + "\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1)


if __name__ == "__main__":
    main()
