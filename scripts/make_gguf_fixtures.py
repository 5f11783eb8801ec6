#!/usr/bin/env python3
"""Writes the GGUF reference fixtures for tern-quantizer's import tests, using the `gguf` PyPI package (0.19.0) as
an implementation independent of ours:  pip install gguf==0.19.0 numpy

Outputs (quantizer/tests/fixtures/):
  tiny.gguf            tensors of every type the reader dequantizes (random data, ragged row counts, 1-D/2-D/3-D),
                       one tensor of a type it does not (Q8_1), metadata of every GGUF value type, alignment 64.
  tiny_meta.json       the metadata written, with explicit types; floats as their IEEE bit patterns so that the
                       comparison is exact whatever JSON float parser reads it.
  tiny_dequant/NAME.f32  gguf.quants.dequantize of each tensor (little-endian f32, row-major).
  tiny-llama.gguf      a complete 2-layer Llama (hidden 32, 2 heads, 1 KV head, FFN 64) with a small byte-level
                       BPE tokenizer (pre-tokenizer "smollm"), mixed tensor types, tied embeddings.
  tiny-llama-hf/       the same model as a Hugging Face directory: config.json, tokenizer.json (written here by hand,
                       independently of the Rust synthesizer), two safetensors shards + index. Weights are the
                       dequantized GGUF values; attn_q/attn_k rows are un-permuted back to Hugging Face's rotate-half
                       order with the inverse of llama.cpp's convert_hf_to_gguf `permute`.
  smollm2_rows.json, smollm2_rows/*.f32
                       a few dequantized rows of the real SmolLM2 GGUF (assets/, run scripts/fetch-assets.sh first;
                       skipped with a note when it is absent).

Random data comes from a fixed seed, so reruns produce identical files.
"""

import json
import os
import struct
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T, GGUFValueType as V
from gguf.quants import dequantize, quantize

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
OUT = os.path.join(ROOT, "quantizer", "tests", "fixtures")
SMOL = os.path.join(ROOT, "assets", "SmolLM2-135M-Instruct.Q4_1.gguf")

rng = np.random.default_rng(20250101)


def f16_bytes(values):
    return np.asarray(values, dtype=np.float16).view(np.uint8)


def random_k_blocks(qtype, n_blocks):
    """Random bytes for K-quant blocks (the package has no quantizer for them), with every f16 scale field set to
    a finite, moderate value so that the dequantized numbers are ordinary floats."""
    block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint8)
    # (offset, count) of the f16 fields inside each block, from ggml-common.h.
    f16_fields = {
        T.Q2_K: [(80, 2)],   # d, dmin after scales[16] and qs[64]
        T.Q3_K: [(108, 1)],  # d after hmask[32], qs[64], scales[12]
        T.Q4_K: [(0, 2)],    # d, dmin first
        T.Q5_K: [(0, 2)],
        T.Q6_K: [(208, 1)],  # d last
    }[qtype]
    for off, count in f16_fields:
        vals = rng.uniform(-0.05, 0.05, size=(n_blocks, count)).astype(np.float16)
        raw[:, off:off + 2 * count] = vals.view(np.uint8).reshape(n_blocks, 2 * count)
    return raw


def quantized(qtype, rows, cols, scale=1.0):
    data = (rng.standard_normal((rows, cols)) * scale).astype(np.float32)
    if qtype == T.F32:
        return data
    if qtype == T.F16:
        return data.astype(np.float16)
    return quantize(data, qtype)


def dequant(qtype, stored):
    if qtype == T.F32:
        return stored.astype(np.float32)
    if qtype == T.F16:
        return stored.astype(np.float32)
    return dequantize(stored, qtype)


def write_f32(path, values):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    np.ascontiguousarray(values, dtype="<f4").tofile(path)


# --------------------------------------------------------------------------------------------------------------
# tiny.gguf
# --------------------------------------------------------------------------------------------------------------

def meta_json(vtype, value, sub_type=None):
    """Metadata value -> JSON with explicit types; floats as bit patterns."""
    if vtype == V.ARRAY:
        items = []
        for item in value:
            if isinstance(item, list):
                items.append(meta_json(V.ARRAY, item, V.get_type(item[0])))
            else:
                items.append(meta_json(sub_type, item))
        return {"type": "ARRAY", "elem": sub_type.name, "items": items}
    if vtype == V.FLOAT32:
        return {"type": "FLOAT32", "bits": struct.unpack("<I", struct.pack("<f", value))[0]}
    if vtype == V.FLOAT64:
        return {"type": "FLOAT64", "bits": struct.unpack("<Q", struct.pack("<d", value))[0]}
    return {"type": vtype.name, "value": value}


