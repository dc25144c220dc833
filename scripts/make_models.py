#!/usr/bin/env python3
"""Regenerates the bundled example models and their held-out test fixtures.

  models/fashion-cnn   a small CNN trained on Fashion-MNIST (Debian package dataset-fashion-mnist)
  models/breast-cancer an MLP trained on scikit-learn's bundled Wisconsin breast cancer data set

Training uses JAX on the CPU with fixed seeds; the ONNX graphs are written with the onnx package's
helpers (standard operators, opset 17). Run through `make models`, which creates the virtual
environment this needs (numpy, scikit-learn, jax, onnx, onnxruntime). The script prints each model's
held-out accuracy and writes it, with the provenance, to the model's README.md.
"""

import gzip
import json
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = os.path.join(ROOT, "models")
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
FASHION_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_LABELS = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                  "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
FASHION_MEAN, FASHION_STD = 0.2860, 0.3530
OPSET = 17


def read_idx(name):
    with gzip.open(os.path.join(FASHION_DIR, name), "rb") as f:
        data = f.read()
    magic = int.from_bytes(data[0:4], "big")
    ndim = magic & 0xFF
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def adam_train(loss_fn, params, batches, steps, lr=1e-3, seed=0):
    import jax
    import jax.numpy as jnp

    grad_fn = jax.jit(jax.value_and_grad(loss_fn))
    m = jax.tree_util.tree_map(jnp.zeros_like, params)
    v = jax.tree_util.tree_map(jnp.zeros_like, params)
    b1, b2, eps = 0.9, 0.999, 1e-8

    @jax.jit
    def update(params, m, v, g, t):
        m = jax.tree_util.tree_map(lambda m, g: b1 * m + (1 - b1) * g, m, g)
        v = jax.tree_util.tree_map(lambda v, g: b2 * v + (1 - b2) * g * g, v, g)
        mh = jax.tree_util.tree_map(lambda m: m / (1 - b1 ** t), m)
        vh = jax.tree_util.tree_map(lambda v: v / (1 - b2 ** t), v)
        params = jax.tree_util.tree_map(lambda p, a, b: p - lr * a / (jnp.sqrt(b) + eps), params, mh, vh)
        return params, m, v

    for t in range(1, steps + 1):
        x, y = next(batches)
        loss, g = grad_fn(params, x, y)
        params, m, v = update(params, m, v, g, t)
        if t % 500 == 0:
            print(f"  step {t}/{steps} loss {float(loss):.4f}", flush=True)
    return params


def batch_iter(x, y, size, seed):
    rng = np.random.default_rng(seed)
    while True:
        order = rng.permutation(len(x))
        for i in range(0, len(x) - size + 1, size):
            idx = order[i:i + size]
            yield x[idx], y[idx]


