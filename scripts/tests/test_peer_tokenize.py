"""scripts/peer-tokenize.py, tiktoken's side of `lowrank tokenize`: GPT-2's known ids for a file, and
--compare telling equal shards from others (shards written here by hand from llm.c's layout). Needs
tiktoken and tiktoken-rs's r50k_base file in cargo's registry (skipped without them: CI has no
tiktoken). Run by .ci/run: python3 -m unittest discover -s scripts/tests"""
import importlib.util
import json
import os
import struct
import subprocess
import sys
import tempfile
import unittest

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "peer-tokenize.py")
HAVE_TIKTOKEN = importlib.util.find_spec("tiktoken") is not None


def write_shard(path, tokens):
    header = struct.pack("<3i", 20240520, 1, len(tokens)) + bytes(1024 - 12)
    with open(path, "wb") as f:
        f.write(header + struct.pack(f"<{len(tokens)}H", *tokens))


@unittest.skipUnless(HAVE_TIKTOKEN, "tiktoken is not installed")
class PeerTokenize(unittest.TestCase):
    def run_peer(self, *args):
        run = subprocess.run([sys.executable, SCRIPT, *args, "--procs", "1"], capture_output=True, text=True)
        if "no r50k_base.tiktoken" in run.stderr:
            self.skipTest("tiktoken-rs is not in cargo's registry")
        return run

    def test_known_ids_and_compare(self):
        with tempfile.TemporaryDirectory() as d:
            text = os.path.join(d, "texts")
            os.mkdir(text)
            with open(os.path.join(text, "a.txt"), "w") as f:
                f.write("Hello world")
            with open(os.path.join(text, ".hidden"), "w") as f:
                f.write("skipped")
            write_shard(os.path.join(d, "t_train_000000.bin"), [50256, 15496, 995])
            run = self.run_peer(text, "--compare", os.path.join(d, "t_train_*.bin"))
            self.assertEqual(run.returncode, 0, run.stderr)
            result = json.loads(run.stdout)
            self.assertEqual((result["files"], result["tokens"], result["same_tokens"]), (1, 3, True))

            write_shard(os.path.join(d, "t_train_000000.bin"), [50256, 15496, 994])
            run = self.run_peer(text, "--compare", os.path.join(d, "t_train_*.bin"))
            self.assertEqual(run.returncode, 1, run.stderr)
            result = json.loads(run.stdout)
            self.assertEqual((result["same_tokens"], result["first_difference"]), (False, 2))


if __name__ == "__main__":
    unittest.main()