def make_tiny():
    path = os.path.join(OUT, "tiny.gguf")
    w = gguf.GGUFWriter(path, arch="tinytest")
    w.add_custom_alignment(64)  # not the default 32: the reader must honour general.alignment
    w.add_name("tern tiny fixture")

    metadata = [
        ("test.u8", V.UINT8, 200, None),
        ("test.i8", V.INT8, -100, None),
        ("test.u16", V.UINT16, 60000, None),
        ("test.i16", V.INT16, -30000, None),
        ("test.u32", V.UINT32, 4000000000, None),
        ("test.i32", V.INT32, -2000000000, None),
        ("test.f32", V.FLOAT32, float(np.float32(3.14159)), None),
        ("test.bool.true", V.BOOL, True, None),
        ("test.bool.false", V.BOOL, False, None),
        ("test.string", V.STRING, "h\u00e9llo w\u00f6rld \u2713 \U0001F600", None),
        ("test.string.empty", V.STRING, "", None),
        ("test.u64", V.UINT64, 2**63 + 5, None),
        ("test.i64", V.INT64, -(2**62) - 7, None),
        ("test.f64", V.FLOAT64, 2.718281828459045, None),
        ("test.array.u8", V.ARRAY, [0, 1, 255], V.UINT8),
        ("test.array.i16", V.ARRAY, [-1, 2, -3], V.INT16),
        ("test.array.i32", V.ARRAY, [1, -2, 3, 2147483647], V.INT32),
        ("test.array.u64", V.ARRAY, [0, 2**64 - 1], V.UINT64),
        ("test.array.f32", V.ARRAY, [0.5, -1.25, float(np.float32(1e-3))], V.FLOAT32),
        ("test.array.f64", V.ARRAY, [0.1, -1e300], V.FLOAT64),
        ("test.array.bool", V.ARRAY, [True, False, True], V.BOOL),
        ("test.array.string", V.ARRAY, ["a", "bb", "", "\u00fcnic\u00f8de"], V.STRING),
        ("test.array.nested", V.ARRAY, [[1, 2], [3], [4, 5, 6]], V.ARRAY),
    ]
    expected = {
        "general.architecture": meta_json(V.STRING, "tinytest"),
        "general.alignment": meta_json(V.UINT32, 64),
        "general.name": meta_json(V.STRING, "tern tiny fixture"),
    }
    for key, vtype, value, sub in metadata:
        # add_string/add_array refuse empty values; add_key_value writes whatever it is given.
        w.add_key_value(key, value, vtype, sub_type=sub)
        expected[key] = meta_json(vtype, value, sub)

    # (name, type, rows, cols[, extra leading dims]): ragged row counts, every supported type.
    specs = [
        ("f32.matrix", T.F32, (3, 5)),
        ("f32.vector", T.F32, (11,)),
        ("f32.cube", T.F32, (2, 3, 4)),
        ("f16.matrix", T.F16, (7, 9)),
        ("bf16.matrix", T.BF16, (5, 33)),
        ("q4_0.matrix", T.Q4_0, (3, 64)),
        ("q4_1.matrix", T.Q4_1, (5, 96)),
        ("q5_0.matrix", T.Q5_0, (3, 32)),
        ("q5_1.matrix", T.Q5_1, (2, 64)),
        ("q8_0.matrix", T.Q8_0, (7, 64)),
        ("q8_0.cube", T.Q8_0, (3, 2, 32)),
        ("tq1_0.matrix", T.TQ1_0, (3, 256)),
        ("tq2_0.matrix", T.TQ2_0, (2, 512)),
        ("q2_k.matrix", T.Q2_K, (3, 256)),
        ("q3_k.matrix", T.Q3_K, (2, 256)),
        ("q4_k.matrix", T.Q4_K, (3, 256)),
        ("q5_k.matrix", T.Q5_K, (2, 256)),
        ("q6_k.matrix", T.Q6_K, (3, 512)),
    ]
    tensors = []
    for name, qtype, shape in specs:
        if qtype in (T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K):
            rows = int(np.prod(shape[:-1]))
            n_blocks = rows * shape[-1] // 256
            stored = random_k_blocks(qtype, n_blocks).reshape(*shape[:-1], -1)
        else:
            data = rng.standard_normal(shape).astype(np.float32)
            if qtype == T.F32:
                stored = data
            elif qtype == T.F16:
                stored = data.astype(np.float16)
            else:
                stored = quantize(data, qtype)
        values = dequant(qtype, stored)
        assert values.shape == shape, (name, values.shape, shape)
        raw_dtype = None if qtype in (T.F32, T.F16) else qtype
        w.add_tensor(name, stored, raw_dtype=raw_dtype)
        write_f32(os.path.join(OUT, "tiny_dequant", name + ".f32"), values)
        tensors.append({"name": name, "type": qtype.name, "shape": list(shape)})

    # A type the reader knows the size of but does not dequantize: raw bytes must still be readable.
    q8_1 = rng.integers(0, 256, size=(2, 40), dtype=np.uint8)
    w.add_tensor("q8_1.unsupported", q8_1, raw_dtype=T.Q8_1)
    tensors.append({"name": "q8_1.unsupported", "type": "Q8_1", "shape": [2, 32], "raw_hex": q8_1.tobytes().hex()})

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    # Cross-check with the package's own reader (arrays of arrays excepted: GGUFReader does not decode them).
    r = gguf.GGUFReader(path)
    for key, vtype, value, sub in metadata:
        if key == "test.array.nested":
            continue
        got = r.fields[key].contents()
        if vtype in (V.FLOAT32,) or sub == V.FLOAT32:
            assert np.allclose(np.float32(got), np.float32(value)), key
        else:
            assert got == value, (key, got, value)
    assert r.alignment == 64

    with open(os.path.join(OUT, "tiny_meta.json"), "w") as f:
        json.dump({"version": 3, "alignment": 64, "metadata": expected, "tensors": tensors}, f, indent=1,
                  ensure_ascii=False)
        f.write("\n")
    print("make_gguf_fixtures: %s (%d bytes, %d tensors, %d metadata keys)"
          % (os.path.relpath(path, ROOT), os.path.getsize(path), len(tensors), len(expected)))


