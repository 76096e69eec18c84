"""scripts/peer-train.py's efficient InRank layer, the PyTorch peer of `bench-train --lowrank
efficient`: its live width and capacity against the values `lowrank` gives the same layers (worked
by hand from src/lowrank/layer.rs: R = min(n_in, n_out) // 2, b clamped to R // 4), its forward
against a float64 product of the live slices, its gradient zero past the live width (the reference
code's AdamW sees the whole capacity), and the parameter count it reports against GPT-2 small's,
counted by hand. Needs torch (skipped without it: CI has none; the GPU machine and a development
machine with torch run them). Run by .ci/run: python3 -m unittest discover -s scripts/tests"""
import importlib.util
import json
import os
import subprocess
import sys
import unittest

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "peer-train.py")
HAVE_TORCH = importlib.util.find_spec("torch") is not None


def load_peer():
    spec = importlib.util.spec_from_file_location("peer_train", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@unittest.skipUnless(HAVE_TORCH, "torch is not installed")
class PeerTrainInRank(unittest.TestCase):
    def setUp(self):
        self.peer = load_peer()

    def test_live_width_and_capacity_match_lowranks_layers(self):
        # GPT-2 small's MLP at r = 96: R = 384, b = min(100, 96) = 96, k = 192, both directions.
        self.assertEqual(self.peer.live_width(768, 3072, 96, 100), (192, 384))
        self.assertEqual(self.peer.live_width(3072, 768, 96, 100), (192, 384))
        # The tiny model's 128 x 512: R = 64, b = 16, ranks up to 47.
        self.assertEqual(self.peer.live_width(128, 512, 2, 100), (18, 64))
        self.assertEqual(self.peer.live_width(128, 512, 47, 100), (63, 64))
        with self.assertRaises(SystemExit) as refused:
            self.peer.live_width(128, 512, 48, 100)
        self.assertIn("ranks up to 47", str(refused.exception))

    def test_forward_is_the_product_of_the_live_slices_and_gradients_stop_there(self):
        import numpy as np
        import torch
        torch.manual_seed(1)
        layer = self.peer.InRankFactors(24, 40, live=7, capacity=12)
        with torch.no_grad():
            layer.bias.copy_(torch.randn(40))
        x = torch.randn(5, 24)
        y = layer(x)
        a, b = layer.a.detach().double().numpy(), layer.b.detach().double().numpy()
        want = x.double().numpy() @ a[:7].T @ b[:, :7].T + layer.bias.detach().double().numpy()
        np.testing.assert_allclose(y.detach().double().numpy(), want, rtol=1e-5, atol=1e-5)
        y.square().sum().backward()
        self.assertEqual(tuple(layer.a.grad.shape), (12, 24))
        self.assertTrue(bool((layer.a.grad[7:] == 0).all()) and bool((layer.b.grad[:, 7:] == 0).all()))
        self.assertGreater(float(layer.a.grad[:7].abs().sum()), 0.0)

    def test_gpt2_small_reports_its_live_parameters(self):
        model = self.peer.GPT(12, 12, 768, lowrank=("efficient", 96, 100))
        dense = self.peer.GPT(12, 12, 768)
        # Dense GPT-2 small with the vocabulary padded to 50304, as peer-train.py builds it.
        c, v, l = 768, 50304, 12
        per_block = 2 * 2 * c + (c * 3 * c + 3 * c) + (c * c + c) + (c * 4 * c + 4 * c) + (4 * c * c + c)
        want_dense = v * c + 1024 * c + l * per_block + 2 * c
        self.assertEqual(dense.live_params(), want_dense)
        # Each MLP matrix's weight becomes two factors of width 192 (biases unchanged).
        want = want_dense - l * 2 * (c * 4 * c) + l * 2 * 192 * (c + 4 * c)
        self.assertEqual(model.live_params(), want)
        self.assertEqual(sum(p.numel() for p in model.parameters()), want + l * 2 * (384 - 192) * (c + 4 * c))

    def test_lora_adds_the_scaled_adapter_to_a_frozen_base_and_trains_it_alone(self):
        import numpy as np
        import torch
        torch.manual_seed(2)
        layer = self.peer.LoRAAdapter(24, 40, rank=3)
        with torch.no_grad():
            layer.lora_b.copy_(torch.randn(40, 3))  # B starts at zero; any B tests the product
        x = torch.randn(5, 24)
        d = lambda t: t.detach().double().numpy()
        want = d(x) @ d(layer.base.weight).T + d(layer.base.bias) + 2.0 * (d(x) @ d(layer.lora_a).T @ d(layer.lora_b).T)
        np.testing.assert_allclose(d(layer(x)), want, rtol=1e-5, atol=1e-5)
        # GPT-2 small with adapters of rank 8 on all four matrices of every block: only they
        # train, 12 · 8 · ((768 + 2304) + (768 + 768) + (768 + 3072) + (3072 + 768)) parameters.
        model = self.peer.GPT(12, 12, 768, lowrank=("lora", 8, 0), where="all")
        trained = [n for n, p in model.named_parameters() if p.requires_grad]
        self.assertEqual(len(trained), 12 * 4 * 2)
        self.assertTrue(all(n.endswith((".lora_a", ".lora_b")) for n in trained))
        self.assertEqual(model.live_params(), 12 * 8 * (3072 + 1536 + 3840 + 3840))

    def test_one_step_prints_the_low_rank_run(self):
        run = subprocess.run([sys.executable, SCRIPT, "--config", "tiny:2:2:64", "--steps", "1", "--threads", "1",
                              "--lowrank", "efficient", "--rank-init", "4"], capture_output=True, text=True)
        self.assertEqual(run.returncode, 0, run.stderr)
        r = json.loads(run.stdout.strip().splitlines()[-1])
        self.assertEqual((r["lowrank"], r["rank_init"], r["model"]), ("efficient", 4, "tiny"))
        self.assertLess(r["params"], r["params_allocated"])


if __name__ == "__main__":
    unittest.main()
