"""Builds models/breast-cancer-forest: gradient-boosted trees (100 trees, depth 3) on the Wisconsin
breast cancer data, converted to ONNX with skl2onnx; the example model for TreeSHAP.

Same split as the MLP in make_models.py (25% held out, random_state 0, stratified). Thresholds are
rounded to float32 before conversion and the trees' training covers are written into
nodes_hitrates (skl2onnx writes ones), so TreeSHAP's path-dependent game has the real covers.
Background: the MLP's background.csv (100 training rows). Run with the test virtualenv's python
(scripts/requirements-tests.txt): `make tree-model`.
"""

import shutil
from pathlib import Path

import numpy as np
import onnx
from sklearn.datasets import load_breast_cancer
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.model_selection import train_test_split
from skl2onnx import to_onnx

from tree_shap_reference import round_thresholds, write_covers

ROOT = Path(__file__).resolve().parent.parent


def main():
    data = load_breast_cancer()
    x = data.data.astype(np.float32)
    y = data.target
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    model = GradientBoostingClassifier(n_estimators=100, max_depth=3, random_state=0).fit(xtr, ytr)
    round_thresholds(model)
    proto = to_onnx(model, xtr[:1], options={id(model): {"zipmap": False}}, target_opset={"": 17, "ai.onnx.ml": 3})
    write_covers(proto, model)
    folder = ROOT / "models" / "breast-cancer-forest"
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, folder / "model.onnx")
    shutil.copy(ROOT / "models" / "breast-cancer" / "background.csv", folder / "background.csv")
    names = ", ".join(f'"{n}"' for n in data.feature_names)
    accuracy = float((model.predict(xte) == yte).mean())
    (folder / "model.toml").write_text(
        'task = "tabular-classification"\n'
        f'description = "Gradient-boosted trees (100 x depth 3) on the Wisconsin diagnostic breast cancer data; '
        f'held-out accuracy {accuracy:.3f}. Explain with tree-shap."\n'
        'output = "probabilities"\nscores = "probabilities"\nlabels = ["malignant", "benign"]\n\n'
        f'[tabular]\nfeatures = [{names}]\nbackground = "background.csv"\n'
    )
    print(f"breast-cancer-forest: held-out accuracy {accuracy:.3f}, {len(proto.SerializeToString())} bytes")


if __name__ == "__main__":
    main()