# --------------------------------------------------------------------------------------------------------------
# tiny-llama.gguf and its Hugging Face twin
# --------------------------------------------------------------------------------------------------------------

def bytes_to_unicode():
    """GPT-2's byte -> printable character map (as in openai/gpt-2 encoder.py and tokenizers' ByteLevel)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\u00a1"), ord("\u00ac") + 1)) \
        + list(range(ord("\u00ae"), ord("\u00ff") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


TINY = dict(hidden=32, heads=2, kv_heads=1, head_dim=16, ffn=64, layers=2, context=256, theta=10000.0, eps=1e-5)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = [("\u0120", "t"), ("h", "e"), ("\u0120t", "he"), ("i", "n"), ("\u0120", "a"), ("\u0120", "c"),
          ("a", "p"), ("i", "t"), ("\u0120c", "ap"), ("\u0120cap", "it"), ("a", "l"), ("\u0120capit", "al")]
CHAT_TEMPLATE = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
                 "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
                 "{% endif %}")


def tiny_vocab():
    byte_chars = [bytes_to_unicode()[b] for b in range(256)]
    tokens = SPECIALS + byte_chars + [a + b for a, b in MERGES]
    assert len(set(tokens)) == len(tokens)
    types = [3] * len(SPECIALS) + [1] * (len(tokens) - len(SPECIALS))
    return tokens, types


def llama_cpp_permute(w, n_head):
    """convert_hf_to_gguf.py LlamaModel.permute: Hugging Face rotate-half rows -> GGUF interleaved rows."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama_cpp_unpermute(w, n_head):
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_safetensors(path, tensors):
    """Minimal safetensors writer (format: u64 header length, JSON header, data), numpy only."""
    header = {"__metadata__": {"format": "pt"}}
    blobs = []
    offset = 0
    for name, (dtype, arr) in tensors.items():
        data = arr.tobytes()
        header[name] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def to_bf16_exact(values):
    """bf16 bytes of values that are exactly representable in bf16 (checked)."""
    bits = values.astype(np.float32).view(np.uint32)
    assert np.all(bits & 0xFFFF == 0)
    return (bits >> 16).astype(np.uint16)


