"""Tree-model fixtures and the shap package's TreeSHAP values for them, for tests/it/tree_shap.rs.

Usage: tree_shap_reference.py OUT_DIR

Trains ensembles with fixed seeds (scikit-learn random forests, binary and multi-class, and a
regressor; scikit-learn gradient boosting, binary; LightGBM, multi-class, as shap does not read
scikit-learn's multi-class boosting), converts each to ONNX with skl2onnx or onnxmltools (scores as
a plain tensor, no ZipMap), and writes OUT_DIR/models/<name>/{model.onnx, model.toml, background.csv} plus
OUT_DIR/expected.json with shap.TreeExplainer's values for a few rows in both of its games:
interventional (background = the CSV) and tree_path_dependent (the trees' training covers).

Covers: skl2onnx writes nodes_hitrates as all ones. The random forests get their real covers
written into nodes_hitrates (as a converter that keeps them would), so explaind reads them from the
model; the boosted models keep the ones, so explaind counts covers from the background CSV, which
here is the training set (no subsampling), giving the same covers.
Installed by scripts/test-setup.sh into the test virtualenv (pinned versions there).
"""

import json
import sys
from pathlib import Path

import lightgbm as lgb
import numpy as np
import onnx
import shap
from sklearn.datasets import load_breast_cancer, load_wine, make_friedman1
from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier, RandomForestRegressor
from onnxmltools import convert_lightgbm
from onnxmltools.convert.common.data_types import FloatTensorType
from skl2onnx import to_onnx

ROWS = 8


def write_covers(model_proto, estimator):
    """Writes each tree's weighted_n_node_samples into nodes_hitrates (skl2onnx node ids = sklearn's)."""
    node = next(n for n in model_proto.graph.node if n.op_type.startswith("TreeEnsemble"))
    attrs = {a.name: a for a in node.attribute}
    trees = [t for t in np.ravel(estimator.estimators_)]
    tree_ids = list(attrs["nodes_treeids"].ints)
    node_ids = list(attrs["nodes_nodeids"].ints)
    covers = [float(trees[t].tree_.weighted_n_node_samples[n]) for t, n in zip(tree_ids, node_ids)]
    del attrs["nodes_hitrates"].floats[:]
    attrs["nodes_hitrates"].floats.extend(covers)


def round_thresholds(estimator):
    """Rounds a scikit-learn ensemble's thresholds to float32 in place, as ONNX stores them, so the
    model shap reads and the model ONNX Runtime runs route every row the same way."""
    for tree in np.ravel(estimator.estimators_):
        t = tree.tree_.threshold
        t[:] = t.astype(np.float32).astype(np.float64)


def main(out):
    out = Path(out)
    cancer = load_breast_cancer()
    wine = load_wine()
    # Friedman's synthetic regression; (scikit-learn's diabetes data, with its many tied tiny values,
    # trips shap's own interventional additivity check in float32).
    X_f, y_f = make_friedman1(n_samples=300, n_features=8, random_state=0)
    friedman = type("Data", (), {"data": X_f, "target": y_f})
    cases = [
        ("rf-binary", RandomForestClassifier(n_estimators=25, max_depth=6, random_state=0), cancer, True, "probabilities"),
        ("gb-binary", GradientBoostingClassifier(n_estimators=30, max_depth=3, random_state=0), cancer, False, "logits"),
        ("rf-multi", RandomForestClassifier(n_estimators=25, max_depth=5, random_state=1), wine, True, "probabilities"),
        ("lgbm-multi", lgb.LGBMClassifier(n_estimators=20, max_depth=3, num_leaves=8, random_state=1, verbose=-1),
         wine, False, "logits"),
        ("rf-regression", RandomForestRegressor(n_estimators=20, max_depth=5, random_state=2), friedman, True, "raw"),
    ]
    expected = {}
    for name, est, data, covers, scores in cases:
        X = data.data.astype(np.float32)
        y = data.target
        est.fit(X, y)
        if not isinstance(est, lgb.LGBMClassifier):
            round_thresholds(est)
        if isinstance(est, lgb.LGBMClassifier):
            proto = convert_lightgbm(est, initial_types=[("input", FloatTensorType([None, X.shape[1]]))],
                                     zipmap=False, target_opset=15)
        else:
            proto = to_onnx(est, X[:1], options={id(est): {"zipmap": False}} if hasattr(est, "classes_") else None,
                            target_opset={"": 17, "ai.onnx.ml": 3})
        if covers:
            write_covers(proto, est)
        folder = out / "models" / name
        folder.mkdir(parents=True, exist_ok=True)
        onnx.save(proto, folder / "model.onnx")
        features = [f"f{i}" for i in range(X.shape[1])]
        classifier = hasattr(est, "classes_")
        output = "probabilities" if classifier else "variable"
        manifest = [
            f'task = "{"tabular-classification" if classifier else "tabular-regression"}"',
            f'output = "{output}"',
            f'scores = "{"probabilities" if classifier else "raw"}"',
        ]
        if classifier:
            manifest.append("labels = [" + ", ".join(f'"c{c}"' for c in est.classes_) + "]")
        manifest += ["", "[tabular]", "features = [" + ", ".join(f'"{f}"' for f in features) + "]",
                     'background = "background.csv"']
        (folder / "model.toml").write_text("\n".join(manifest) + "\n")
        rows = ["," .join(features)] + [",".join(repr(float(v)) for v in r) for r in X]
        (folder / "background.csv").write_text("\n".join(rows) + "\n")

        picks = X[np.linspace(0, len(X) - 1, ROWS).astype(int)]
        result = {"rows": picks.tolist(), "scores": scores}
        for game, explainer in [
            # An explicit masker keeps every background row (a bare array is sampled down to 100).
            ("interventional", shap.TreeExplainer(est, data=shap.maskers.Independent(X, max_samples=len(X)),
                                                  feature_perturbation="interventional")),
            ("tree_path_dependent", shap.TreeExplainer(est, feature_perturbation="tree_path_dependent")),
        ]:
            values = np.asarray(explainer.shap_values(picks, check_additivity=True), dtype=np.float64)
            base = np.atleast_1d(np.asarray(explainer.expected_value, dtype=np.float64))
            if values.ndim == 2:  # one output: regression, or a binary booster's log-odds of class 1
                values = values[:, :, None]
            classes = list(range(values.shape[2]))
            if classifier and len(est.classes_) == 2 and values.shape[2] == 1:
                classes = [1]
            result[game] = {"values": values.tolist(), "base": base.tolist(), "classes": classes}
        expected[name] = result
    (out / "expected.json").write_text(json.dumps(expected))
    print(f"wrote {len(cases)} models and shap {shap.__version__} values to {out}")


if __name__ == "__main__":
    main(sys.argv[1])
