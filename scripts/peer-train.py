#!/usr/bin/env python3
"""The peer's training throughput: the same GPT-2 step (forward, backward, AdamW) in PyTorch, on the
same device kind, shapes and thread count as `lowrank bench-train`, so the ratio is measured side by side.
With `--lowrank efficient`, the chosen matrices (`--lowrank-layers`, the MLP's by default) are
efficient InRank's factors as the paper's reference code trains them (beside `bench-train --lowrank
efficient` at the same rank and buffer); with `--lowrank lora`, LoRA adapters on a frozen base as
its reference code (loralib) and PEFT train them (beside `bench-train --lowrank lora`).
Prints one JSON object per configuration."""
import argparse, json, math, time
import torch
import torch.nn as nn
import torch.nn.functional as F


def live_width(n_in, n_out, rank, buffer):
    """Efficient InRank's live width k = rank + buffer and its capacity R = min(n_in, n_out) // 2, the
    buffer clamped to R // 4 as `lowrank` clamps it (src/lowrank/layer.rs), so both train the same k."""
    capacity = min(n_in, n_out) // 2
    buffer = max(1, min(buffer, capacity // 4))
    if rank > capacity - buffer - 1:
        raise SystemExit(f"--rank-init {rank} is above the capacity of a {n_in}x{n_out} layer: R = {capacity}, "
                         f"buffer {buffer}, ranks up to {capacity - buffer - 1}")
    return rank + buffer, capacity


class InRankFactors(nn.Module):
    """Efficient InRank's layer as the reference code (github.com/jiaweizzhao/InRank,
    src/models/layers/in_rank_efficient.py) trains it in stage 1, written again here: factors A
    (R x n_in) and B (n_out x R) allocated at the capacity R, both Kaiming-uniform, a zero bias; the
    forward multiplies by the live slices, F.linear(F.linear(x, A[:k]), B[:, :k], bias), so autograd
    hands AdamW gradients of the whole capacity, zero past k. Rank checks are left out: a timed step
    of either program has none (their first comes after 25 steps in ours, 200 forward calls in it)."""

    def __init__(self, n_in, n_out, live, capacity):
        super().__init__()
        self.a = nn.Parameter(torch.empty(capacity, n_in))
        self.b = nn.Parameter(torch.empty(n_out, capacity))
        self.bias = nn.Parameter(torch.zeros(n_out))
        nn.init.kaiming_uniform_(self.a, a=math.sqrt(5))
        nn.init.kaiming_uniform_(self.b, a=math.sqrt(5))
        self.live = live

    def forward(self, x):
        return F.linear(F.linear(x, self.a[: self.live]), self.b[:, : self.live], self.bias)

    def live_params(self):
        return self.live * (self.a.shape[1] + self.b.shape[0]) + self.bias.numel()


class LoRAAdapter(nn.Module):
    """A LoRA layer as its reference code (github.com/microsoft/LoRA, loralib/layers.py) and PEFT
    run it, written again here: the frozen base F.linear(x, W0, b0) plus (x·Aᵀ·Bᵀ)·α/r, A (r x n_in)
    Kaiming-uniform, B (n_out x r) zero, α = 2r as `lowrank`'s default; no dropout (ours has none).
    Only A and B train: the base's weight gets no gradient, so the backward forms none."""

    def __init__(self, n_in, n_out, rank):
        super().__init__()
        self.base = nn.Linear(n_in, n_out)
        self.base.requires_grad_(False)
        self.lora_a = nn.Parameter(torch.empty(rank, n_in))
        self.lora_b = nn.Parameter(torch.zeros(n_out, rank))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        self.scaling = 2.0

    def forward(self, x):
        return self.base(x) + F.linear(F.linear(x, self.lora_a), self.lora_b) * self.scaling


def linear(n_in, n_out, lowrank):
    """A dense nn.Linear, or with lowrank = ("efficient", rank, buffer) efficient InRank's factors,
    with ("lora", rank, _) a LoRA adapter on a frozen nn.Linear."""
    if lowrank is None:
        return nn.Linear(n_in, n_out)
    mode, rank, buffer = lowrank
    if mode == "lora":
        return LoRAAdapter(n_in, n_out, rank)
    return InRankFactors(n_in, n_out, *live_width(n_in, n_out, rank, buffer))


class Block(nn.Module):
    def __init__(self, c, heads, mlp=None, attn=None):
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(c), nn.LayerNorm(c)
        self.c_attn, self.c_proj = linear(c, 3 * c, attn), linear(c, c, attn)
        self.c_fc, self.mlp_proj = linear(c, 4 * c, mlp), linear(4 * c, c, mlp)
        self.heads = heads

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).contiguous().view(b, t, c)
        x = x + self.c_proj(y)
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self, layers, heads, c, vocab=50304, ctx=1024, lowrank=None, where="mlp"):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, c), nn.Embedding(ctx, c)
        mlp, attn = (lowrank if where in ("mlp", "all") else None), (lowrank if where in ("attn", "all") else None)
        self.blocks = nn.ModuleList(Block(c, heads, mlp, attn) for _ in range(layers))
        self.ln_f = nn.LayerNorm(c)
        # GPT-2's init, as ours: N(0, 0.02), residual projections scaled by 1/sqrt(2L), zero biases
        # (the low-rank factors keep their own init).
        for name, p in self.named_parameters():
            if name.endswith((".a", ".b", ".lora_a", ".lora_b")):
                continue
            if p.dim() == 2:
                residual = name.replace(".base.", ".").endswith(("c_proj.weight", "mlp_proj.weight"))
                std = 0.02 / math.sqrt(2 * layers) if residual else 0.02
                nn.init.normal_(p, std=std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)
        if lowrank is not None and lowrank[0] == "lora":
            # LoRA trains its adapters alone: embeddings, LayerNorms and every base tensor frozen.
            for name, p in self.named_parameters():
                p.requires_grad_(name.endswith((".lora_a", ".lora_b")))

    def forward(self, idx, targets):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device))
        for blk in self.blocks:
            x = blk(x)
        logits = self.ln_f(x) @ self.wte.weight.T  # tied LM head
        return F.cross_entropy(logits[..., :50257].reshape(-1, 50257), targets.reshape(-1))

    def live_params(self):
        """Parameters as `lowrank bench-train` counts them: InRank's factors at their live width,
        and in LoRA the trained adapters alone."""
        if any(isinstance(m, LoRAAdapter) for m in self.modules()):
            return sum(p.numel() for p in self.parameters() if p.requires_grad)
        factors = [m for m in self.modules() if isinstance(m, InRankFactors)]
        held = sum(p.numel() for m in factors for p in m.parameters())
        return sum(p.numel() for p in self.parameters()) - held + sum(m.live_params() for m in factors)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", action="append", required=True, help="name:layers:heads:channels")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu, or cuda (then bf16 autocast, as our bf16 backend)")
    ap.add_argument("--lowrank", choices=["dense", "efficient", "lora"], default="dense",
                    help="efficient: efficient InRank's factors, as its reference code trains them; lora: LoRA adapters "
                         "on a frozen base, as loralib and PEFT train them")
    ap.add_argument("--lowrank-layers", choices=["mlp", "attn", "all"], default="mlp", help="which matrices (as bench-train's)")
    ap.add_argument("--rank-init", type=int, default=2, help="the rank r (as bench-train's --rank-init)")
    ap.add_argument("--rank-buffer", type=int, default=100, help="the buffer b, clamped to R // 4 (as bench-train's)")
    args = ap.parse_args()
    lowrank = None if args.lowrank == "dense" else (args.lowrank, args.rank_init, args.rank_buffer)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    for spec in args.config:
        name, layers, heads, c = spec.split(":")
        model = GPT(int(layers), int(heads), int(c), lowrank=lowrank, where=args.lowrank_layers).to(args.device)
        gpu = args.device.startswith("cuda")
        trained = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(trained, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=gpu)
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
        mean = sum(times[2:]) / len(times[2:])
        print(json.dumps(dict(peer="pytorch", torch=torch.__version__, device=args.device, model=name, batch=args.batch, seq=args.seq,
                              lowrank=args.lowrank, rank_init=args.rank_init if lowrank else None,
                              lowrank_layers=args.lowrank_layers if lowrank else None,
                              threads=args.threads, median_step_s=med, mean_step_s=mean, tok_per_s=args.batch * args.seq / med,
                              params=model.live_params(), params_allocated=sum(p.numel() for p in model.parameters()),
                              loss=loss.item())), flush=True)


if __name__ == "__main__":
    main()
