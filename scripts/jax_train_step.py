#!/usr/bin/env python3
"""JAX (XLA CPU) peer for tern's training-step throughput: the full-precision forward + backward of the same Llama
(SmolLM2-135M from its GGUF, dequantized with gguf-py), same sequence length and batch, f32, timed after warm-up.

    pip install jax gguf numpy
    python3 scripts/jax_train_step.py assets/SmolLM2-135M-Instruct.Q4_1.gguf --seq 512 --batch 1 --steps 5 [--threads 2]

Prints one JSON line: tokens/s of `jax.jit(jax.value_and_grad(loss))` (mean and best over --steps timed calls) and
the GFLOP per step (6·N·tokens for the matrices plus attention), so `tern`'s numbers can be put next to it. The
model follows tern's engine exactly: RMSNorm, RoPE on adjacent pairs (llama.cpp's GGUF layout), grouped-query
causal attention, SwiGLU, tied head, mean cross-entropy over next-token targets.
"""
import argparse
import json
import os
import sys
import time


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("gguf")
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="XLA intra-op threads (0: all cores)")
    args = ap.parse_args()
    if args.threads:
        # Must be set before jax is imported.
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "")
            + f" --xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads={args.threads}"
        )
        os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import numpy as np
    import jax
    import jax.numpy as jnp
    from gguf import GGUFReader
    from gguf.quants import dequantize

    r = GGUFReader(args.gguf)

    def field(key):
        f = r.fields[key]
        v = f.parts[f.data[0]]
        return v.tolist()[0] if len(v) == 1 else bytes(v).decode()

    n_layers = field("llama.block_count")
    n_heads = field("llama.attention.head_count")
    n_kv = field("llama.attention.head_count_kv")
    eps = field("llama.attention.layer_norm_rms_epsilon")
    theta = field("llama.rope.freq_base")
    W = {}
    for t in r.tensors:
        a = dequantize(t.data, t.tensor_type).astype(np.float32)
        shape = [int(d) for d in reversed(t.shape.tolist())]
        W[t.name] = jnp.asarray(a.reshape(shape))
    emb = W["token_embd.weight"]
    vocab, hidden = emb.shape
    hd = hidden // n_heads
    group = n_heads // n_kv
    params = {k: v for k, v in W.items()}
    n_params = sum(int(np.prod(v.shape)) for v in params.values())

    inv = theta ** (-np.arange(0, hd, 2, dtype=np.float64) / hd)
    ang = np.arange(args.seq)[:, None] * inv[None, :]
    cos = jnp.asarray(np.cos(ang), dtype=jnp.float32)[None, :, None, :]
    sin = jnp.asarray(np.sin(ang), dtype=jnp.float32)[None, :, None, :]

    def rmsnorm(x, w):
        return x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + eps) * w

    def rope(x):  # [B, T, H, hd], adjacent pairs
        x0, x1 = x[..., 0::2], x[..., 1::2]
        y0 = x0 * cos - x1 * sin
        y1 = x0 * sin + x1 * cos
        return jnp.stack([y0, y1], axis=-1).reshape(x.shape)

    mask = jnp.tril(jnp.ones((args.seq, args.seq), dtype=bool))

    def loss_fn(p, tokens, targets):
        B, T = tokens.shape
        x = p["token_embd.weight"][tokens]
        for l in range(n_layers):
            q_ = f"blk.{l}."
            h = rmsnorm(x, p[q_ + "attn_norm.weight"])
            q = (h @ p[q_ + "attn_q.weight"].T).reshape(B, T, n_heads, hd)
            k = (h @ p[q_ + "attn_k.weight"].T).reshape(B, T, n_kv, hd)
            v = (h @ p[q_ + "attn_v.weight"].T).reshape(B, T, n_kv, hd)
            q, k = rope(q), rope(k)
            k = jnp.repeat(k, group, axis=2)
            v = jnp.repeat(v, group, axis=2)
            s = jnp.einsum("bthd,bshd->bhts", q, k) / np.sqrt(hd)
            s = jnp.where(mask[None, None], s, -jnp.inf)
            a = jax.nn.softmax(s, axis=-1)
            o = jnp.einsum("bhts,bshd->bthd", a, v).reshape(B, T, hidden)
            x = x + o @ p[q_ + "attn_output.weight"].T
            h = rmsnorm(x, p[q_ + "ffn_norm.weight"])
            g = h @ p[q_ + "ffn_gate.weight"].T
            u = h @ p[q_ + "ffn_up.weight"].T
            x = x + (jax.nn.silu(g) * u) @ p[q_ + "ffn_down.weight"].T
        x = rmsnorm(x, p["output_norm.weight"])
        logits = x @ p.get("output.weight", p["token_embd.weight"]).T
        lse = jax.nn.logsumexp(logits, axis=-1)
        picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
        return jnp.mean(lse - picked)

    step = jax.jit(jax.value_and_grad(loss_fn))
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(0, vocab, (args.batch, args.seq)), dtype=jnp.int32)
    targets = jnp.asarray(rng.integers(0, vocab, (args.batch, args.seq)), dtype=jnp.int32)
    t0 = time.perf_counter()
    loss, grads = step(params, tokens, targets)
    jax.block_until_ready(grads)
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        loss, grads = step(params, tokens, targets)
        jax.block_until_ready(grads)
        times.append(time.perf_counter() - t0)
    n_tok = args.batch * args.seq
    flops = 6 * n_params * n_tok + 6 * n_layers * args.batch * n_heads * args.seq * args.seq * hd
    mean = sum(times) / len(times)
    print(json.dumps({
        "peer": f"jax {jax.__version__} (XLA CPU, f32)",
        "seq": args.seq,
        "batch": args.batch,
        "threads": args.threads or os.cpu_count(),
        "params": n_params,
        "loss": float(loss),
        "first_call_s": round(compile_s, 2),
        "step_s_mean": round(mean, 4),
        "step_s_best": round(min(times), 4),
        "tokens_per_s_mean": round(n_tok / mean, 1),
        "tokens_per_s_best": round(n_tok / min(times), 1),
        "gflop_per_step": round(flops / 1e9, 1),
        "gflop_per_s_best": round(flops / 1e9 / min(times), 1),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
