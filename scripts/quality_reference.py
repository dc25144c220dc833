#!/usr/bin/env python3
"""The libraries' side of `cargo bench --bench quality`: the model rows shap's KernelExplainer and
lime's LimeImageExplainer need, with their defaults and samplers, for a map whose Pearson
correlation with a long reference run of the same library (another seed) reaches 0.95 and 0.99
(the mean over three seeds), on the bundled Fashion-MNIST CNN. The predict function is ONNX Runtime
on the same ONNX file explaind serves, preprocessed as its manifest says, answering class
probabilities (as explaind's KernelSHAP and LIME weigh them). Rows are counted where the predict
function is called.

Captum is not measured: it needs torch, and PyPI's torch for Linux is a 539 MB wheel that pulls
the CUDA libraries with it (`pip download torch --no-deps`, 2026-12-07); torch stays out of here.

Its own virtualenv, never the test one:
    python3 -m venv ~/.cache/explaind/venv-bench
    ~/.cache/explaind/venv-bench/bin/pip install -r scripts/requirements-bench.txt
    ~/.cache/explaind/venv-bench/bin/python scripts/quality_reference.py [LABEL WORDS, e.g. lime]
"""

import pathlib
import sys

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


def rows_to_quality(model, explain):
    reference = explain(REFERENCE, 1)
    found = {}
    for n in GRID:
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


if __name__ == "__main__":
    sys.exit(main())
