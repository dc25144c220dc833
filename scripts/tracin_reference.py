"""TracInCPFast and nearest neighbours computed apart from explaind, for tests/it/reference.rs.

Usage: tracin_reference.py SPEC.json

SPEC: {"checkpoints": [{"model": path, "lr": float}, ...], "reference": folder with images/ and
labels.csv (as scripts/make_reference.py writes them), "queries": [png paths], "labels": [names],
"mean": float, "std": float, "embedding": tensor name, "logits": tensor name}.

Each checkpoint's last-layer input `a` and logits `z` are read with ONNX Runtime (the graph given
extra outputs with the onnx package); then, with NumPy only, as Captum's TracInCPFast computes
them (final layer input x, loss gradient on the output for cross-entropy = softmax(z) - onehot(y),
plus the bias's 1, as the last layer here has one):
  influence[q, i] = sum_c lr_c * (a_q . a_i + 1) * (g_q . g_i), label of q = its prediction
  self_influence[i] = sum_c lr_c * (|a_i|^2 + 1) * |g_i|^2
and the 5 nearest rows by cosine of the first checkpoint's embedding. Prints JSON.
"""

import json
import os
import struct
import sys
import zlib

import numpy as np
import onnx
import onnxruntime as ort


def read_png_gray(path):
    """An 8-bit grayscale PNG with filter 0 rows, as make_reference.py writes them."""
    data = open(path, "rb").read()
    pos, idat, size = 8, b"", None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, color = struct.unpack(">IIBB", body[:10])
            assert (depth, color) == (8, 0), path
            size = (width, height)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height = size
    raw = zlib.decompress(idat)
    rows = []
    for y in range(height):
        line = raw[y * (width + 1):(y + 1) * (width + 1)]
        assert line[0] == 0, "filter 0 only"
        rows.append(np.frombuffer(line[1:], dtype=np.uint8))
    return np.stack(rows).astype(np.float32)


def main():
    spec = json.load(open(sys.argv[1]))
    labels = spec["labels"]
    ref = spec["reference"]
    lines = open(os.path.join(ref, "labels.csv")).read().split("\n")[1:]
    ids, ys = [], []
    for line in filter(None, lines):
        name, label = line.split(",")
        ids.append(name)
        ys.append(labels.index(label))
    ys = np.array(ys)

    def batch(paths):
        x = np.stack([read_png_gray(p) for p in paths])
        return ((x / 255.0 - spec["mean"]) / spec["std"]).astype(np.float32)[:, None, :, :]

    x_ref = batch([os.path.join(ref, "images", i) for i in ids])
    x_q = batch(spec["queries"])
    influence = np.zeros((len(x_q), len(ids)))
    self_influence = np.zeros(len(ids))
    embeddings = None
    preds = None
    for c in spec["checkpoints"]:
        model = onnx.load(c["model"])
        model.graph.output.append(onnx.helper.make_tensor_value_info(spec["embedding"], onnx.TensorProto.FLOAT, None))
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name

        def run(x):
            a, z = session.run([spec["embedding"], spec["logits"]], {name: x})
            return a.reshape(len(x), -1).astype(np.float64), z.astype(np.float64)

        a_r, z_r = run(x_ref)
        a_q, z_q = run(x_q)
        if embeddings is None:
            embeddings = (a_r, a_q)
            preds = z_q.argmax(1)

        def grad(z, y):
            p = np.exp(z - z.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            p[np.arange(len(y)), y] -= 1.0
            return p

        g_r = grad(z_r, ys)
        g_q = grad(z_q, preds)
        influence += c["lr"] * (a_q @ a_r.T + 1.0) * (g_q @ g_r.T)
        self_influence += c["lr"] * ((a_r ** 2).sum(1) + 1.0) * (g_r ** 2).sum(1)
    a_r, a_q = embeddings
    cos = (a_q @ a_r.T) / np.outer(np.linalg.norm(a_q, axis=1), np.linalg.norm(a_r, axis=1))
    print(json.dumps({
        "ids": ids,
        "predictions": [labels[p] for p in preds],
        "influence": influence.tolist(),
        "self_influence": self_influence.tolist(),
        "nearest": [[ids[i] for i in np.argsort(-row, kind="stable")[:5]] for row in cos],
        "nearest_scores": [sorted(row.tolist(), reverse=True)[:5] for row in cos],
    }))


if __name__ == "__main__":
    main()
