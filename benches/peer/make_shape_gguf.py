#!/usr/bin/env python3
"""An f16 GGUF of a Llama of a given shape with random weights and SmolLM2's tokenizer: the one source both
tools' models of that shape are made from (llama-quantize ... TQ2_0 for llama.cpp, `tern convert` for tern).

    make_shape_gguf.py --tokenizer-from SmolLM2-135M-Instruct.Q4_1.gguf --out bitnet-2b-f16.gguf \
        --hidden 2560 --ffn 6912 --layers 30 --heads 20 --kv-heads 5

Weights are N(0, 0.02) (norms 1), the embedding is tied to the head (no output.weight), as in BitNet b1.58 2B4T
and SmolLM2. Needs gguf (0.19.0) and numpy.
"""
import argparse

import numpy as np
import gguf

TOKENIZER_KEYS = [
    "tokenizer.ggml.model",
    "tokenizer.ggml.pre",
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.token_type",
    "tokenizer.ggml.merges",
    "tokenizer.ggml.bos_token_id",
    "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.unknown_token_id",
    "tokenizer.ggml.padding_token_id",
    "tokenizer.ggml.add_bos_token",
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer-from", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--hidden", type=int, required=True)
    ap.add_argument("--ffn", type=int, required=True)
    ap.add_argument("--layers", type=int, required=True)
    ap.add_argument("--heads", type=int, required=True)
    ap.add_argument("--kv-heads", type=int, required=True)
    ap.add_argument("--context", type=int, default=4096)
    ap.add_argument("--rope-theta", type=float, default=500000.0)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()

    src = gguf.GGUFReader(a.tokenizer_from)
    tokens = src.fields["tokenizer.ggml.tokens"].contents()
    vocab = len(tokens)
    head_dim = a.hidden // a.heads

    w = gguf.GGUFWriter(a.out, arch="llama")
    w.add_name(f"llama {a.hidden}x{a.layers} random (tern peer benchmark)")
    w.add_block_count(a.layers)
    w.add_context_length(a.context)
    w.add_embedding_length(a.hidden)
    w.add_feed_forward_length(a.ffn)
    w.add_head_count(a.heads)
    w.add_head_count_kv(a.kv_heads)
    w.add_rope_freq_base(a.rope_theta)
    w.add_rope_dimension_count(head_dim)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(vocab)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    for key in TOKENIZER_KEYS:
        f = src.fields.get(key)
        if f is None:
            continue
        value = f.contents()
        vtype = f.types[0]
        if vtype == gguf.GGUFValueType.ARRAY:
            w.add_key_value(key, value, vtype, sub_type=f.types[-1])
        else:
            w.add_key_value(key, value, vtype)

    rng = np.random.default_rng(a.seed)

    def mat(rows, cols):
        return (rng.standard_normal((rows, cols), dtype=np.float32) * 0.02).astype(np.float16)

    ones = lambda n: np.ones(n, dtype=np.float32)
    q_dim, kv_dim = a.heads * head_dim, a.kv_heads * head_dim
    w.add_tensor("token_embd.weight", mat(vocab, a.hidden))
    for l in range(a.layers):
        p = f"blk.{l}."
        w.add_tensor(p + "attn_norm.weight", ones(a.hidden))
        w.add_tensor(p + "attn_q.weight", mat(q_dim, a.hidden))
        w.add_tensor(p + "attn_k.weight", mat(kv_dim, a.hidden))
        w.add_tensor(p + "attn_v.weight", mat(kv_dim, a.hidden))
        w.add_tensor(p + "attn_output.weight", mat(a.hidden, q_dim))
        w.add_tensor(p + "ffn_norm.weight", ones(a.hidden))
        w.add_tensor(p + "ffn_gate.weight", mat(a.ffn, a.hidden))
        w.add_tensor(p + "ffn_up.weight", mat(a.ffn, a.hidden))
        w.add_tensor(p + "ffn_down.weight", mat(a.hidden, a.ffn))
    w.add_tensor("output_norm.weight", ones(a.hidden))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    main()
