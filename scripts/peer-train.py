#!/usr/bin/env python3
"""The peer's training throughput: the same GPT-2 step (forward, backward, AdamW) in PyTorch, on the
same device kind, shapes and thread count as `lowrank bench-train`, so the ratio is measured side by side.
Prints one JSON object per configuration."""
import argparse, json, math, time
import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, c, heads):
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(c), nn.LayerNorm(c)
        self.c_attn, self.c_proj = nn.Linear(c, 3 * c), nn.Linear(c, c)
        self.c_fc, self.mlp_proj = nn.Linear(c, 4 * c), nn.Linear(4 * c, c)
        self.heads = heads

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).contiguous().view(b, t, c)
        x = x + self.c_proj(y)
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self, layers, heads, c, vocab=50304, ctx=1024):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, c), nn.Embedding(ctx, c)
        self.blocks = nn.ModuleList(Block(c, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(c)
        # GPT-2's init, as ours: N(0, 0.02), residual projections scaled by 1/sqrt(2L), zero biases.
        for name, p in self.named_parameters():
            if p.dim() == 2:
                std = 0.02 / math.sqrt(2 * layers) if name.endswith(("c_proj.weight", "mlp_proj.weight")) else 0.02
                nn.init.normal_(p, std=std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, idx, targets):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device))
        for blk in self.blocks:
            x = blk(x)
        logits = self.ln_f(x) @ self.wte.weight.T  # tied LM head
        return F.cross_entropy(logits[..., :50257].reshape(-1, 50257), targets.reshape(-1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", action="append", required=True, help="name:layers:heads:channels")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu, or cuda (then bf16 autocast, as our bf16 backend)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    for spec in args.config:
        name, layers, heads, c = spec.split(":")
        model = GPT(int(layers), int(heads), int(c)).to(args.device)
        gpu = args.device.startswith("cuda")
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=gpu)
        idx = torch.randint(0, 50257, (args.batch, args.seq + 1), device=args.device)
        times = []
        for step in range(args.steps + 2):  # two warm-up steps
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=gpu):
                loss = model(idx[:, :-1], idx[:, 1:])
            loss.backward()
            opt.step()
            if gpu:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        med = sorted(times[2:])[len(times[2:]) // 2]
        print(json.dumps(dict(peer="pytorch", torch=torch.__version__, device=args.device, model=name, batch=args.batch, seq=args.seq,
                              threads=args.threads, median_step_s=med, tok_per_s=args.batch * args.seq / med,
                              params=sum(p.numel() for p in model.parameters()), loss=loss.item())), flush=True)


if __name__ == "__main__":
    main()
