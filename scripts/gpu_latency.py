#!/usr/bin/env python3
"""Latency of explaind on a GPU (issue 21, item 6): ResNet-50 exported by PyTorch, served by an explaind
binary with `execution_provider = "cuda"` (and on the CPU for comparison), timed over loopback HTTP.

Needs: torch and torchvision (only to export the model; random weights, seed 0: latency does not
depend on the weights), an explaind binary, and an ONNX Runtime library whose folder holds the CUDA
provider (`libonnxruntime_providers_cuda.so`, from the `onnxruntime-gpu` wheel of the same version)
with its CUDA libraries on LD_LIBRARY_PATH. Prints one markdown table per run: client-side median
and best of each request after warm-up (the first CUDA runs choose cuDNN's algorithms), and the
medians of the server's own `Server-Timing` (request total, on the worker, inside ONNX Runtime).
Each `--run` is a provider with optional settings: `cuda`, `cuda+EXPLAIND_MAX_PASS_BYTES=4294967296`.

  python3 scripts/gpu_latency.py --explaind target/release/explaind \
      --onnxruntime ~/ort-gpu/libonnxruntime.so --work /tmp/gpu-latency
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request

MODEL = "resnet-50"
MANIFEST = """task = "image-classification"
description = "torchvision ResNet-50 (random weights, seed 0) exported by torch.onnx at opset 17, for timing."
output = "logits"
scores = "logits"

[image]
layout = "NCHW"
color = "rgb"
resize = "bilinear"
fit = "center-crop"
scale = 0.00392156862745098
mean = [0.485, 0.456, 0.406]
std = [0.229, 0.224, 0.225]
"""

# (method, query, warm-up requests, timed requests)
REQUESTS = [
    ("predict", "", 3, 20),
    ("saliency", "", 3, 20),
    ("grad-cam", "", 3, 20),
    ("integrated-gradients", "", 2, 5),
    ("lime", "", 1, 3),
]


def export_model(folder):
    path = os.path.join(folder, "model.onnx")
    if os.path.exists(path):
        return  # a model placed there already (with its own model.toml) is timed as it is
    import torch
    import torchvision

    os.makedirs(folder, exist_ok=True)
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).eval()
    torch.onnx.export(
        model,
        torch.randn(1, 3, 224, 224),
        path,
        opset_version=17,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        dynamo=False,
    )
    with open(os.path.join(folder, "model.toml"), "w") as f:
        f.write(MANIFEST)


def photo_png():
    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, "..", "tests", "fixtures", "photos", "chelsea.png"), "rb") as f:
        return f.read()


def post(url, body):
    """Client-side milliseconds, and the Server-Timing durations by name."""
    req = urllib.request.Request(url, data=body, headers={"content-type": "image/png"}, method="POST")
    start = time.perf_counter()
    with urllib.request.urlopen(req, timeout=600) as resp:
        resp.read()
        timing = resp.headers.get("server-timing", "")
    elapsed = (time.perf_counter() - start) * 1000.0
    server = {}
    for metric in filter(None, (m.strip() for m in timing.split(","))):
        name, *params = metric.split(";")
        for p in params:
            if p.startswith("dur="):
                server[name] = float(p[4:])
    return elapsed, server


def wait_ready(base, proc, log_path, deadline_s=600):
    end = time.time() + deadline_s
    while time.time() < end:
        if proc.poll() is not None:
            sys.exit(f"explaind exited ({proc.returncode}):\n" + open(log_path).read()[-4000:])
        try:
            with urllib.request.urlopen(base + "/readyz", timeout=5) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    sys.exit("explaind did not become ready:\n" + open(log_path).read()[-4000:])


def run(args, spec, port, image):
    provider, *settings = spec.split("+")
    base = f"http://127.0.0.1:{port}"
    log_path = os.path.join(args.work, f"explaind-{port}.log")
    env = dict(os.environ, ORT_DYLIB_PATH=args.onnxruntime, EXPLAIND_EXECUTION_PROVIDER=provider,
               EXPLAIND_DATA_DIR=os.path.join(args.work, f"data-{port}"))
    for pair in args.env + settings:
        key, _, value = pair.partition("=")
        env[key] = value
    started = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen([args.explaind, "serve", "--models", os.path.join(args.work, "models"),
                                 "--bind", f"127.0.0.1:{port}"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_ready(base, proc, log_path)
        ready_s = time.perf_counter() - started
        fallback = "no CUDA provider" in open(log_path).read()
        print(f"\n### {spec}: ready in {ready_s:.1f} s{' (FELL BACK TO CPU)' if fallback else ''}")
        print("| request | median | best | server total | on the worker | in ONNX Runtime | runs |")
        print("|---|---|---|---|---|---|---|")
        for method, query, warm, timed in REQUESTS:
            path = "/predict" if method == "predict" else f"/explain/{method}"
            url = f"{base}/v1/models/{MODEL}{path}{query}"
            for _ in range(warm):
                post(url, image)
            results = [post(url, image) for _ in range(timed)]
            times = [t for t, _ in results]

            def server(name):
                values = [s[name] for _, s in results if name in s]
                return f"{statistics.median(values):.1f} ms" if values else "-"

            print(f"| {method} | {statistics.median(times):.1f} ms | {min(times):.1f} ms | {server('total')} | "
                  f"{server('worker')} | {server('model')} | {timed} |", flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        if args.show_log:
            print(open(log_path).read()[-3000:])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--explaind", required=True)
    parser.add_argument("--onnxruntime", required=True, help="libonnxruntime.so beside its CUDA provider")
    parser.add_argument("--work", required=True, help="folder for the model, logs and data")
    parser.add_argument("--run", action="append", help="provider[+KEY=VALUE...]; default: cuda, then cpu")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE passed to explaind")
    parser.add_argument("--show-log", action="store_true")
    parser.add_argument("--export-only", action="store_true", help="write the model folder and stop")
    args = parser.parse_args()
    export_model(os.path.join(args.work, "models", MODEL))
    if args.export_only:
        return
    image = photo_png()
    for i, spec in enumerate(args.run or ["cuda", "cpu"]):
        run(args, spec, 18400 + i, image)


if __name__ == "__main__":
    main()
