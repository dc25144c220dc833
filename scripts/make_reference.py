#!/usr/bin/env python3
"""Writes a Fashion-MNIST reference set as explaind reads one: PNG images and a labels CSV.

Python's standard library only (PNG by zlib), so the tests can run it without a virtualenv.
Data: Debian's dataset-fashion-mnist (/usr/share/datasets/fashion-mnist).

  make_reference.py OUT --split train --start 0 --count 1000 [--flip 0.1 --seed 0]

writes OUT/images/<split>-<index>.png and OUT/labels.csv (id,label with label names); with
--flip, also OUT/labels-flipped.csv where that share of rows (chosen with the seed) has another
label, and OUT/flipped.txt listing their ids. The bundled models/fashion-cnn/reference was made
with `make_reference.py models/fashion-cnn/reference --split train --start 0 --count 1000`.
"""

import argparse
import gzip
import os
import random
import struct
import zlib

FASHION_DIR = "/usr/share/datasets/fashion-mnist"
LABELS = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def read_idx(name):
    with gzip.open(os.path.join(FASHION_DIR, name), "rb") as f:
        data = f.read()
    magic, count = struct.unpack(">II", data[:8])
    if magic == 2051:
        rows, cols = struct.unpack(">II", data[8:16])
        return [data[16 + i * rows * cols:16 + (i + 1) * rows * cols] for i in range(count)], (rows, cols)
    return list(data[8:8 + count]), None


def png_gray(pixels, width, height):
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + pixels[y * width:(y + 1) * width] for y in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--split", choices=["train", "t10k"], default="train")
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--flip", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    images, (rows, cols) = read_idx(f"{a.split}-images-idx3-ubyte.gz")
    labels, _ = read_idx(f"{a.split}-labels-idx1-ubyte.gz")
    os.makedirs(os.path.join(a.out, "images"), exist_ok=True)
    ids = []
    for i in range(a.start, a.start + a.count):
        name = f"{a.split}-{i:05d}.png"
        with open(os.path.join(a.out, "images", name), "wb") as f:
            f.write(png_gray(images[i], cols, rows))
        ids.append((name, labels[i]))
    with open(os.path.join(a.out, "labels.csv"), "w") as f:
        f.write("id,label\n")
        f.writelines(f"{name},{LABELS[y]}\n" for name, y in ids)
    if a.flip > 0:
        rng = random.Random(a.seed)
        flipped = set(rng.sample(range(len(ids)), int(round(a.flip * len(ids)))))
        with open(os.path.join(a.out, "labels-flipped.csv"), "w") as f, \
                open(os.path.join(a.out, "flipped.txt"), "w") as g:
            f.write("id,label\n")
            for k, (name, y) in enumerate(ids):
                if k in flipped:
                    y = (y + rng.randrange(1, len(LABELS))) % len(LABELS)
                    g.write(name + "\n")
                f.write(f"{name},{LABELS[y]}\n")


if __name__ == "__main__":
    main()
