"""scripts/compare-steps.py on a gpu-run.sh folder written here: our bench-train lines, PyTorch's (dense
and efficient InRank) and llm.c's, with step times chosen so that each ratio (the peer's time over
ours) is known by hand.
Run by .ci/run: python3 -m unittest discover -s scripts/tests"""
import json
import os
import subprocess
import sys
import tempfile
import unittest

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "compare-steps.py")


def row(peer, median, **extra):
    return json.dumps({"peer": peer, "model": "gpt2", "batch": 8, "seq": 1024, "median_step_s": median,
                       "tok_per_s": 8192 / median, **extra})


class CompareSteps(unittest.TestCase):
    def run_on(self, logs):
        with tempfile.TemporaryDirectory() as d:
            for name, text in logs.items():
                with open(os.path.join(d, name + ".log"), "w") as f:
                    f.write(text + "\n")
            run = subprocess.run([sys.executable, SCRIPT, d], capture_output=True, text=True)
        self.assertEqual(run.returncode, 0, run.stderr)
        return run.stdout

    def test_ratios_pair_our_steps_with_the_peer_run_the_same_way(self):
        out = self.run_on({
            "bench-train": "loading...\n" + row("lowrank", 0.200),
            "bench-train-recompute": row("lowrank", 0.250),
            "bench-train-efficient": row("lowrank", 0.160, lowrank="efficient", rank_init=64),
            "peer-train": row("pytorch", 0.300, torch="2.9", lowrank="dense", rank_init=None),
            "peer-train-efficient": row("pytorch", 0.280, torch="2.9", lowrank="efficient", rank_init=64),
            "bench-train-lora": row("lowrank", 0.100, lowrank="lora", rank_init=8),
            "peer-train-lora": row("pytorch", 0.125, torch="2.9", lowrank="lora", rank_init=8),
            "peer-llmc": row("llm.c", 0.150, recompute=0) + "\n" + row("llm.c", 0.200, recompute=1),
        })
        # PyTorch 0.300 / ours 0.200, efficient 0.280 / 0.160, LoRA 0.125 / 0.100; llm.c -r 0
        # 0.150 / 0.200; llm.c -r 1 0.200 / recompute 0.250.
        self.assertIn("ours / PyTorch: 1.50x (dense), 1.75x (efficient InRank, as its reference code), 1.25x (LoRA, as loralib); "
                      "ours / llm.c: 0.75x (GELU kept, llm.c -r 0), 0.80x (GELU recomputed", out)
        self.assertIn("peer-llmc -r 1 (llm.c)", out)
        self.assertIn("peer-train (PyTorch 2.9)", out)

    def test_a_missing_peer_or_other_shapes_give_no_ratio(self):
        out = self.run_on({"bench-train": row("lowrank", 0.2),
                           "peer-train": json.dumps({"peer": "pytorch", "model": "gpt2", "batch": 4, "seq": 1024,
                                                     "median_step_s": 0.1, "tok_per_s": 40960})})
        self.assertIn("ours / PyTorch: - (different shapes) (dense), - (efficient", out)
        self.assertIn("ours / llm.c: - (GELU kept", out)
        self.assertIn("steps: no bench-train", self.run_on({"doctor": "{}"}))

    def test_low_rank_steps_pair_only_at_the_same_rank(self):
        out = self.run_on({"bench-train-efficient": row("lowrank", 0.2, lowrank="efficient", rank_init=64),
                           "peer-train-efficient": row("pytorch", 0.3, lowrank="efficient", rank_init=96)})
        self.assertIn("- (different methods) (efficient InRank", out)
        # A PyTorch line from before the --lowrank flag (no "lowrank" key) is the dense step.
        out = self.run_on({"bench-train": row("lowrank", 0.2, lowrank="dense", rank_init=2),
                           "peer-train": row("pytorch", 0.25)})
        self.assertIn("ours / PyTorch: 1.25x (dense), - (efficient", out)


if __name__ == "__main__":
    unittest.main()
