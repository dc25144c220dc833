"""Drives explaind's KServe V1 and Open Inference Protocol endpoints with clients nobody here wrote:
Triton's `tritonclient.http` and the KServe SDK's REST client (`kserve.InferenceRESTClient`), and
prints what they parsed as JSON, for tests/it/protocols.rs to check against explaind's own answers.

Usage: protocol_clients.py SPEC.json  (SPEC: the server's address and the requests' tensors).

The KServe SDK is imported without its package `__init__`, which starts with its model server
(FastAPI, uvicorn, Kubernetes client, pandas<3, protobuf<7): only the REST client and the protocol
types load, from a `--no-deps` install (scripts/requirements-tests-nodeps.txt).
"""

import asyncio
import importlib.util
import json
import sys
import types

import numpy as np
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException


def kserve_client():
    spec = importlib.util.find_spec("kserve")
    package = types.ModuleType("kserve")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules["kserve"] = package
    from kserve.inference_client import InferenceRESTClient, RESTConfig
    from kserve.protocol.infer_type import InferInput, InferRequest

    return InferenceRESTClient, RESTConfig, InferInput, InferRequest


def with_triton(spec):
    client = triton.InferenceServerClient(url=spec["address"])
    out = {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "model_ready": client.is_model_ready("fashion-cnn"),
        "unknown_ready": client.is_model_ready("no-such-model"),
        "server": client.get_server_metadata(),
        "metadata": {m: client.get_model_metadata(m) for m in spec["models"]},
        "infer": {},
    }
    for case in spec["infer"]:
        x = np.array(case["data"], dtype=np.float32).reshape(case["shape"])
        for binary in (True, False):
            inp = triton.InferInput(case["input"], list(x.shape), "FP32")
            inp.set_data_from_numpy(x, binary_data=binary)
            outputs = [triton.InferRequestedOutput(n, binary_data=binary) for n in case["outputs"]]
            result = client.infer(case["model"], [inp], outputs=outputs)
            out["infer"][f'{case["model"]}/{"binary" if binary else "json"}'] = {
                n: {"shape": list(result.as_numpy(n).shape), "data": result.as_numpy(n).ravel().tolist()}
                for n in case["outputs"]
            }
        # No outputs named: every output, in binary (tritonclient asks `binary_data_output`).
        inp = triton.InferInput(case["input"], list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        result = client.infer(case["model"], [inp])
        out["infer"][f'{case["model"]}/all'] = sorted(o["name"] for o in result.get_response()["outputs"])
    e = spec["explain"]
    x = np.array(e["data"], dtype=np.float32).reshape(e["shape"])
    inp = triton.InferInput(e["input"], list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer(e["model"], [inp], parameters={"explain": e["explain"]})
    out["explain"] = {
        "attribution": result.as_numpy("attribution").ravel().tolist(),
        "shape": list(result.as_numpy("attribution").shape),
        "target": result.as_numpy("attribution_target").ravel().tolist(),
    }
    try:
        bad = triton.InferInput("nope", list(x.shape), "FP32")
        bad.set_data_from_numpy(x, binary_data=False)
        client.infer(e["model"], [bad])
        out["error"] = None
    except InferenceServerException as err:
        out["error"] = {"status": err.status(), "message": err.message()}
    return out


async def with_kserve(spec):
    InferenceRESTClient, RESTConfig, InferInput, InferRequest = kserve_client()
    base = f'http://{spec["address"]}'
    out = {}
    v1 = InferenceRESTClient(RESTConfig(protocol="v1"))
    for name, case in spec["v1"].items():
        body = {"instances": case["instances"]}
        out[f"v1/predict/{name}"] = await v1.infer(base, body, model_name=case["model"])
        out[f"v1/explain/{name}"] = await v1.explain(base, case["model"], body)
    try:
        await v1.infer(base, {"instances": [[1, 2]]}, model_name="breast-cancer")
        out["v1/error"] = None
    except Exception as err:  # httpx.HTTPStatusError, with the body's `error` in its message
        out["v1/error"] = {"status": err.response.status_code, "message": str(err)}
    await v1.close()
    v2 = InferenceRESTClient(RESTConfig(protocol="v2"))
    out["v2/live"] = await v2.is_server_live(base)
    out["v2/ready"] = await v2.is_server_ready(base)
    out["v2/model_ready"] = await v2.is_model_ready(base, "fashion-cnn")
    for case in spec["infer"]:
        x = np.array(case["data"], dtype=np.float32).reshape(case["shape"])
        for binary in (True, False):
            inp = InferInput(case["input"], list(x.shape), "FP32")
            inp.set_data_from_numpy(x, binary_data=binary)
            request = InferRequest(model_name=case["model"], infer_inputs=[inp])
            result = await v2.infer(base, request, model_name=case["model"])
            out[f'v2/infer/{case["model"]}/{"binary" if binary else "json"}'] = {
                o.name: {"shape": list(o.shape), "data": o.as_numpy().ravel().tolist()} for o in result.outputs
            }
    e = spec["explain"]
    x = np.array(e["data"], dtype=np.float32).reshape(e["shape"])
    inp = InferInput(e["input"], list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=False)
    request = InferRequest(model_name=e["model"], infer_inputs=[inp], parameters={"explain": json.dumps(e["explain"])})
    result = await v2.infer(base, request, model_name=e["model"])
    outputs = {o.name: o for o in result.outputs}
    out["v2/explain"] = {
        "attribution": outputs["attribution"].as_numpy().ravel().tolist(),
        "target": outputs["attribution_target"].as_numpy().ravel().tolist(),
    }
    await v2.close()
    return out


def main():
    spec = json.load(open(sys.argv[1]))
    answer = {"triton": with_triton(spec), "kserve": asyncio.run(with_kserve(spec))}
    json.dump(answer, sys.stdout)


if __name__ == "__main__":
    main()
