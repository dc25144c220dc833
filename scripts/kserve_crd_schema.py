"""Trims KServe's InferenceService CRD to the schema tests/it/deploy.rs checks deploy/kserve/ against.

Usage: kserve_crd_schema.py CRD.yaml COMMIT > tests/fixtures/kserve/inferenceservice-v1beta1.schema.json

CRD.yaml is kserve/kserve's config/crd/full/serving.kserve.io_inferenceservices.yaml (2 MB, every
predictor framework and the whole pod spec, twice over for the explainer and transformer); kept
here: the v1beta1 openAPIV3Schema with `spec.predictor` only, its fields that a custom predictor
uses (the container list whole, the volume kinds explaind's manifests use), each as KServe writes
it. Objects get `additionalProperties: false`, as the API server's strict field validation
(`kubectl apply --validate=strict`) refuses unknown fields, so a misspelt field fails here too.
"""

import json
import sys

import yaml

PREDICTOR = [
    "containers", "volumes", "minReplicas", "maxReplicas", "scaleMetric", "scaleMetricType",
    "scaleTarget", "timeout", "containerConcurrency", "terminationGracePeriodSeconds",
    "serviceAccountName", "nodeSelector", "tolerations", "affinity", "securityContext",
    "imagePullSecrets", "annotations", "labels",
]
VOLUMES = ["name", "configMap", "emptyDir", "secret", "persistentVolumeClaim"]


def strict(schema):
    if isinstance(schema, dict):
        if "properties" in schema and "additionalProperties" not in schema \
                and not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema["additionalProperties"] = False
        for value in schema.values():
            strict(value)
    elif isinstance(schema, list):
        for value in schema:
            strict(value)
    return schema


def main():
    crd = yaml.safe_load(open(sys.argv[1]))
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1beta1")
    root = version["schema"]["openAPIV3Schema"]
    spec = root["properties"]["spec"]
    predictor = spec["properties"]["predictor"]
    predictor["properties"] = {k: v for k, v in predictor["properties"].items() if k in PREDICTOR}
    volume = predictor["properties"]["volumes"]["items"]
    volume["properties"] = {k: v for k, v in volume["properties"].items() if k in VOLUMES}
    spec["properties"] = {"predictor": predictor}
    spec["required"] = ["predictor"]
    root["properties"] = {k: root["properties"][k] for k in ("apiVersion", "kind", "metadata", "spec")}
    root["properties"]["apiVersion"] = {"enum": ["serving.kserve.io/v1beta1"]}
    root["properties"]["kind"] = {"enum": ["InferenceService"]}
    root["required"] = ["apiVersion", "kind", "metadata", "spec"]
    root["$comment"] = (
        "Trimmed by scripts/kserve_crd_schema.py from kserve/kserve@" + sys.argv[2]
        + " config/crd/full/serving.kserve.io_inferenceservices.yaml (v1beta1), Apache-2.0"
    )
    json.dump(strict(root), sys.stdout, indent=1, sort_keys=True)
    print()


if __name__ == "__main__":
    main()
