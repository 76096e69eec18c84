"""scripts/peer-sample.py, the PyTorch peer of `lowrank sample`'s decoding: its cached decode, a
prompt then one token at a time, gives the logits of peer-train.py's whole causal forward (the same
blocks without a cache) at every position, and a short run prints its JSON. Needs torch (skipped
without it: CI has none). Run by .ci/run: python3 -m unittest discover -s scripts/tests"""
import importlib.util
import json
import os
import subprocess
import sys
import unittest

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "peer-sample.py")
HAVE_TORCH = importlib.util.find_spec("torch") is not None


def load_peer():
    spec = importlib.util.spec_from_file_location("peer_sample", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@unittest.skipUnless(HAVE_TORCH, "torch is not installed")
class PeerSample(unittest.TestCase):
    def test_cached_decoding_gives_the_whole_forwards_logits(self):
        import torch
        peer = load_peer()
        torch.manual_seed(3)
        model = peer.load_gpt()(2, 2, 32, ctx=16).double().eval()
        with torch.no_grad():  # GPT-2's small init leaves attention near uniform: larger weights
            for p in model.parameters():
                p.normal_(0.0, 0.3)
        tokens = torch.randint(0, peer.VOCAB, (1, 9))
        with torch.no_grad():
            x = model.wte(tokens) + model.wpe(torch.arange(9))
            for blk in model.blocks:
                x = blk(x)
            want = peer.logits_of(model, x)[0]
        cache = peer.Cache(model, 16, "cpu", torch.float64)
        got = [peer.decode(model, cache, tokens[:, :4], 0)[0]]
        got += [peer.decode(model, cache, tokens[:, t:t + 1], t)[0] for t in range(4, 9)]
        for position, logits in zip(range(3, 9), got):
            torch.testing.assert_close(logits, want[position], rtol=1e-9, atol=1e-9)

    def test_a_short_run_prints_its_speed(self):
        run = subprocess.run([sys.executable, SCRIPT, "--config", "tiny:2:2:64", "--tokens", "5", "--context", "16",
                              "--threads", "1"], capture_output=True, text=True)
        self.assertEqual(run.returncode, 0, run.stderr)
        r = json.loads(run.stdout.strip().splitlines()[-1])
        self.assertEqual((r["tokens"], r["model"], r["dtype"]), (5, "tiny", "float32"))
        self.assertGreater(r["tok_per_s"], 0.0)


if __name__ == "__main__":
    unittest.main()
