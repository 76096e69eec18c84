"""scripts/ncu-summary.py on ncu-sample.log: a report laid out as Nsight Compute prints one (the
bench's capture lines and ncu's progress lines, then the results; a long value one space
after its unit, a unit filling its column, units in several scales, a rule message with hyphens, a templated
name with parentheses, both `==PROF== Profiling` forms). Every expected number below is read off the
sample by eye, not from the script. Run by .ci/run: python3 -m unittest discover -s scripts/tests"""
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "..", "ncu-summary.py")
SAMPLE = os.path.join(HERE, "ncu-sample.log")

spec = importlib.util.spec_from_file_location("ncu_summary", SCRIPT)
ncu = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ncu)


def sample():
    with open(SAMPLE) as f:
        return f.read()


class Parse(unittest.TestCase):
    def setUp(self):
        self.kernels, self.problems = ncu.parse(sample())
        for k in self.kernels:
            k["summary"] = ncu.summary(k)

    def test_every_result_gets_the_label_it_was_captured_under(self):
        self.assertEqual(self.problems, [])
        self.assertEqual([k["label"] for k in self.kernels], [
            "dense 8192x768>3072 fwd",
            "fused fwd w0+lr 8192x768>3072 r96", "fused fwd w0+lr 8192x768>3072 r96",
            "cublas fwd w0+lr 8192x768>3072 r96", "cublas fwd w0+lr 8192x768>3072 r96"])
        self.assertEqual(self.kernels[2]["name"], "lowrank_y_tma256_bf16")
        self.assertEqual(self.kernels[3]["name"], "void cutlass::Kernel2<cutlass_80_wmma_tensorop_bf16_s161616gemm_bf16_16x16_128x1_tn_align8>(T1::Params)")
        self.assertEqual(self.kernels[0]["grid"], [24, 6, 1])
        self.assertEqual(self.kernels[3]["block"], [128, 1, 1])

    def test_durations_in_microseconds_whatever_the_unit(self):
        self.assertEqual([k["summary"]["us"] for k in self.kernels], [51.20, 9.87, 50.0, 6.01, 52.00])

    def test_columns_split_by_the_rule_not_by_spaces(self):
        dense, project, fused = self.kernels[0]["summary"], self.kernels[1]["summary"], self.kernels[2]["summary"]
        self.assertEqual((dense["sm_pct"], dense["mem_pct"], dense["dram_pct"], dense["l2_pct"]), (78.41, 55.12, 30.02, 44.50))
        # "Memory Throughput" of the memory section (one space before a unit filling its column),
        # not the speed-of-light section's percentage of the same name.
        self.assertAlmostEqual(dense["mem_tbs"], 1.02)
        self.assertAlmostEqual(project["mem_tbs"], 2.48055)
        self.assertEqual((dense["l2_hit_pct"], project["l2_hit_pct"]), (81.30, 20.07))
        self.assertEqual((dense["ipc"], dense["cycles_per_issue"], dense["occ_pct"]), (1.21, 9.40, 18.60))
        self.assertEqual((fused["regs"], fused["smem_kb"], fused["occ_pct"]), (168, 213.00, 18.44))
        unit, value = self.kernels[0]["metrics"]["Warp State Statistics"]["Avg. Active Threads Per Warp"]
        self.assertEqual((unit, value), ("", "31.98"))
        self.assertEqual(self.kernels[0]["metrics"]["GPU Speed Of Light Throughput"]["Elapsed Cycles"], ["cycle", "301,442"])
        # A 13-character value widens its column: one space between the unit and it.
        self.assertEqual(self.kernels[2]["metrics"]["GPU Speed Of Light Throughput"]["SM Active Cycles"], ["cycle", "55,313,213.62"])

    def test_missing_sections_give_none(self):
        cut = self.kernels[3]["summary"]
        self.assertEqual((cut["l2_hit_pct"], cut["regs"], cut["occ_pct"]), (None, None, None))

    def test_per_call_totals_beside_cublas(self):
        lines = ncu.layer_table(self.kernels)
        self.assertEqual(lines[0], "| pass | shape | dense µs | fused µs | cublas µs | fused / cublas |")
        # dense (x·W0 alone): 51.20 µs; fused: 9.87 + 50.0 = 59.87 µs; cublas: 6.01 + 52.00 = 58.01
        # µs; ratio 1.032.
        self.assertEqual(lines[2], "| fwd w0+lr | 8192x768>3072 r96 | 51.2 | 59.9 | 58.0 | 1.03 |")
        self.assertEqual(len(lines), 3)

    def test_a_result_without_its_progress_line_is_left_unlabelled(self):
        text = sample().replace('==PROF== Profiling "Kernel2": 0%....50%....100% - 38 passes\n', "")
        kernels, problems = ncu.parse(text)
        self.assertIn("4 kernels profiled but 5 results: matched by name", problems)
        self.assertEqual([k["label"] for k in kernels], [
            "dense 8192x768>3072 fwd",
            "fused fwd w0+lr 8192x768>3072 r96", "fused fwd w0+lr 8192x768>3072 r96",
            None, "cublas fwd w0+lr 8192x768>3072 r96"])

    def test_a_profiled_kernel_without_a_result_shifts_no_label(self):
        text = sample()
        cut = text.index("  lowrank_project_narrow_bf16 (64"), text.index("  lowrank_y_tma256_bf16 (132")
        kernels, problems = ncu.parse(text[:cut[0]] + text[cut[1]:])
        self.assertIn("no result for profiled 'lowrank_project_narrow_bf16'", problems)
        self.assertEqual([(k["name"][:21], k["label"]) for k in kernels], [
            ("sm90_xmma_gemm_bf16bf", "dense 8192x768>3072 fwd"),
            ("lowrank_y_tma256_bf16", "fused fwd w0+lr 8192x768>3072 r96"),
            ("void cutlass::Kernel2", "cublas fwd w0+lr 8192x768>3072 r96"),
            ("sm90_xmma_gemm_bf16bf", "cublas fwd w0+lr 8192x768>3072 r96")])

    def test_an_unrecognised_header_does_not_pour_its_results_into_the_last_kernel(self):
        text = sample().replace("  lowrank_y_tma256_bf16 (132, 1, 1)x(384, 1, 1), Context 1, Stream 13, Device 0, CC 9.0",
                                "  lowrank_y_tma256_bf16 <<<132, 384>>> on context 1, stream 13")
        kernels, problems = ncu.parse(text)
        for k in kernels:
            k["summary"] = ncu.summary(k)
        self.assertTrue(any("a result header this script did not recognise" in p for p in problems), problems)
        self.assertEqual([k["name"][:12] for k in kernels], ["sm90_xmma_ge", "lowrank_proj", "?", "void cutlass", "sm90_xmma_ge"])
        # The projection keeps its own 9.87 µs; the unnamed result has the tma256 kernel's 50 µs
        # and, the counts agreeing, the label its place gives.
        self.assertEqual([k["summary"]["us"] for k in kernels], [51.20, 9.87, 50.0, 6.01, 52.00])
        self.assertEqual(kernels[2]["label"], "fused fwd w0+lr 8192x768>3072 r96")
        self.assertTrue(ncu.kernel_table(kernels)[4].startswith("| 2 | fused fwd w0+lr 8192x768>3072 r96 | `?` | - | - | 50.0 |"))

    def test_shared_memory_in_any_unit_dynamic_plus_static(self):
        report = "\n".join([
            "  k (1, 1, 1)x(32, 1, 1), Context 1, Stream 7, Device 0, CC 9.0",
            "    Section: Launch Statistics",
            "    ------------------------------- ----------- ------------",
            "    Metric Name                     Metric Unit Metric Value",
            "    ------------------------------- ----------- ------------",
            "    Dynamic Shared Memory Per Block  byte/block          768",
            "    Static Shared Memory Per Block   byte/block        1,024",
            "    ------------------------------- ----------- ------------",
            ""])
        kernels, _ = ncu.parse(report)
        self.assertAlmostEqual(ncu.summary(kernels[0])["smem_kb"], 1.792)
        # The sample's dense kernel: 208.90 Kbyte/block dynamic and 0 byte/block static.
        self.assertAlmostEqual(self.kernels[0]["summary"]["smem_kb"], 208.90)

    def test_a_log_without_results(self):
        kernels, problems = ncu.parse("capture: dense 200x64>256 fwd\nop shape\n")
        self.assertEqual((kernels, problems), ([], []))


