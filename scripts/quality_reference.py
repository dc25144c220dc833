#!/usr/bin/env python3
"""The libraries' side of `cargo bench --bench quality`: the model rows shap's KernelExplainer,
lime's LimeImageExplainer and Captum's samplers need, with their defaults and samplers, for a map
whose Pearson correlation with a long reference run of the same library (another seed) reaches 0.95
and 0.99 (the mean over three seeds), on the bundled Fashion-MNIST CNN; and the Gauss-Legendre
steps Captum's IntegratedGradients needs for its convergence delta to be within 1% of
f(x) - f(x') on the bench's ResNet-18 (64x64, seeded weights). shap's and lime's predict function
is ONNX Runtime on the same ONNX file explaind serves, preprocessed as its manifest says, answering
class probabilities (as explaind's KernelSHAP and LIME weigh them). Captum runs a torch module
that executes the same ONNX graph with the same weights (`OnnxModule`: the few operators these
CNNs use, checked against ONNX Runtime's output at start); its gradient methods explain the logit,
its perturbation methods the probability, as explaind does. Rows are counted where the model is
called (a gradient row counts once).

Its own virtualenv, never the test one (torch is 6 GB installed with its CUDA libraries):
    python3 -m venv ~/.cache/explaind/venv-bench
    ~/.cache/explaind/venv-bench/bin/pip install -r scripts/requirements-bench.txt
    cargo bench --bench quality -- models   # writes the ResNet-18 under target/bench-quality
    ~/.cache/explaind/venv-bench/bin/python scripts/quality_reference.py [LABEL WORDS, e.g. lime]
"""

import pathlib
import sys
import warnings

import numpy as np
import onnxruntime as ort
from PIL import Image

ROOT = pathlib.Path(__file__).resolve().parent.parent
SEEDS = [11, 12, 13]
GRID = [64, 128, 256, 512, 1024, 2048, 4096, 8192]
REFERENCE = 16384
# The manifest's preprocessing (models/fashion-cnn/model.toml).
SCALE, MEAN, STD = 1 / 255, 0.286, 0.353


class Model:
    """The CNN behind a predict function that counts the rows it is given."""

    def __init__(self):
        self.session = ort.InferenceSession(str(ROOT / "models/fashion-cnn/model.onnx"))
        self.input = self.session.get_inputs()[0].name
        self.rows = 0

    def probabilities(self, gray):
        """gray: (n, 28, 28) pixel values 0-255."""
        self.rows += len(gray)
        x = ((gray * SCALE - MEAN) / STD).astype(np.float32)[:, None, :, :]
        logits = self.session.run(None, {self.input: x})[0].astype(np.float64)
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)


class OnnxModule:
    """A torch callable running an ONNX graph's nodes with its initializers as tensors: the
    operators of the bundled CNN and the zoo ResNet (Conv, BatchNormalization, Relu, MaxPool,
    GlobalAveragePool, Flatten, Gemm, Add). Counts the rows it is called on."""

    def __init__(self, path):
        import onnx
        import torch
        from onnx import numpy_helper

        self.torch = torch
        graph = onnx.load(str(path)).graph
        self.weights = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in graph.initializer}
        self.nodes = [
            (n.op_type, list(n.input), list(n.output), {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute})
            for n in graph.node
        ]
        self.input = graph.input[0].name
        self.output = graph.output[0].name
        self.rows = 0

    def __call__(self, x):
        F = self.torch.nn.functional
        self.rows += x.shape[0]
        env = dict(self.weights)
        env[self.input] = x
        for op, ins, outs, at in self.nodes:
            a = [env[i] for i in ins if i]
            if op == "Conv":
                pads = at.get("pads", [0, 0, 0, 0])
                assert pads[:2] == pads[2:], pads
                y = F.conv2d(a[0], a[1], a[2] if len(a) > 2 else None, stride=at.get("strides", 1), padding=pads[:2], groups=at.get("group", 1))
            elif op == "BatchNormalization":
                y = F.batch_norm(a[0], a[3], a[4], a[1], a[2], False, 0.0, at.get("epsilon", 1e-5))
            elif op == "Relu":
                y = F.relu(a[0])
            elif op == "MaxPool":
                pads = at.get("pads", [0, 0, 0, 0])
                y = F.max_pool2d(a[0], at["kernel_shape"], at.get("strides", at["kernel_shape"]), padding=pads[:2])
            elif op == "GlobalAveragePool":
                y = a[0].mean(dim=(2, 3), keepdim=True)
            elif op == "Flatten":
                y = a[0].flatten(at.get("axis", 1))
            elif op == "Gemm":
                w = a[1].T if at.get("transB", 0) else a[1]
                y = a[0] @ w + a[2]
            elif op == "Add":
                y = a[0] + a[1]
            else:
                raise NotImplementedError(op)
            env[outs[0]] = y
        return env[self.output]

    def check(self, path, x):
        """The module's logits against ONNX Runtime's on `x`."""
        session = ort.InferenceSession(str(path))
        want = session.run(None, {session.get_inputs()[0].name: x})[0]
        with self.torch.no_grad():
            got = self(self.torch.from_numpy(x)).numpy()
        self.rows = 0
        assert np.allclose(got, want, rtol=1e-4, atol=1e-4), np.abs(got - want).max()


