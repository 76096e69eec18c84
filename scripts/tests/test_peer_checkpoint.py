"""scripts/peer-checkpoint.py, PyTorch's side of a checkpoint's cost: what it saves is what ours
saves (GPT-2's weights and AdamW's two moments, f32: 3 × 4 bytes a parameter, give or take
torch.save's framing), durably, and it says how long that took. Needs torch and transformers
(skipped without them: CI has neither). Run by .ci/run: python3 -m unittest discover -s scripts/tests"""
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import unittest

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "peer-checkpoint.py")
HAVE_TORCH = all(importlib.util.find_spec(m) is not None for m in ("torch", "transformers"))
GPT2_PARAMS = 124_439_808  # transformers' GPT2LMHeadModel, the LM head tied to wte


@unittest.skipUnless(HAVE_TORCH, "torch and transformers are not installed")
class PeerCheckpoint(unittest.TestCase):
    def test_saves_weights_and_both_moments_and_leaves_nothing(self):
        with tempfile.TemporaryDirectory() as d:
            run = subprocess.run([sys.executable, SCRIPT, "--model", "gpt2", "--out", d],
                                 capture_output=True, text=True)
            self.assertEqual(run.returncode, 0, run.stderr)
            r = json.loads(run.stdout.strip().splitlines()[-1])
            want = 3 * 4 * GPT2_PARAMS
            self.assertGreaterEqual(r["bytes"], want)
            self.assertLess(r["bytes"], want * 1.01)
            self.assertAlmostEqual(r["total_s"], r["save_s"] + r["fsync_rename_s"], places=2)
            self.assertEqual(os.listdir(d), [])


if __name__ == "__main__":
    unittest.main()
