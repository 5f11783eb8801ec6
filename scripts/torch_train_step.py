#!/usr/bin/env python3
"""Times PyTorch training steps on the model and batch `tern train-bench --dump DIR` wrote, for the comparison in
scripts/gpu-run.sh.

The model is tern's engine written in plain PyTorch (Llama: RMSNorm, RoPE in tern's pair layout, causal GQA
attention through scaled_dot_product_attention, SwiGLU, tied head, cross-entropy), with AdamW as tern configures it
(betas, eps, decoupled weight decay on matrices only, global-norm clipping at 1.0). Same weights, same batch: the
first step's loss must equal tern's (the forward on real sizes is checked against an independent implementation),
and later steps stay close.

    python3 scripts/torch_train_step.py DIR [--steps 3] [--warmup 1] [--precision tf32|bf16|fp32 ...] [--json OUT]

Prints one JSON line per precision: losses, per-step seconds (CUDA events), median, tokens/s.
"""
import argparse
import json
import math
import os
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import load_file


def rope_tables(seq_len, head_dim, theta, device):
    half = head_dim // 2
    inv = torch.tensor([theta ** (-(2.0 * i) / head_dim) for i in range(half)], dtype=torch.float64)
    pos = torch.arange(seq_len, dtype=torch.float64)
    ang = torch.outer(pos, inv)
    return ang.cos().float().to(device), ang.sin().float().to(device)


def apply_rope(x, cos, sin, style):
    # x: [B, T, H, D]; cos/sin: [T, D/2]
    c = cos[None, :, None, :]
    s = sin[None, :, None, :]
    if style == "interleaved":
        a, b = x[..., 0::2], x[..., 1::2]
        ra, rb = a * c - b * s, a * s + b * c
        return torch.stack((ra, rb), dim=-1).flatten(-2)
    half = x.shape[-1] // 2
    a, b = x[..., :half], x[..., half:]
    return torch.cat((a * c - b * s, a * s + b * c), dim=-1)


def rmsnorm(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


class Model(torch.nn.Module):
    def __init__(self, cfg, weights, device):
        super().__init__()
        self.cfg = cfg
        self.p = torch.nn.ParameterDict()
        for name, t in weights.items():
            self.p[name.replace(".", "__")] = torch.nn.Parameter(t.to(device).clone())
        self.cos, self.sin = rope_tables(cfg["seq_len"], cfg["head_dim"], cfg["rope_theta"], device)

    def w(self, name):
        return self.p[name.replace(".", "__")]

    def forward(self, tokens):
        cfg = self.cfg
        B, T = tokens.shape
        H, Hkv, D = cfg["n_heads"], cfg["n_kv_heads"], cfg["head_dim"]
        eps = cfg["norm_eps"]
        emb = self.w("token_embd.weight")
        x = emb[tokens]
        for l in range(cfg["n_layers"]):
            n = lambda s: self.w(f"blk.{l}.{s}.weight")
            h = rmsnorm(x, n("attn_norm")[0], eps)
            q = (h @ n("attn_q").t()).view(B, T, H, D)
            k = (h @ n("attn_k").t()).view(B, T, Hkv, D)
            v = (h @ n("attn_v").t()).view(B, T, Hkv, D)
            q = apply_rope(q, self.cos[:T], self.sin[:T], cfg["rope_style"]).transpose(1, 2)
            k = apply_rope(k, self.cos[:T], self.sin[:T], cfg["rope_style"]).transpose(1, 2)
            v = v.transpose(1, 2)
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=1.0 / math.sqrt(D), enable_gqa=True)
            x = x + a.transpose(1, 2).reshape(B, T, H * D) @ n("attn_output").t()
            h = rmsnorm(x, n("ffn_norm")[0], eps)
            x = x + (F.silu(h @ n("ffn_gate").t()) * (h @ n("ffn_up").t())) @ n("ffn_down").t()
        h = rmsnorm(x, self.w("output_norm.weight")[0], eps)
        head = emb if cfg["tied_embeddings"] else self.w("output.weight")
        return h @ head.t()


def run(dir_, precision, steps, warmup, device):
    cfg = json.load(open(os.path.join(dir_, "config.json")))
    weights = load_file(os.path.join(dir_, "weights.safetensors"))
    batch = load_file(os.path.join(dir_, "batch.safetensors"))
    vocab = cfg["vocab_size"]
    tokens = batch["tokens"].to(device)
    targets = batch["targets"].clone()
    targets[(targets < 0) | (targets >= vocab)] = -100
    targets = targets.to(device)
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    torch.backends.cudnn.allow_tf32 = precision == "tf32"
    model = Model(cfg, weights, device)
    del weights
    decay = [p for n, p in model.p.items() if "norm" not in n]
    no_decay = [p for n, p in model.p.items() if "norm" in n]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg["lr"],
        betas=(cfg["beta1"], cfg["beta2"]),
        eps=cfg["eps"],
        fused=device == "cuda",
    )
    losses, step_s, norms = [], [], []
    for step in range(warmup + steps):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits = model(tokens)
        loss = F.cross_entropy(logits.float().view(-1, vocab), targets.view(-1), ignore_index=-100)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["max_grad_norm"] or float("inf"))
        opt.step()
        if device == "cuda":
            end.record()
            torch.cuda.synchronize()
            dt = start.elapsed_time(end) / 1000.0
        else:
            dt = float("nan")
        losses.append(loss.item())
        norms.append(norm.item())
        if step >= warmup:
            step_s.append(dt)
        print(f"pytorch {precision} step {step}: loss {losses[-1]:.6f}, grad norm {norms[-1]:.4f}, {dt:.4f} s", file=sys.stderr)
    s = sorted(step_s)
    median = s[len(s) // 2] if s else None
    n = tokens.numel()
    return {
        "tool": "pytorch",
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "precision": precision,
        "batch": cfg["batch"],
        "seq_len": cfg["seq_len"],
        "tokens_per_step": n,
        "losses": losses,
        "grad_norms": norms,
        "step_s": step_s,
        "median_step_s": median,
        "tokens_per_s": (n / median) if median else None,
        "peak_memory_bytes": torch.cuda.max_memory_allocated() if device == "cuda" else None,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--precision", nargs="+", default=["tf32", "bf16"])
    ap.add_argument("--json")
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    results = []
    for p in args.precision:
        r = run(args.dir, p, args.steps, args.warmup, device)
        print(json.dumps(r), flush=True)
        results.append(r)
        if device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
