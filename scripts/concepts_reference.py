#!/usr/bin/env python3
"""Reference values for tests/it/concepts.rs, computed apart from explaind:

- CAVs: scikit-learn's LogisticRegression(C=1.0) (tensorflow/tcav's model_type='logistic') on the
  flattened activations ONNX Runtime's Python API reads at each layer (concept rows labelled 1,
  random rows 0), solved to convergence (lbfgs, tol 1e-12), the coefficients at unit length;
- layer information: Ross's k-nearest-neighbour estimator of the mutual information between each
  layer's pooled activations (channel means) and discrete labels, written here in NumPy with
  scipy's digamma, with the preparation src/explain/layer_information.rs documents (columns over
  their standard deviation, a 1e-10 jitter from SplitMix64).

Usage: concepts_reference.py SPEC.json; prints JSON {"cavs": {layer: [...]}, "mi": [{layer: nats}]}.
SPEC: {"model": path, "layers": [...], "pixels": {id: [values of one input row]}, "shape": [c, h, w],
       "cav": {"concept": [ids], "random": [ids]}, "mi": [{"ids": [...], "labels": [...], "seed": s}]}
"""
import json
import sys

import numpy as np
import onnx
import onnxruntime as ort
from scipy.special import digamma
from sklearn.linear_model import LogisticRegression

MASK = (1 << 64) - 1


def splitmix(state):
    state = (state + 0x9E3779B97F4A7C15) & MASK
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    z ^= z >> 31
    return state, 2.0 * ((z >> 11) / float(1 << 53)) - 1.0


def activations(model_path, layers, x):
    model = onnx.load(model_path)
    known = {o.name for o in model.graph.output}
    for layer in layers:
        if layer not in known:
            model.graph.output.append(onnx.helper.make_empty_tensor_value_info(layer))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    outs = session.run(layers, {session.get_inputs()[0].name: x})
    return dict(zip(layers, outs))


def prepare(x, seed):
    n, width = x.shape
    std = x.std(axis=0)
    std[std == 0] = 1.0
    x = x / std
    amplitude = 1e-10 * np.maximum(1.0, np.abs(x).mean(axis=0))
    state = seed & MASK
    jitter = np.empty((n, width))
    for i in range(n):
        for c in range(width):
            state, u = splitmix(state)
            jitter[i, c] = u
    return x + amplitude * jitter


def ross(x, labels, k=3):
    labels = np.asarray(labels)
    values, counts = np.unique(labels, return_counts=True)
    count = dict(zip(values, counts))
    keep = np.array([count[l] > 1 for l in labels])
    x, labels = x[keep], labels[keep]
    n = len(labels)
    d = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))
    total = digamma(n)
    terms = []
    for i in range(n):
        ny = count[labels[i]]
        kk = max(1, min(k, ny - 1))
        same = np.sort(d[i][(labels == labels[i]) & (np.arange(n) != i)])
        radius = same[kk - 1]
        m = max(1, int((d[i] < radius).sum()))
        terms.append(digamma(kk) - digamma(ny) - digamma(m))
    return max(0.0, total + float(np.mean(terms)))


def main():
    spec = json.load(open(sys.argv[1]))
    shape = spec["shape"]
    layers = spec["layers"]
    out = {"cavs": {}, "mi": []}

    def batch(ids):
        return np.array([spec["pixels"][i] for i in ids], dtype=np.float32).reshape([len(ids)] + shape)

    if "cav" in spec:
        concept, random = spec["cav"]["concept"], spec["cav"]["random"]
        acts = activations(spec["model"], layers, batch(concept + random))
        y = np.array([1] * len(concept) + [0] * len(random))
        for layer in layers:
            a = acts[layer].reshape(len(y), -1).astype(np.float64)
            lr = LogisticRegression(C=1.0, tol=1e-12, max_iter=100000).fit(a, y)
            coef = lr.coef_[0]
            out["cavs"][layer] = (coef / np.linalg.norm(coef)).tolist()
    for job in spec.get("mi", []):
        acts = activations(spec["model"], layers, batch(job["ids"]))
        result = {}
        for i, layer in enumerate(layers):
            a = acts[layer].astype(np.float64)
            pooled = a.reshape(a.shape[0], a.shape[1], -1).mean(axis=2)
            result[layer] = ross(prepare(pooled, job["seed"] + i), job["labels"])
        out["mi"].append(result)
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
