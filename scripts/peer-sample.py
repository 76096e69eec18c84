#!/usr/bin/env python3
"""The peer's generation speed: GPT-2 decoding greedily with a KV cache in PyTorch, as `lowrank sample
--temperature 0` decodes, on the same device kind, model shape, prompt length, token count and thread
count, so the tokens/s are compared side by side. The model is peer-train.py's GPT (GPT-2's init; the
speed does not depend on the weights); the cache is preallocated for the whole context, as Hugging
Face's static cache, and each new token is one row through every layer with
F.scaled_dot_product_attention over the cached keys and values. The prompt goes through in one
causal forward first. Timed as ours: from the prompt to the last token, each token's id brought
to the host (ours downloads its logits). Prints one JSON object per configuration."""
import argparse, importlib.util, json, os, time
import torch
import torch.nn.functional as F

VOCAB = 50257


def load_gpt():
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "peer-train.py")
    spec = importlib.util.spec_from_file_location("peer_train", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.GPT


class Cache:
    """Each block's keys and values, (1, heads, context, head size), filled position by position."""

    def __init__(self, model, context, device, dtype):
        c = model.ln_f.normalized_shape[0]
        heads = model.blocks[0].heads
        shape = (1, heads, context, c // heads)
        self.kv = [(torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype))
                   for _ in model.blocks]


@torch.inference_mode()
def decode(model, cache, tokens, start):
    """Logits of the last of positions start..start + n of `tokens` (1, n), after positions 0..start
    are cached: a prompt from position 0, or one new token (the only masks it needs)."""
    n = tokens.shape[1]
    assert n == 1 or start == 0, "several new tokens after a cached prefix would need a mask"
    x = model.wte(tokens) + model.wpe(torch.arange(start, start + n, device=tokens.device))
    for blk, (kc, vc) in zip(model.blocks, cache.kv):
        c = x.shape[2]
        q, k, v = blk.c_attn(blk.ln_1(x)).split(c, dim=2)
        q, k, v = (z.view(1, n, blk.heads, c // blk.heads).transpose(1, 2) for z in (q, k, v))
        kc[:, :, start:start + n] = k
        vc[:, :, start:start + n] = v
        # A prompt from position 0 is causal within itself; a single new row sees every cached one.
        keys, values = kc[:, :, :start + n], vc[:, :, :start + n]
        y = F.scaled_dot_product_attention(q, keys, values, is_causal=n > 1 and start == 0)
        x = x + blk.c_proj(y.transpose(1, 2).reshape(1, n, c))
        x = x + blk.mlp_proj(F.gelu(blk.c_fc(blk.ln_2(x)), approximate="tanh"))
    return logits_of(model, x[:, -1])


def logits_of(model, x):
    return (model.ln_f(x) @ model.wte.weight.T)[..., :VOCAB]


def generate(model, cache, prompt, new_tokens):
    """Greedy continuation of `prompt` (a list of ids): the new ids."""
    device = model.wte.weight.device
    out, start = [], 0
    pending = torch.tensor([prompt], device=device)
    for _ in range(new_tokens):
        logits = decode(model, cache, pending, start)
        start += pending.shape[1]
        nxt = int(logits.argmax(dim=-1).item())
        out.append(nxt)
        pending = torch.tensor([[nxt]], device=device)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="gpt2:12:12:768", help="name:layers:heads:channels")
    ap.add_argument("--prompt-tokens", type=int, default=4, help="prompt length (ours: <|endoftext|> and the prompt's tokens)")
    ap.add_argument("--tokens", type=int, default=200)
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu (f32, as our CPU backend), or cuda (bf16 weights, as our compute copy)")
    args = ap.parse_args()
    if args.prompt_tokens + args.tokens > args.context + 1:
        raise SystemExit(f"--prompt-tokens {args.prompt_tokens} and --tokens {args.tokens} do not fit --context {args.context}")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    name, layers, heads, c = args.config.split(":")
    gpu = args.device.startswith("cuda")
    dtype = torch.bfloat16 if gpu else torch.float32
    model = load_gpt()(int(layers), int(heads), int(c), ctx=args.context).to(args.device, dtype).eval()
    prompt = torch.randint(0, VOCAB, (args.prompt_tokens,)).tolist()
    generate(model, Cache(model, args.context, args.device, dtype), prompt, 8)  # warm-up
    cache = Cache(model, args.context, args.device, dtype)
    if gpu:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = generate(model, cache, prompt, args.tokens)
    if gpu:
        torch.cuda.synchronize()
    secs = time.perf_counter() - t0
    print(json.dumps(dict(peer="pytorch", torch=torch.__version__, device=args.device, model=name, dtype=str(dtype).replace("torch.", ""),
                          prompt_tokens=args.prompt_tokens, tokens=len(out), context=args.context, threads=args.threads,
                          seconds=secs, tok_per_s=len(out) / secs)), flush=True)


if __name__ == "__main__":
    main()
