#!/usr/bin/env bash
# What the test suite needs beyond cargo: the ONNX Runtime library (pinned, sha256-checked, cached
# under ~/.cache/explaind) and Debian's libonnx-testdata (ONNX's backend test models, a corpus of
# real exporter output for the protobuf round-trip and gradient tests).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/fetch-onnxruntime.sh >/dev/null
if [ ! -d /usr/share/libonnx-testdata/data ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "test-setup: installing libonnx-testdata" >&2
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libonnx-testdata >/dev/null
  else
    echo "test-setup: install Debian's libonnx-testdata (apt-get install libonnx-testdata) for the corpus tests" >&2
    exit 1
  fi
fi
