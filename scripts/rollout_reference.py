"""Attention rollout computed apart from explaind, for tests/it/attention.rs.

Usage: rollout_reference.py SPEC.json

SPEC: {"model": path, "input": flat floats, "shape": [1, C, H, W], "maps": [Softmax output names],
"head_fusion": "mean" | "max" | "min", "discard_ratio": float, "skip": int, "grid": [rows, cols],
optional "keep": the token indices to report (default: every token from `skip` on; a text's
tokens but [CLS] and [SEP])}.

The attention maps are read with ONNX Runtime (the graph given extra outputs with the onnx
package); then, with NumPy, Abnar and Zuidema's rollout as jacobgil/vit-explain's vit_rollout.py
computes it (heads fused, the weakest discard_ratio of each fused map zeroed except the class
token's own entry, (A + I) / 2 normalised by rows, result = A_l . result), the class token's row
over the patch tokens, divided by its maximum (when above 0). Prints {"patches": [...]}.
"""

import json
import sys

import numpy as np
import onnx
import onnxruntime as ort


def main():
    spec = json.load(open(sys.argv[1]))
    model = onnx.load(spec["model"])
    known = {o.name for o in model.graph.output}
    for name in spec["maps"]:
        if name not in known:
            model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    model.ir_version = min(model.ir_version, 10)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.asarray(spec["input"], dtype=np.float32).reshape(spec["shape"])
    feed = {session.get_inputs()[0].name: x}
    maps = session.run(spec["maps"], feed)
    tokens = maps[0].shape[-1]
    result = np.eye(tokens)
    for attention in maps:
        a = attention[0].astype(np.float64)
        fused = {"mean": a.mean(axis=0), "max": a.max(axis=0), "min": a.min(axis=0)}[spec["head_fusion"]]
        flat = fused.reshape(-1).copy()
        drop = int(flat.size * spec["discard_ratio"])
        if drop > 0:
            order = np.argsort(flat, kind="stable")[:drop]
            order = order[order != 0]
            flat[order] = 0
        fused = flat.reshape(tokens, tokens)
        a = (fused + np.eye(tokens)) / 2
        a = a / a.sum(axis=-1, keepdims=True)
        result = a @ result
    patches = result[0, spec.get("keep", list(range(spec["skip"], tokens)))]
    if patches.max() > 0:
        patches = patches / patches.max()
    print(json.dumps({"patches": patches.tolist()}))


if __name__ == "__main__":
    main()
