"""scripts/peer-llmc.py's CUDA mode against a stand-in for llm.c's train_gpt2cu: a script that
checks what llm.c's main() and dataloader require of its command line and shards (the rules of
train_gpt2.cu at 5afc5706, restated here: every flag takes a value, `-v 0` divides by zero, a
shard is a 256-int32 header with magic 20240520 and version 1, then exactly that many uint16
tokens, each below 50257, at least B·T + 1 of them) and prints its step lines in llm.c's format.
The expected medians are computed here from the times the stand-in is told to print.
Run by .ci/run: python3 -m unittest discover -s scripts/tests"""
import json
import os
import stat
import subprocess
import sys
import tempfile
import textwrap
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "..", "peer-llmc.py")

# The stand-in: argv checks, shard checks, then one line per step with the times in $FAKE_MS.
FAKE = textwrap.dedent("""\
    #!{python}
    import os, struct, sys
    args = sys.argv[1:]
    assert len(args) % 2 == 0, "every llm.c flag takes a value"
    flags = dict(zip(args[0::2], args[1::2]))
    with open(os.environ["FAKE_LOG"], "a") as log:
        log.write(" ".join(args) + "\\n")
    B, T, steps = int(flags["-b"]), int(flags["-t"]), int(flags["-x"])
    assert int(flags["-v"]) > steps, "validation must not fall inside the run (-v 0 divides by zero)"
    assert flags["-m"] == "0" and flags["-s"] == "0" and flags["-h"] == "0" and flags["-n"] == "0"
    assert flags["-e"] in ("d12", "d24"), flags["-e"]
    assert "-o" not in flags
    for key in ("-i", "-j"):
        data = open(flags[key], "rb").read()
        magic, version, ntok = struct.unpack("<3i", data[:12])
        assert (magic, version) == (20240520, 1), (magic, version)
        assert len(data) == 256 * 4 + 2 * ntok, "size must match the header's count exactly"
        assert ntok >= B * T + 1, ntok
        tokens = struct.unpack(f"<{{ntok}}H", data[1024:])
        assert max(tokens) < 50257 and len(set(tokens)) > 1
    if os.environ.get("FAKE_FAIL"):
        print("an error of llm.c's"); sys.exit(1)
    ms = [float(x) for x in os.environ["FAKE_MS"].split(",")]
    for step in range(steps):
        t = ms[step % len(ms)] * (1 + int(flags["-r"]))
        print(f"step {{step + 1:4d}}/{{steps}} | loss 10.987654 (+nanz)| norm 12.3456 (+nanz)| lr 3.00e-04 | {{t:.2f}} ms | 41.2% bf16 MFU | 123456 tok/s")
    print("total average iteration time: 1.0 ms")
    """).format(python=sys.executable)


class Cuda(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.binary = os.path.join(self.dir.name, "train_gpt2cu")
        with open(self.binary, "w") as f:
            f.write(FAKE)
        os.chmod(self.binary, os.stat(self.binary).st_mode | stat.S_IXUSR)
        with open(self.binary + ".json", "w") as f:
            json.dump({"llmc_commit": "abc123"}, f)
        self.log = os.path.join(self.dir.name, "argv.log")

    def tearDown(self):
        self.dir.cleanup()

    def argv_log(self):
        with open(self.log) as f:
            return f.read()

    def run_script(self, *extra, ms="500,400,100,102,98,101,99", fail=False):
        env = dict(os.environ, FAKE_LOG=self.log, FAKE_MS=ms)
        if fail:
            env["FAKE_FAIL"] = "1"
        return subprocess.run([sys.executable, SCRIPT, "cuda", "--binary", self.binary, "--work", self.dir.name,
                               "--batch", "4", "--seq", "64", "--steps", "5", *extra], capture_output=True, text=True, env=env)

    def test_the_median_drops_two_warm_up_steps_per_recompute_setting(self):
        run = self.run_script("--config", "gpt2:12:12:768")
        self.assertEqual(run.returncode, 0, run.stderr)
        rows = [json.loads(line) for line in run.stdout.splitlines()]
        self.assertEqual([r["recompute"] for r in rows], [0, 1])
        # Steps 3-7 print 100, 102, 98, 101, 99 ms (doubled with -r 1); 500 and 400 are warm-up.
        self.assertAlmostEqual(rows[0]["median_step_s"], 0.100)
        self.assertAlmostEqual(rows[1]["median_step_s"], 0.200)
        self.assertAlmostEqual(rows[0]["tok_per_s"], 4 * 64 / 0.100)
        self.assertEqual((rows[0]["model"], rows[0]["steps"], rows[0]["llmc_commit"]), ("gpt2", 5, "abc123"))
        argv = [line.split() for line in self.argv_log().splitlines()]
        self.assertEqual([a[a.index("-r") + 1] for a in argv], ["0", "1"])
        self.assertEqual(argv[0][argv[0].index("-x") + 1], "7")

    def test_medium_is_llmc_depth_24_and_other_shapes_are_refused(self):
        run = self.run_script("--config", "gpt2-medium:24:16:1024", "--recompute", "1")
        self.assertEqual(run.returncode, 0, run.stderr)
        self.assertIn("-e d24", self.argv_log())
        run = self.run_script("--config", "tiny:4:4:128")
        self.assertNotEqual(run.returncode, 0)
        self.assertIn("has no 4 layers of 128 channels in 4 heads", run.stderr)

    def test_a_failed_or_short_run_is_an_error_with_its_output(self):
        run = self.run_script("--config", "gpt2:12:12:768", fail=True)
        self.assertNotEqual(run.returncode, 0)
        self.assertIn("exited 1 after 0 of 7 steps", run.stderr)
        self.assertIn("an error of llm.c's", run.stderr)


if __name__ == "__main__":
    unittest.main()