def pearson(a, b):
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def kernel_shap(model, image, target, segments, n, seed):
    """shap.KernelExplainer over the segments (absent: black), one all-absent background row."""
    import shap

    players = int(segments.max()) + 1

    def f(z):
        masked = np.where(z[:, segments] > 0.5, image[None], 0.0)
        return model.probabilities(masked)[:, target]

    np.random.seed(seed)
    explainer = shap.KernelExplainer(f, np.zeros((1, players)))
    phi = explainer.shap_values(np.ones((1, players)), nsamples=n, silent=True)
    return np.asarray(phi).reshape(-1)[segments]


def lime_map(model, image, target, segmenter, n, seed):
    """lime's LimeImageExplainer with its defaults, on the segments `segmenter` gives (fixed
    across seeds, so that runs differ only by their samples)."""
    from lime import lime_image

    rgb = np.repeat(image[:, :, None], 3, axis=2).astype(np.float64)
    explainer = lime_image.LimeImageExplainer(random_state=seed)
    e = explainer.explain_instance(
        rgb,
        lambda batch: model.probabilities(batch[..., 0]),
        labels=(target,),
        top_labels=None,
        num_samples=n,
        segmentation_fn=segmenter,
        random_seed=seed,
    )
    weights = dict(e.local_exp[target])
    return np.vectorize(lambda s: weights.get(s, 0.0))(e.segments)