def fashion_cnn():
    import jax
    import jax.numpy as jnp
    import onnx
    from onnx import helper, numpy_helper, TensorProto

    print("fashion-cnn: loading Fashion-MNIST", flush=True)
    xtr = read_idx("train-images-idx3-ubyte.gz").astype(np.float32)
    ytr = read_idx("train-labels-idx1-ubyte.gz").astype(np.int32)
    xte_u8 = read_idx("t10k-images-idx3-ubyte.gz")
    yte = read_idx("t10k-labels-idx1-ubyte.gz").astype(np.int32)
    norm = lambda a: ((a / 255.0 - FASHION_MEAN) / FASHION_STD).astype(np.float32)[:, None, :, :]
    xtr, xte = norm(xtr), norm(xte_u8.astype(np.float32))

    key = jax.random.PRNGKey(0)
    shapes = {"c1": (16, 1, 3, 3), "c2": (32, 16, 3, 3), "c3": (64, 32, 3, 3), "fc": (64, 10)}
    params = {}
    for name, shape in shapes.items():
        key, sub = jax.random.split(key)
        fan_in = int(np.prod(shape[1:])) if name != "fc" else shape[0]
        params[name + "_w"] = jax.random.normal(sub, shape) * np.sqrt(2.0 / fan_in)
        params[name + "_b"] = jnp.zeros(shape[0] if name != "fc" else shape[1])

    def conv(x, w, b):
        y = jax.lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NCHW", "OIHW", "NCHW"))
        return y + b[None, :, None, None]

    def pool(x):
        return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")

    def forward(p, x):
        x = pool(jax.nn.relu(conv(x, p["c1_w"], p["c1_b"])))
        x = pool(jax.nn.relu(conv(x, p["c2_w"], p["c2_b"])))
        x = jax.nn.relu(conv(x, p["c3_w"], p["c3_b"]))
        x = x.mean(axis=(2, 3))
        return x @ p["fc_w"] + p["fc_b"]

    def loss(p, x, y):
        logits = forward(p, x)
        return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(len(y)), y])

    print("fashion-cnn: training (Adam, 4 epochs of 60k, batch 128)", flush=True)
    params = adam_train(loss, params, batch_iter(xtr, ytr, 128, seed=1), steps=4 * 468, lr=2e-3)
    fwd = jax.jit(forward)
    logits = np.concatenate([np.asarray(fwd(params, xte[i:i + 1000])) for i in range(0, len(xte), 1000)])
    acc = float((logits.argmax(1) == yte).mean())
    print(f"fashion-cnn: held-out accuracy {acc:.4f} on the 10,000 test images", flush=True)

    P = {k: np.asarray(v, dtype=np.float32) for k, v in params.items()}
    inits = [numpy_helper.from_array(P[k], k) for k in sorted(P)]
    nodes = [
        helper.make_node("Conv", ["input", "c1_w", "c1_b"], ["conv1"], name="conv1", pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("Relu", ["conv1"], ["relu1"], name="relu1"),
        helper.make_node("MaxPool", ["relu1"], ["pool1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["pool1", "c2_w", "c2_b"], ["conv2"], name="conv2", pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("Relu", ["conv2"], ["relu2"], name="relu2"),
        helper.make_node("MaxPool", ["relu2"], ["pool2"], name="pool2", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["pool2", "c3_w", "c3_b"], ["conv3"], name="conv3", pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("Relu", ["conv3"], ["relu3"], name="relu3"),
        helper.make_node("GlobalAveragePool", ["relu3"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten", axis=1),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], name="fc"),
    ]
    graph = helper.make_graph(
        nodes, "fashion_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 28, 28])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="explaind scripts/make_models.py")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    out = os.path.join(MODELS, "fashion-cnn")
    os.makedirs(out, exist_ok=True)
    onnx.save(model, os.path.join(out, "model.onnx"))
    with open(os.path.join(out, "model.toml"), "w") as f:
        f.write('task = "image-classification"\n')
        f.write('description = "Small CNN (3 conv layers, 75k parameters) trained on Fashion-MNIST; 28x28 grayscale clothing images."\n')
        f.write('output = "logits"\nscores = "logits"\n')
        f.write("labels = [" + ", ".join(json.dumps(l) for l in FASHION_LABELS) + "]\n\n")
        f.write('[image]\nlayout = "NCHW"\ncolor = "grayscale"\nresize = "bilinear"\nfit = "stretch"\n')
        f.write(f"scale = {1 / 255.0!r}\nmean = [{FASHION_MEAN}]\nstd = [{FASHION_STD}]\n")
    write_readme(out, "fashion-cnn", [
        "Data: Fashion-MNIST (Xiao, Rasul and Vollgraf 2017), from Debian's package `dataset-fashion-mnist` "
        "(`/usr/share/datasets/fashion-mnist`): 60,000 training and 10,000 test images, 28x28 grayscale, 10 classes.",
        "Model: Conv(16)-ReLU-MaxPool, Conv(32)-ReLU-MaxPool, Conv(64)-ReLU, GlobalAveragePool, Gemm(10); "
        "trained with Adam (lr 2e-3, batch 128, 4 epochs, JAX on CPU, seed 0).",
        f"Held-out accuracy: **{acc:.4f}** on the 10,000 test images.",
        "Preprocessing: pixel / 255, then (x - 0.2860) / 0.3530 (the training set's mean and std).",
    ])

    # Held-out fixtures: the first 20 test images as PNGs, with true labels and the scores that
    # ONNX Runtime's Python API gives for the same pixels (a check on the service's preprocessing).
    import onnxruntime as ort
    from PIL import Image
    sess = ort.InferenceSession(os.path.join(out, "model.onnx"))
    fx = os.path.join(FIXTURES, "fashion")
    os.makedirs(fx, exist_ok=True)
    cases = []
    for i in range(20):
        name = f"test_{i:02d}.png"
        Image.fromarray(xte_u8[i], mode="L").save(os.path.join(fx, name))
        ref = sess.run(None, {"input": xte[i:i + 1]})[0][0]
        cases.append({"file": name, "label": int(yte[i]), "label_name": FASHION_LABELS[yte[i]],
                      "logits": [float(v) for v in ref]})
    with open(os.path.join(fx, "expected.json"), "w") as f:
        json.dump({"source": "Fashion-MNIST test set, images 0-19", "cases": cases}, f, indent=1)


def breast_cancer():
    import jax
    import jax.numpy as jnp
    import onnx
    from onnx import helper, numpy_helper, TensorProto
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    data = load_breast_cancer()
    names = [str(n) for n in data.feature_names]
    x = data.data.astype(np.float32)
    y = data.target.astype(np.int32)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    mean, std = xtr.mean(0), xtr.std(0)

    key = jax.random.PRNGKey(1)
    k1, k2 = jax.random.split(key)
    params = {"w1": jax.random.normal(k1, (30, 16)) * np.sqrt(2 / 30), "b1": jnp.zeros(16),
              "w2": jax.random.normal(k2, (16, 2)) * np.sqrt(1 / 16), "b2": jnp.zeros(2)}

    def forward(p, x):
        h = jax.nn.relu(((x - mean) / std) @ p["w1"] + p["b1"])
        return h @ p["w2"] + p["b2"]

    def loss(p, x, y):
        l2 = 1e-3 * (jnp.sum(p["w1"] ** 2) + jnp.sum(p["w2"] ** 2))
        return -jnp.mean(jax.nn.log_softmax(forward(p, x))[jnp.arange(len(y)), y]) + l2

    print("breast-cancer: training", flush=True)
    params = adam_train(loss, params, batch_iter(xtr, ytr, 32, seed=2), steps=1500, lr=3e-3)
    logits = np.asarray(forward(params, xte))
    acc = float((logits.argmax(1) == yte).mean())
    print(f"breast-cancer: held-out accuracy {acc:.4f} on {len(yte)} rows", flush=True)

    P = {k: np.asarray(v, dtype=np.float32) for k, v in params.items()}
    inits = [numpy_helper.from_array(P[k], k) for k in sorted(P)]
    inits += [numpy_helper.from_array(mean.astype(np.float32), "mean"), numpy_helper.from_array(std.astype(np.float32), "std")]
    nodes = [
        helper.make_node("Sub", ["input", "mean"], ["centered"], name="center"),
        helper.make_node("Div", ["centered", "std"], ["scaled"], name="scale"),
        helper.make_node("MatMul", ["scaled", "w1"], ["mm1"], name="fc1"),
        helper.make_node("Add", ["mm1", "b1"], ["h1"], name="fc1_bias"),
        helper.make_node("Relu", ["h1"], ["a1"], name="relu1"),
        helper.make_node("MatMul", ["a1", "w2"], ["mm2"], name="fc2"),
        helper.make_node("Add", ["mm2", "b2"], ["logits"], name="fc2_bias"),
    ]
    graph = helper.make_graph(
        nodes, "breast_cancer_mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 30])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="explaind scripts/make_models.py")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    out = os.path.join(MODELS, "breast-cancer")
    os.makedirs(out, exist_ok=True)
    onnx.save(model, os.path.join(out, "model.onnx"))
    with open(os.path.join(out, "model.toml"), "w") as f:
        f.write('task = "tabular-classification"\n')
        f.write('description = "MLP (30-16-2) on the Wisconsin diagnostic breast cancer data set; inputs are the raw measurements."\n')
        f.write('output = "logits"\nscores = "logits"\nlabels = ["malignant", "benign"]\n\n')
        f.write("[tabular]\nfeatures = [" + ", ".join(json.dumps(n) for n in names) + "]\n")
        f.write('background = "background.csv"\n')
    # A background sample for perturbation methods: 100 training rows.
    rng = np.random.default_rng(3)
    idx = rng.choice(len(xtr), 100, replace=False)
    with open(os.path.join(out, "background.csv"), "w") as f:
        f.write(",".join(json.dumps(n) for n in names) + "\n")
        for row in xtr[idx]:
            f.write(",".join(repr(float(v)) for v in row) + "\n")
    write_readme(out, "breast-cancer", [
        "Data: Wisconsin diagnostic breast cancer (569 rows, 30 features), bundled with scikit-learn "
        "(`sklearn.datasets.load_breast_cancer`); 75/25 stratified split, random_state 0.",
        "Model: standardisation inside the graph (Sub, Div), then MatMul-Add-ReLU (16) and MatMul-Add (2 logits); "
        "trained with Adam (lr 3e-3, batch 32, 1,500 steps, L2 1e-3, JAX on CPU, seed 1).",
        f"Held-out accuracy: **{acc:.4f}** on {len(yte)} rows.",
        "background.csv: 100 training rows (seed 3), the background set for KernelSHAP and LIME.",
    ])
    cases = [{"features": [float(v) for v in xte[i]], "label": int(yte[i]), "logits": [float(v) for v in logits[i]]}
             for i in range(len(xte))]
    os.makedirs(FIXTURES, exist_ok=True)
    with open(os.path.join(FIXTURES, "breast_cancer_holdout.json"), "w") as f:
        json.dump({"source": "held-out 25% of load_breast_cancer, random_state 0", "feature_names": names,
                   "cases": cases}, f)


def write_readme(out, name, lines):
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write(f"# {name}\n\nMade by `scripts/make_models.py` (run `make models`).\n\n")
        for line in lines:
            f.write(f"- {line}\n")


if __name__ == "__main__":
    which = sys.argv[1:] or ["fashion-cnn", "breast-cancer"]
    if "fashion-cnn" in which:
        fashion_cnn()
    if "breast-cancer" in which:
        breast_cancer()
