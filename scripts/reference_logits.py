#!/usr/bin/env python3
"""Independent float64 reference forward of a Llama GGUF (SmolLM2), written with numpy and the `gguf` package.

Reads the GGUF with gguf-py, dequantizes every tensor with gguf-py's own code, tokenizes the prompt by looking
its pieces up in the GGUF vocabulary (no BPE code shared with tern), runs the Llama forward in float64
(RMSNorm, RoPE on adjacent pairs as llama.cpp's converter lays out Q/K, grouped-query causal attention, SwiGLU,
tied head), and writes a small JSON fixture:
  tokens, per position: logsumexp of the logits and the logits of a fixed set of ids (the top 16 at that
  position plus 16 fixed ids), and the greedy continuation of the prompt.

usage: reference_logits.py MODEL.gguf OUT.json
"""
import json
import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

PIECES = ["The", "Ġcapital", "Ġof", "ĠFrance", "Ġis"]
GREEDY_STEPS = 3
FIXED_IDS = [0, 1, 2, 17, 100, 1000, 4096, 9999, 12345, 20000, 30000, 40000, 45000, 49000, 49150, 49151]


def field(reader, key):
    f = reader.fields[key]
    v = f.parts[f.data[0]]
    return v.tolist()[0] if len(v) == 1 else bytes(v).decode()


def main() -> int:
    path, out = sys.argv[1], sys.argv[2]
    r = GGUFReader(path)
    n_layers = field(r, "llama.block_count")
    n_heads = field(r, "llama.attention.head_count")
    n_kv = field(r, "llama.attention.head_count_kv")
    eps = field(r, "llama.attention.layer_norm_rms_epsilon")
    theta = field(r, "llama.rope.freq_base")
    tok_field = r.fields["tokenizer.ggml.tokens"]
    vocab = [bytes(tok_field.parts[i]).decode("utf-8") for i in tok_field.data]
    index = {t: i for i, t in enumerate(vocab)}
    tokens = [index[p] for p in PIECES]

    W = {}
    for t in r.tensors:
        a = dequantize(t.data, t.tensor_type).astype(np.float64)
        W[t.name] = a.reshape([int(d) for d in reversed(t.shape.tolist())]) if a.ndim == 1 and len(t.shape) > 1 else a
    emb = W["token_embd.weight"]  # [vocab, hidden]
    hidden = emb.shape[1]
    hd = hidden // n_heads

    def rmsnorm(x, w):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w

    def rope(x, pos):  # x: [T, heads, hd]; rotate (x[2i], x[2i+1]) by pos * theta^(-2i/hd)
        inv = theta ** (-np.arange(0, hd, 2, dtype=np.float64) / hd)
        ang = np.asarray(pos, dtype=np.float64)[:, None] * inv[None, :]
        cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
        x0, x1 = x[..., 0::2], x[..., 1::2]
        y = np.empty_like(x)
        y[..., 0::2] = x0 * cos - x1 * sin
        y[..., 1::2] = x0 * sin + x1 * cos
        return y

    def forward(toks):
        T = len(toks)
        x = emb[toks]
        pos = np.arange(T)
        mask = np.triu(np.full((T, T), -np.inf), 1)
        for l in range(n_layers):
            p = f"blk.{l}."
            h = rmsnorm(x, W[p + "attn_norm.weight"])
            q = (h @ W[p + "attn_q.weight"].T).reshape(T, n_heads, hd)
            k = (h @ W[p + "attn_k.weight"].T).reshape(T, n_kv, hd)
            v = (h @ W[p + "attn_v.weight"].T).reshape(T, n_kv, hd)
            q, k = rope(q, pos), rope(k, pos)
            group = n_heads // n_kv
            att = np.empty((T, n_heads, hd))
            for hh in range(n_heads):
                kh, vh = k[:, hh // group], v[:, hh // group]
                s = q[:, hh] @ kh.T / np.sqrt(hd) + mask
                s = np.exp(s - s.max(axis=-1, keepdims=True))
                s /= s.sum(axis=-1, keepdims=True)
                att[:, hh] = s @ vh
            x = x + att.reshape(T, hidden) @ W[p + "attn_output.weight"].T
            h = rmsnorm(x, W[p + "ffn_norm.weight"])
            g = h @ W[p + "ffn_gate.weight"].T
            u = h @ W[p + "ffn_up.weight"].T
            x = x + (g / (1 + np.exp(-g)) * u) @ W[p + "ffn_down.weight"].T
        x = rmsnorm(x, W["output_norm.weight"])
        head = W.get("output.weight", emb)
        return x @ head.T

    logits = forward(tokens)
    positions = []
    for t in range(len(tokens)):
        row = logits[t]
        m = row.max()
        lse = float(m + np.log(np.exp(row - m).sum()))
        top = [int(i) for i in np.argsort(-row)[:16]]
        ids = top + [i for i in FIXED_IDS if i not in top]
        positions.append({"logsumexp": lse, "ids": ids, "logits": [float(row[i]) for i in ids]})
    greedy = list(tokens)
    for _ in range(GREEDY_STEPS):
        greedy.append(int(np.argmax(forward(greedy)[-1])))
    json.dump({
        "model": path.split("/")[-1],
        "pieces": PIECES,
        "tokens": tokens,
        "positions": positions,
        "greedy_tokens": greedy[len(tokens):],
        "greedy_pieces": [vocab[i] for i in greedy[len(tokens):]],
    }, open(out, "w"), indent=1)
    print("greedy continuation:", [vocab[i] for i in greedy[len(tokens):]])
    return 0


if __name__ == "__main__":
    sys.exit(main())