def captum_studies(image, target, segments):
    """Captum's samplers on the CNN as torch runs it: each a (label, explain(n, seed), counter)."""
    import torch
    from captum.attr import (
        IntegratedGradients,
        KernelShap,
        Lime,
        NoiseTunnel,
        Saliency,
        ShapleyValueSampling,
    )

    path = ROOT / "models/fashion-cnn/model.onnx"
    net = OnnxModule(path)
    x = ((image * SCALE - MEAN) / STD).astype(np.float32)[None, None]
    net.check(path, x)
    x = torch.from_numpy(x)
    black = float((0 * SCALE - MEAN) / STD)
    # explaind's SmoothGrad noise: noise_level 0.15 of the input's range after preprocessing.
    sigma = 0.15 * (255 * SCALE) / STD
    mask = torch.from_numpy(segments.astype(np.int64))[None, None]
    probabilities = lambda z: torch.softmax(net(z), dim=1)

    def seeded(f):
        def run(n, seed):
            torch.manual_seed(seed)
            np.random.seed(seed)
            return f(n).detach().numpy().reshape(28, 28)

        return run

    return net, [
        (
            "captum NoiseTunnel(Saliency), iid",
            seeded(lambda n: NoiseTunnel(Saliency(net)).attribute(x, nt_type="smoothgrad", nt_samples=n, nt_samples_batch_size=256, stdevs=sigma, target=target)),
        ),
        (
            "captum IntegratedGradients (GL)",
            lambda n, seed: IntegratedGradients(net).attribute(x, baselines=black, target=target, n_steps=n, internal_batch_size=512).detach().numpy().reshape(28, 28),
        ),
        (
            "captum KernelShap (SLIC 50)",
            seeded(lambda n: KernelShap(probabilities).attribute(x, baselines=black, target=target, feature_mask=mask, n_samples=n, perturbations_per_eval=256)),
        ),
        (
            "captum Lime (SLIC 50)",
            seeded(lambda n: Lime(probabilities).attribute(x, baselines=black, target=target, feature_mask=mask, n_samples=n, perturbations_per_eval=256)),
        ),
        (
            "captum ShapleyValueSampling (SLIC 50)",
            # n permutations of 50 players: 51 rows each.
            seeded(lambda n: ShapleyValueSampling(probabilities).attribute(x, baselines=black, target=target, feature_mask=mask, n_samples=max(1, n // 51), perturbations_per_eval=256)),
        ),
    ]


def captum_ig_delta(points=(4, 8, 16, 25, 32, 50, 64, 128, 256)):
    """The fewest Gauss-Legendre steps of Captum's IntegratedGradients whose convergence delta is
    within 1% of f(x) - f(black) on the bench's ResNet-18 (64x64, seeded weights), on the bench's
    input (benches/common png(64)), preprocessed as explaind's default (pixels / 255)."""
    import torch
    from captum.attr import IntegratedGradients

    path = ROOT / "target/bench-quality/resnet-18-64/model.onnx"
    if not path.exists():
        return "not run (cargo bench --bench quality -- models writes the ResNet)"
    net = OnnxModule(path)
    yy, xx = np.mgrid[0:64, 0:64]
    rgb = np.stack([(xx * 7) % 256, (yy * 5) % 256, ((xx + yy) * 3) % 256]).astype(np.float32) / 255
    x = rgb[None]
    net.check(path, x)
    x = torch.from_numpy(x)
    base = torch.zeros_like(x)
    with torch.no_grad():
        logits = net(x)
        target = int(logits.argmax())
        gap = float(logits[0, target] - net(base)[0, target])
    for n in points:
        _, delta = IntegratedGradients(net).attribute(x, baselines=base, target=target, n_steps=n, internal_batch_size=64, return_convergence_delta=True)
        if abs(float(delta)) <= 0.01 * abs(gap):
            return f"{n} steps (relative delta {abs(float(delta)) / abs(gap):.4f})"
    return f"> {points[-1]} steps"


def rows_to_quality(model, explain, grid=GRID, reference_budget=REFERENCE):
    reference = explain(reference_budget, 1)
    found = {}
    for n in grid:
        before = model.rows
        corr = np.mean([pearson(explain(n, s), reference) for s in SEEDS])
        rows = (model.rows - before) // len(SEEDS)
        for threshold in (0.95, 0.99):
            if corr >= threshold and threshold not in found:
                found[threshold] = rows
        if 0.99 in found:
            break
    return found.get(0.95, "-"), found.get(0.99, "-")


def main():
    # A map that is all zeros (Captum's Lime: its Lasso fits nothing) has no correlation: numpy
    # warns, and the budget is not reached.
    warnings.filterwarnings("ignore", category=RuntimeWarning)
    from lime.wrappers.scikit_image import SegmentationAlgorithm
    from skimage.segmentation import slic

    model = Model()
    image = np.asarray(Image.open(ROOT / "tests/fixtures/fashion/test_00.png").convert("L"), dtype=np.float64)
    target = int(model.probabilities(image[None]).argmax())
    segments = slic(image / 255.0, n_segments=50, compactness=10, channel_axis=None, start_label=0)
    # lime's default segmentation (quickshift) finds only a few segments on a 28x28 image, which a
    # few dozen samples fit; the same 50 SLIC segments as shap's players (and explaind's default)
    # compare the samplers at equal players.
    quickshift = SegmentationAlgorithm("quickshift", kernel_size=4, max_dist=200, ratio=0.2, random_seed=0)
    print(f"{'model':<13} {'library':<34} {'rows@0.95':>9} {'rows@0.99':>9}")
    only = sys.argv[1:]
    for label, explain in [
        ("shap KernelExplainer", lambda n, s: kernel_shap(model, image, target, segments, n, s)),
        ("lime LimeImageExplainer (SLIC 50)", lambda n, s: lime_map(model, image, target, lambda _: segments, n, s)),
        ("lime LimeImageExplainer (quickshift)", lambda n, s: lime_map(model, image, target, quickshift, n, s)),
    ]:
        if only and not any(word in label for word in only):
            continue
        r95, r99 = rows_to_quality(model, explain)
        print(f"{'fashion-cnn':<13} {label:<34} {r95:>9} {r99:>9}", flush=True)
    wanted = lambda label: not only or any(word in label for word in only)
    if not any(wanted(label) for label in ["captum NoiseTunnel IntegratedGradients KernelShap Lime ShapleyValueSampling IG delta"]):
        return
    net, studies = captum_studies(image, target, segments)
    # Budgets about 1.5x apart, as the bench's; references as long as the bench's (SmoothGrad 2,048
    # copies, IG 1,000 points, the others 8,192 rows).
    fine = [4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024]
    budgets = {
        "NoiseTunnel": (fine, 2048),
        "Integrated": ([4, 5, 6, 8, 10, 12, 16, 25, 32, 50, 64, 128, 256], 1000),
    }
    for label, explain in studies:
        if not wanted(label):
            continue
        grid, reference = next((v for k, v in budgets.items() if k in label), (GRID[:7] + [3072, 4096, 8192], 8192))
        r95, r99 = rows_to_quality(net, explain, grid, reference)
        print(f"{'fashion-cnn':<13} {label:<34} {r95:>9} {r99:>9}", flush=True)
    if wanted("captum IG delta"):
        print(f"{'resnet-18-64':<13} captum IG delta within 1%: {captum_ig_delta()}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
