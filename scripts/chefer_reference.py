"""Chefer et al.'s transformer relevance computed apart from explaind, for tests/it/attention.rs.

Usage: chefer_reference.py SPEC.json

SPEC: {"model": path, "input": flat floats, "shape": [1, C, H, W], "maps": [Softmax output names],
"target": class index, "skip": int, "eps": float, optional "keep": the token indices to report
(default: every token from `skip` on; a text's tokens but [CLS] and [SEP])}.

The gradient of the target's logit with respect to each attention probability is taken by central
differences: the graph (edited with the onnx package) adds a further input to each Softmax's
output, and ONNX Runtime runs every +eps / -eps perturbation as one batch. Then, with NumPy, as
the authors' notebook computes it: per layer mean over heads of (grad * A) clipped at 0,
R = I, R += A_bar @ R; the class token's row over the patch tokens, scaled to [0, 1] by min and
max. Prints {"patches": [...]}.
"""

import json
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper


def main():
    spec = json.load(open(sys.argv[1]))
    model = onnx.load(spec["model"])
    graph = model.graph
    deltas = []
    for name in spec["maps"]:
        producer = next(n for n in graph.node if name in n.output)
        raw = name + "_raw"
        producer.output[list(producer.output).index(name)] = raw
        delta = name + "_delta"
        graph.input.append(helper.make_tensor_value_info(delta, TensorProto.FLOAT, None))
        graph.node.append(helper.make_node("Add", [raw, delta], [name]))
        deltas.append(delta)
    # Keep the nodes in topological order: move each new Add right after its Softmax.
    nodes = list(graph.node)
    adds = {n.output[0]: n for n in nodes if n.op_type == "Add" and n.input[1].endswith("_delta")}
    ordered = []
    for n in nodes:
        if n in adds.values():
            continue
        ordered.append(n)
        for out in n.output:
            if out.endswith("_raw") and out[:-4] in adds:
                ordered.append(adds[out[:-4]])
    del graph.node[:]
    graph.node.extend(ordered)
    model.ir_version = min(model.ir_version, 10)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.asarray(spec["input"], dtype=np.float32).reshape(spec["shape"])
    # The attention maps themselves, from the unedited model.
    pm = onnx.load(spec["model"])
    pm.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in spec["maps"])
    pm.ir_version = min(pm.ir_version, 10)
    probe = ort.InferenceSession(pm.SerializeToString(), providers=["CPUExecutionProvider"])
    maps = probe.run(spec["maps"], {probe.get_inputs()[0].name: x})
    eps, target = spec["eps"], spec["target"]
    grads = []
    for li, a in enumerate(maps):
        size = a[0].size
        rows = 2 * size
        feed = {session.get_inputs()[0].name: np.repeat(x, rows, axis=0)}
        for lj, d in enumerate(deltas):
            feed[d] = np.zeros((rows,) + maps[lj].shape[1:], dtype=np.float32)
        flat = feed[deltas[li]].reshape(rows, -1)
        for e in range(size):
            flat[2 * e, e] = eps
            flat[2 * e + 1, e] = -eps
        logits = session.run(None, feed)[0][:, target].astype(np.float64)
        grads.append(((logits[0::2] - logits[1::2]) / (2 * eps)).reshape(a[0].shape))
    tokens = maps[0].shape[-1]
    r = np.eye(tokens)
    for a, g in zip(maps, grads):
        a_bar = np.clip(g * a[0].astype(np.float64), 0, None).mean(axis=0)
        r = r + a_bar @ r
    patches = r[0, spec.get("keep", list(range(spec["skip"], tokens)))]
    lo, hi = patches.min(), patches.max()
    patches = (patches - lo) / (hi - lo) if hi > lo else patches * 0
    print(json.dumps({"patches": patches.tolist()}))


if __name__ == "__main__":
    main()