def make_tiny_llama():
    c = TINY
    tokens, types = tiny_vocab()
    vocab = len(tokens)
    path = os.path.join(OUT, "tiny-llama.gguf")
    w = gguf.GGUFWriter(path, arch="llama")
    w.add_name("tern tiny llama")
    w.add_block_count(c["layers"])
    w.add_context_length(c["context"])
    w.add_embedding_length(c["hidden"])
    w.add_feed_forward_length(c["ffn"])
    w.add_head_count(c["heads"])
    w.add_head_count_kv(c["kv_heads"])
    w.add_rope_freq_base(c["theta"])
    w.add_layer_norm_rms_eps(c["eps"])
    w.add_vocab_size(vocab)
    w.add_rope_dimension_count(c["head_dim"])
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges([a + " " + b for a, b in MERGES])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(2)
    w.add_add_bos_token(False)
    w.add_chat_template(CHAT_TEMPLATE)

    q_dim, kv_dim, h, f = c["heads"] * c["head_dim"], c["kv_heads"] * c["head_dim"], c["hidden"], c["ffn"]
    gguf_tensors = {}  # name -> dequantized f32 (GGUF row order)

    def add(name, qtype, shape, scale=0.5):
        stored = quantized(qtype, *shape, scale=scale) if len(shape) == 2 else \
            (rng.standard_normal(shape) * 0.1 + 1.0).astype(np.float32)
        w.add_tensor(name, stored, raw_dtype=None if qtype in (T.F32, T.F16) else qtype)
        gguf_tensors[name] = dequant(qtype, stored)

    add("token_embd.weight", T.Q8_0, (vocab, h))
    for i in range(c["layers"]):
        add(f"blk.{i}.attn_norm.weight", T.F32, (h,))
        add(f"blk.{i}.attn_q.weight", T.Q4_1, (q_dim, h))
        add(f"blk.{i}.attn_k.weight", T.Q4_1, (kv_dim, h))
        add(f"blk.{i}.attn_v.weight", T.Q8_0, (kv_dim, h))
        add(f"blk.{i}.attn_output.weight", T.Q4_0, (h, q_dim))
        add(f"blk.{i}.ffn_norm.weight", T.F32, (h,))
        add(f"blk.{i}.ffn_gate.weight", T.Q4_1, (f, h))
        add(f"blk.{i}.ffn_up.weight", T.F16, (f, h))
        add(f"blk.{i}.ffn_down.weight", T.BF16, (h, f))
    add("output_norm.weight", T.F32, (h,))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print("make_gguf_fixtures: %s (%d bytes, %d tensors)"
          % (os.path.relpath(path, ROOT), os.path.getsize(path), len(gguf_tensors)))

    # ---- the Hugging Face twin ----
    hf_dir = os.path.join(OUT, "tiny-llama-hf")
    os.makedirs(hf_dir, exist_ok=True)
    hf_names = {"attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
                "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
                "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
    shards = [{}, {}]
    for name, values in gguf_tensors.items():
        if name == "token_embd.weight":
            hf, shard = "model.embed_tokens.weight", 0
        elif name == "output_norm.weight":
            hf, shard = "model.norm.weight", 1
        else:
            _, layer, kind, _ = name.split(".")
            hf, shard = "model.layers.%s.%s.weight" % (layer, hf_names[kind]), int(layer)
        if kind_of(name) == "attn_q":
            values = llama_cpp_unpermute(values, c["heads"])
            assert np.array_equal(llama_cpp_permute(values, c["heads"]), gguf_tensors[name])
        elif kind_of(name) == "attn_k":
            values = llama_cpp_unpermute(values, c["kv_heads"])
            assert np.array_equal(llama_cpp_permute(values, c["kv_heads"]), gguf_tensors[name])
        if kind_of(name) == "ffn_up":
            entry = ("F16", values.astype(np.float16))  # values came from f16: exact
            assert np.array_equal(entry[1].astype(np.float32), values)
        elif kind_of(name) == "ffn_down":
            entry = ("BF16", to_bf16_exact(values))
        else:
            entry = ("F32", values.astype(np.float32))
        shards[shard][hf] = entry
    weight_map = {}
    for i, shard in enumerate(shards):
        fname = "model-%05d-of-%05d.safetensors" % (i + 1, len(shards))
        write_safetensors(os.path.join(hf_dir, fname), shard)
        for name in shard:
            weight_map[name] = fname
    with open(os.path.join(hf_dir, "model.safetensors.index.json"), "w") as fh:
        json.dump({"metadata": {"total_size": 0}, "weight_map": weight_map}, fh, indent=1, sort_keys=True)
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
        "hidden_size": c["hidden"], "intermediate_size": c["ffn"], "num_hidden_layers": c["layers"],
        "num_attention_heads": c["heads"], "num_key_value_heads": c["kv_heads"], "head_dim": c["head_dim"],
        "max_position_embeddings": c["context"], "rms_norm_eps": c["eps"], "rope_theta": c["theta"],
        "rope_scaling": None, "tie_word_embeddings": True, "vocab_size": vocab, "bos_token_id": 1,
        "eos_token_id": 2, "pad_token_id": 2, "attention_bias": False, "mlp_bias": False, "torch_dtype": "float32",
    }
    with open(os.path.join(hf_dir, "config.json"), "w") as fh:
        json.dump(config, fh, indent=1)
    # tokenizer.json in the layout Hugging Face's SmolLM2 repository uses (merges as "a b" strings).
    tok = {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": True} for i, t in enumerate(SPECIALS)],
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": True},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "vocab": {t: i for i, t in enumerate(tokens)}, "merges": [a + " " + b for a, b in MERGES]},
    }
    with open(os.path.join(hf_dir, "tokenizer.json"), "w", encoding="utf-8") as fh:
        json.dump(tok, fh, indent=1, ensure_ascii=False)
    with open(os.path.join(hf_dir, "tokenizer_config.json"), "w") as fh:
        json.dump({"add_bos_token": False, "bos_token": "<|im_start|>", "eos_token": "<|im_end|>",
                   "chat_template": CHAT_TEMPLATE}, fh, indent=1)
    print("make_gguf_fixtures: %s (%d files)" % (os.path.relpath(hf_dir, ROOT), len(os.listdir(hf_dir))))


