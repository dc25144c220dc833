#!/usr/bin/env bash
# Fetches the ONNX Runtime shared library that explaind loads at run time, from the pinned PyPI
# wheel, checks the wheel's sha256, and unpacks the library under ~/.cache/explaind (outside the clone).
# Prints the library's path. Safe to run again: it does nothing when the library is already there.
set -euo pipefail

VERSION=1.31.1
WHEEL=onnxruntime-${VERSION}-cp311-cp311-manylinux_2_28_x86_64.whl
SHA256=5752bd508126ae7c49894d3b9d2e83f0c3d487319246d04c444b393308d7ad7f
CACHE=${EXPLAIND_CACHE_DIR:-$HOME/.cache/explaind}
DEST=$CACHE/onnxruntime-$VERSION

if [ "$(uname -m)" != "x86_64" ] || [ "$(uname -s)" != "Linux" ]; then
  echo "fetch-onnxruntime: this script fetches the Linux x86_64 build; on $(uname -s) $(uname -m), set ORT_DYLIB_PATH to an ONNX Runtime $VERSION library" >&2
  exit 1
fi

if [ -f "$DEST/libonnxruntime.so" ] && [ -f "$DEST/.complete" ]; then
  echo "$DEST/libonnxruntime.so"
  exit 0
fi

mkdir -p "$CACHE/downloads" "$DEST"
if [ ! -f "$CACHE/downloads/$WHEEL" ] || ! echo "$SHA256  $CACHE/downloads/$WHEEL" | sha256sum -c --status; then
  echo "fetch-onnxruntime: downloading $WHEEL from PyPI" >&2
  rm -f "$CACHE/downloads/$WHEEL"
  python3 -m pip download --quiet --no-deps --only-binary=:all: \
    --python-version 3.11 --implementation cp --platform manylinux_2_28_x86_64 \
    -d "$CACHE/downloads" "onnxruntime==$VERSION" >&2
fi
if ! echo "$SHA256  $CACHE/downloads/$WHEEL" | sha256sum -c --status; then
  echo "fetch-onnxruntime: $WHEEL does not have the pinned sha256 $SHA256; refusing it" >&2
  exit 1
fi

python3 - "$CACHE/downloads/$WHEEL" "$DEST" "$VERSION" <<'PY'
import os, sys, zipfile
wheel, dest, version = sys.argv[1:]
lib = f"libonnxruntime.so.{version}"
with zipfile.ZipFile(wheel) as z:
    with z.open(f"onnxruntime/capi/{lib}") as src, open(os.path.join(dest, lib), "wb") as out:
        out.write(src.read())
for alias in ("libonnxruntime.so", "libonnxruntime.so.1"):
    path = os.path.join(dest, alias)
    if os.path.lexists(path):
        os.remove(path)
    os.symlink(lib, path)
PY
touch "$DEST/.complete"
echo "$DEST/libonnxruntime.so"
