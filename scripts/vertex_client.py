"""Google's own Vertex AI client against explaind's Vertex routes (tests/it/vertex.rs).

Usage: vertex_client.py BASE_URL < cases.json

Each case names an endpoint, a verb (predict, explain) and a request. The request is built with
`google-cloud-aiplatform`'s published types (`ExplainRequest` / `PredictRequest.from_json`, so a
field those types do not have fails here) and sent twice: by `PredictionServiceClient` over REST
with only its endpoint changed to BASE_URL (the client parses the answer into its types), and as
the same JSON by plain HTTP, whose answer is parsed with `from_json(..., ignore_unknown_fields=False)`
so that an unknown or mistyped field fails. Prints, per case, the answer as sent, or the error as
google-api-core reads it (code, status, reason, domain, metadata, message).
"""

import json
import sys
import urllib.error
import urllib.request

from google.api_core import exceptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import aiplatform_v1
from google.cloud.aiplatform_v1 import types

BASE = sys.argv[1].rstrip("/")
TYPES = {
    "predict": (types.PredictRequest, types.PredictResponse),
    "explain": (types.ExplainRequest, types.ExplainResponse),
}


def main():
    client = aiplatform_v1.PredictionServiceClient(
        transport="rest",
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": BASE},
    )
    out = {}
    for case in json.load(sys.stdin):
        out[case["name"]] = run(client, case)
    # The strict parse refuses what the types do not have: a good answer with one field more fails.
    good = next((v["answer"] for v in out.values() if "answer" in v and "explanations" in v["answer"]), None)
    if good is not None:
        extra = dict(good, notAVertexField=1)
        try:
            types.ExplainResponse.from_json(json.dumps(extra), ignore_unknown_fields=False)
            out["strictness"] = {"refused": False}
        except Exception as e:  # noqa: BLE001 - any parse error is the refusal
            out["strictness"] = {"refused": True, "error": type(e).__name__}
    json.dump(out, sys.stdout)


def run(client, case):
    request_type, response_type = TYPES[case["verb"]]
    endpoint = f"projects/p/locations/us-central1/endpoints/{case['endpoint']}"
    request = request_type.from_json(json.dumps(case["request"]), ignore_unknown_fields=False)
    body = request_type.to_json(request, always_print_fields_with_no_presence=False)
    request.endpoint = endpoint
    result = {}
    try:
        answer = getattr(client, case["verb"])(request=request)
        result["client"] = {"type": type(answer).__name__}
    except exceptions.GoogleAPICallError as e:
        result["client_error"] = {
            "code": int(e.code),
            "reason": e.reason,
            "domain": e.domain,
            "metadata": dict(e.metadata or {}),
            "message": e.message,
        }
    http = urllib.request.Request(
        f"{BASE}/v1/{endpoint}:{case['verb']}",
        data=body.encode(),
        headers={"content-type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(http) as r:
            text = r.read().decode()
        parsed = response_type.from_json(text, ignore_unknown_fields=False)
        result["answer"] = json.loads(text)
        result["parsed"] = json.loads(response_type.to_json(parsed))
    except urllib.error.HTTPError as e:
        result["status"] = e.code
        result["error"] = json.loads(e.read().decode())
    return result


if __name__ == "__main__":
    main()