def kind_of(name):
    parts = name.split(".")
    return parts[2] if parts[0] == "blk" else parts[0]


# --------------------------------------------------------------------------------------------------------------
# rows of the real SmolLM2 file
# --------------------------------------------------------------------------------------------------------------

SMOL_ROWS = [
    ("token_embd.weight", [0, 504, 49151]),      # Q8_0
    ("blk.0.attn_q.weight", [0, 575]),           # Q4_1
    ("blk.0.attn_k.weight", [191]),              # Q4_1
    ("blk.29.ffn_down.weight", [575]),           # Q4_1, 1536 columns
    ("blk.0.attn_norm.weight", [0]),             # F32 (1-D: the whole tensor is row 0)
    ("output_norm.weight", [0]),                 # F32
]


def make_smollm2_rows():
    if not os.path.exists(SMOL):
        print("make_gguf_fixtures: %s absent (run scripts/fetch-assets.sh): SmolLM2 rows not regenerated"
              % os.path.relpath(SMOL, ROOT))
        return
    r = gguf.GGUFReader(SMOL)
    by_name = {t.name: t for t in r.tensors}
    manifest = []
    for name, rows in SMOL_ROWS:
        t = by_name[name]
        data = t.data.reshape(-1, t.data.shape[-1]) if t.data.ndim > 1 else t.data.reshape(1, -1)
        values = dequant(t.tensor_type, np.ascontiguousarray(data[rows]))
        fname = name + ".rows.f32"
        write_f32(os.path.join(OUT, "smollm2_rows", fname), values)
        manifest.append({"tensor": name, "type": t.tensor_type.name, "rows": rows,
                         "cols": int(values.shape[-1]), "file": "smollm2_rows/" + fname})
    with open(os.path.join(OUT, "smollm2_rows.json"), "w") as f:
        json.dump({"source": "SmolLM2-135M-Instruct.Q4_1.gguf", "bytes": os.path.getsize(SMOL), "rows": manifest},
                  f, indent=1)
        f.write("\n")
    print("make_gguf_fixtures: smollm2_rows.json (%d tensors, %d rows)"
          % (len(manifest), sum(len(m["rows"]) for m in manifest)))


def main():
    from importlib.metadata import version
    if version("gguf") != "0.19.0":
        print("make_gguf_fixtures: warning: gguf %s installed, fixtures were made with 0.19.0" % version("gguf"))
    os.makedirs(OUT, exist_ok=True)
    make_tiny()
    make_tiny_llama()
    make_smollm2_rows()
    return 0


if __name__ == "__main__":
    sys.exit(main())
