"""Independent NumPy implementations of explaind's explanation metrics, from their published
formulas, for tests/it/eval.rs. Reads a JSON case on stdin, prints the expected values as JSON.

The case names a model that NumPy evaluates itself:
  {"model": {"kind": "image", "mask": [...], "fc": 4.0}}    logits [z, -z], z = fc * mean(x * mask)
  {"model": {"kind": "linear", "w": [[...], ...], "b": [...]}}  logits = x w + b
and gives the preprocessed input "x" (flat), the map (one value per feature), the target, and the
metrics' parameters (deletion / insertion "steps", pixel flipping "features_in_step"; substrate zeros).
"""
import json
import sys

import numpy as np


def logits(model, x):
    x = np.asarray(x, dtype=np.float64)
    if model["kind"] == "image":
        z = model["fc"] * np.mean(x * np.asarray(model["mask"], dtype=np.float64))
        return np.array([z, -z])
    return x @ np.asarray(model["w"], dtype=np.float64) + np.asarray(model["b"], dtype=np.float64)


def probability(model, x, target):
    z = logits(model, x)
    e = np.exp(z - z.max())
    return float(e[target] / e.sum())


def curve(model, start, end, order, counts, target):
    out = []
    for n in counts:
        x = start.copy()
        x[order[:n]] = end[order[:n]]
        out.append(probability(model, x, target))
    return out


def area(points):
    # RISE's auc: trapezoid over x in [0, 1].
    p = np.asarray(points)
    return float((p.sum() - p[0] / 2 - p[-1] / 2) / (len(p) - 1))


def main():
    case = json.load(sys.stdin)
    model, target = case["model"], case["target"]
    x = np.asarray(case["x"], dtype=np.float64)
    a = np.asarray(case["map"], dtype=np.float64)
    zero = np.zeros_like(x)
    n = len(a)
    order = np.argsort(-a, kind="stable")
    out = {}
    steps = case["steps"]
    per_step = -(-n // min(steps, n))
    counts = [min(i * per_step, n) for i in range(-(-n // per_step) + 1)]
    deletion = curve(model, x, zero, order, counts, target)
    insertion = curve(model, zero, x, order, counts, target)
    out["deletion"] = {"value": area(deletion), "curve": deletion}
    out["insertion"] = {"value": area(insertion), "curve": insertion}
    f = case["features_in_step"]
    flips = [min((i + 1) * f, n) for i in range(-(-n // f))]
    flipping = curve(model, x, zero, order, flips, target)
    out["pixel_flipping"] = {"value": area(flipping), "curve": flipping}
    # Quantus: sparseness = Gini of |a| sorted ascending; complexity = entropy of |a| / sum |a|.
    s = np.sort(np.abs(a))
    k = np.arange(1, n + 1)
    out["sparseness"] = {"value": float(np.sum((2 * k - n - 1) * s) / (n * np.sum(s)))}
    p = np.abs(a) / np.sum(np.abs(a))
    p = p[p > 0]
    out["complexity"] = {"value": float(-np.sum(p * np.log(p)))}
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
