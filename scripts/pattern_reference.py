"""PatternNet and PatternAttribution computed apart from explaind, for tests/it/patterns.rs.

Usage: pattern_reference.py SPEC.json

SPEC: {"model": path of one of the zoo's pattern networks (explaind::onnx::zoo::pattern_conv with
ReLU and padding, or pattern_dense), "kind": "conv" | "dense", "data": rows of features (what the
patterns are fitted on), "input": one row, "target": class index}.

The weights are read by name with the onnx package; everything else is NumPy, written from
Kindermans et al., ICLR 2018 (PatternNet and PatternAttribution), with iNNvestigate's conventions
(tools/pattern.py): per output neuron j with weights w_j and inputs x (a convolution's zero-padded
3x3 patches), cov = E[x y] - E[x] E[y] and a_j = cov / (w_j^T cov) (a zero denominator divides as
one); the linear estimator over every sample for the last layer, the two-component estimator's
positive regime (the samples where the ReLU is open, their own means) for the layer before a ReLU.
y is taken without its bias here (explaind keeps it: a covariance does not see it).
The backward pass starts at the target's score, goes back through the last layer with the pattern
(PatternNet) or weight times pattern (PatternAttribution) in place of the weight, through the ReLU
as its forward mask, and through the first layer the same way.
Prints {"pattern_net": [...], "pattern_attribution": [...], "score": float}.
"""

import json
import sys

import numpy as np
import onnx
from onnx import numpy_helper


def pattern(x, y, w, mask=None):
    """Columns a_j for inputs x [n, k], outputs y [n, m], weights w [k, m]."""
    a = np.zeros_like(w)
    for j in range(w.shape[1]):
        keep = np.ones(len(x), bool) if mask is None else mask[:, j]
        if not keep.any():
            continue
        xs, ys = x[keep], y[keep, j]
        cov = (xs * ys[:, None]).mean(0) - xs.mean(0) * ys.mean()
        d = w[:, j] @ cov
        a[:, j] = cov / (d if d != 0 else 1.0)
    return a


def patches(images):
    """[n, 1, 6, 6] -> [n, 6, 6, 9], zero padding 1, 3x3 windows in (ky, kx) order."""
    n = images.shape[0]
    padded = np.zeros((n, 8, 8))
    padded[:, 1:7, 1:7] = images[:, 0]
    out = np.zeros((n, 6, 6, 9))
    for ky in range(3):
        for kx in range(3):
            out[:, :, :, ky * 3 + kx] = padded[:, ky:ky + 6, kx:kx + 6]
    return out


def conv(spec, w):
    cw, cb = w["conv.w"].reshape(3, 9), w["conv.b"]
    fw, fb = w["fc.w"], w["fc.b"]  # fc.w is [2, 108] (transB)
    data = np.asarray(spec["data"], np.float64).reshape(-1, 1, 6, 6)
    p = patches(data)  # [n, 6, 6, 9]
    z = p @ cw.T  # [n, 6, 6, 3] without bias
    h = z + cb
    relu = np.maximum(h, 0)
    flat = relu.transpose(0, 3, 1, 2).reshape(len(data), -1)  # channels first, as Flatten
    px = p.reshape(-1, 9)
    a1 = pattern(px, z.reshape(-1, 3), cw.T, mask=h.reshape(-1, 3) > 0).T  # [3, 9]
    a2 = pattern(flat, flat @ fw.T, fw.T).T  # [2, 108]

    x0 = np.asarray(spec["input"], np.float64).reshape(1, 1, 6, 6)
    p0 = patches(x0)[0]
    h0 = p0 @ cw.T + cb  # [6, 6, 3]
    flat0 = np.maximum(h0, 0).transpose(2, 0, 1).reshape(-1)
    scores = fw @ flat0 + fb
    t = spec["target"]
    out = {"score": float(scores[t])}
    for name, k1, k2 in [("pattern_net", a1, a2), ("pattern_attribution", cw * a1, fw * a2)]:
        r = k2[t] * scores[t]  # [108]
        g = r.reshape(3, 6, 6).transpose(1, 2, 0) * (h0 > 0)  # [6, 6, 3]
        gp = g @ k1  # [6, 6, 9]: each position's share of its patch
        x = np.zeros((8, 8))
        for ky in range(3):
            for kx in range(3):
                x[ky:ky + 6, kx:kx + 6] += gp[:, :, ky * 3 + kx]
        out[name] = x[1:7, 1:7].reshape(-1).tolist()
    return out


def dense(spec, w):
    w1, b1, w2, b2 = w["fc1.w"], w["fc1.b"], w["fc2.w"], w["fc2.b"]
    data = np.asarray(spec["data"], np.float64)
    z = data @ w1
    h = z + b1
    r = np.maximum(h, 0)
    a1 = pattern(data, z, w1, mask=h > 0)
    a2 = pattern(r, r @ w2, w2)
    x0 = np.asarray(spec["input"], np.float64)
    h0 = x0 @ w1 + b1
    scores = np.maximum(h0, 0) @ w2 + b2
    t = spec["target"]
    out = {"score": float(scores[t])}
    for name, k1, k2 in [("pattern_net", a1, a2), ("pattern_attribution", w1 * a1, w2 * a2)]:
        g = k2[:, t] * scores[t] * (h0 > 0)
        out[name] = (k1 @ g).tolist()
    return out


def main():
    spec = json.load(open(sys.argv[1]))
    model = onnx.load(spec["model"])
    weights = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}
    out = conv(spec, weights) if spec["kind"] == "conv" else dense(spec, weights)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