class Command(unittest.TestCase):
    def test_writes_markdown_and_json(self):
        with tempfile.TemporaryDirectory() as d:
            md, js = os.path.join(d, "s.md"), os.path.join(d, "s.json")
            run = subprocess.run([sys.executable, SCRIPT, SAMPLE, "--md", md, "--json", js], capture_output=True, text=True)
            self.assertEqual(run.returncode, 0, run.stderr)
            self.assertIn("## ncu-sample.log: 5 profiled kernels", run.stdout)
            with open(md) as f:
                text = f.read()
            self.assertIn("| 2 | fused fwd w0+lr 8192x768>3072 r96 | `lowrank_y_tma256_bf16` | 132×1×1 | 384×1×1 | 50.0 |", text)
            # Without `void ` and the parameter list.
            self.assertIn("| `cutlass::Kernel2<cutlass_80_wmma_tensorop_bf16_s161616gemm_bf16_16x16_128x1_tn_align8>` |", text)
            with open(js) as f:
                doc = json.load(f)
            self.assertEqual(doc[0]["kernels"][1]["metrics"]["Memory Workload Analysis"]["Memory Throughput"], ["Gbyte/second", "2,480.55"])

    def test_a_missing_log_is_a_sentence(self):
        run = subprocess.run([sys.executable, SCRIPT, "/nonexistent/ncu.log"], capture_output=True, text=True)
        self.assertNotEqual(run.returncode, 0)
        self.assertIn("cannot read /nonexistent/ncu.log", run.stderr)
        self.assertNotIn("Traceback", run.stderr)


if __name__ == "__main__":
    unittest.main()
