//! The deployment files validate against their own standards: every manifest under deploy/ against
//! the Kubernetes API schemas (kubernetes-validate, installed by scripts/test-setup.sh, strict:
//! unknown fields fail); every kustomization names files that exist; the service config the
//! ConfigMap carries against explaind's own Config; the autoscaler's metric is one the service
//! exports.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

fn validate(manifests: &[PathBuf]) -> (bool, String) {
    let tool = test_venv("kubernetes-validate");
    assert!(tool.exists(), "{} is missing: run `make test`", tool.display());
    let out = Command::new(tool)
        .args(["--strict", "-k", "1.34.0"])
        .args(manifests)
        .output()
        .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), report)
}

/// Every YAML file under deploy/, sorted; (kustomizations, manifests of Kubernetes' own kinds).
/// KServe's custom resources (deploy/kserve/) are checked against KServe's schema instead.
fn deploy_files() -> (Vec<PathBuf>, Vec<PathBuf>) {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "yaml") {
                out.push(p);
            }
        }
    }
    let mut all = Vec::new();
    walk(&root().join("deploy"), &mut all);
    all.retain(|p| !p.starts_with(root().join("deploy/kserve")));
    all.sort();
    all.into_iter()
        .partition(|p| p.file_name().is_some_and(|n| n == "kustomization.yaml"))
}

#[test]
fn the_kubernetes_manifests_validate_against_the_api_schemas() {
    let (_, manifests) = deploy_files();
    let (ok, report) = validate(&manifests);
    assert!(ok, "{report}");
    for resource in [
        "configmap/explaind-config",
        "deployment/explaind",
        "service/explaind",
        "poddisruptionbudget/explaind",
        "horizontalpodautoscaler/explaind",
        "statefulset/explaind-postgres",
        "service/explaind-postgres",
        "secret/explaind-db",
        "configmap/prometheus-adapter-explaind",
    ] {
        assert!(
            report.contains(&format!("passed for resource {resource}")),
            "{resource} not checked:\n{report}"
        );
    }
    // The check can fail: a misspelt field is caught.
    let broken = temp_dir("deploy").join("broken.yaml");
    let text = std::fs::read_to_string(root().join("deploy/base/deployment.yaml"))
        .unwrap()
        .replacen("replicas: 2", "replicaz: 2", 1);
    std::fs::write(&broken, text).unwrap();
    assert!(!validate(&[broken]).0, "a misspelt field passed");
}

#[test]
fn every_kustomization_names_files_and_bases_that_exist() {
    let (kustomizations, _) = deploy_files();
    assert_eq!(kustomizations.len(), 3, "{kustomizations:?}");
    for k in kustomizations {
        let text = std::fs::read_to_string(&k).unwrap();
        let resources: Vec<&str> = text
            .split("resources:\n")
            .nth(1)
            .unwrap()
            .lines()
            .map_while(|l| l.trim().strip_prefix("- "))
            .collect();
        assert!(!resources.is_empty(), "{}", k.display());
        for r in resources {
            let path = k.parent().unwrap().join(r);
            let exists = if r.ends_with(".yaml") {
                path.is_file()
            } else {
                path.join("kustomization.yaml").is_file()
            };
            assert!(exists, "{} names {r}, which is missing", k.display());
        }
    }
}

#[test]
fn the_configmap_holds_a_config_explaind_accepts() {
    let manifest = std::fs::read_to_string(root().join("deploy/base/configmap.yaml")).unwrap();
    // The block scalar under `explaind.toml: |`, indented four spaces.
    let block: String = manifest
        .split("explaind.toml: |\n")
        .nth(1)
        .unwrap()
        .lines()
        .take_while(|l| l.starts_with("    ") || l.is_empty())
        .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or(l)))
        .collect();
    assert!(block.contains("models_dir"), "{block}");
    let file = temp_dir("deploy-config").join("explaind.toml");
    std::fs::write(&file, &block).unwrap();
    let env = [(
        "EXPLAIND_AUDIT_DATABASE_URL".to_string(),
        "postgres://explaind:x@explaind-postgres:5432/explaind".to_string(),
    )];
    let config = explaind::config::Config::load(Some(&file), env)
        .unwrap_or_else(|e| panic!("the ConfigMap's explaind.toml is refused: {e}"));
    assert_eq!(config.models_dir, PathBuf::from("/srv/explaind/models"));
    assert!(
        config.shared_jobs_url().is_some(),
        "with the Secret's PostgreSQL URL, jobs are shared between replicas"
    );
}

#[test]
fn the_autoscaler_scales_on_metrics_the_service_exports() {
    let exported = explaind::telemetry::Metrics::default().render();
    let hpa = std::fs::read_to_string(root().join("deploy/base/hpa.yaml")).unwrap();
    let adapter = std::fs::read_to_string(root().join("deploy/monitoring/prometheus-adapter.yaml")).unwrap();
    for metric in ["explaind_async_jobs_waiting", "explaind_queue_depth"] {
        assert!(
            exported.contains(&format!("# TYPE {metric} gauge")),
            "{metric} not exported"
        );
        assert!(adapter.contains(metric), "the adapter lacks {metric}");
    }
    assert!(hpa.contains("name: explaind_async_jobs_waiting"));
}

/// Validates KServe manifests against the InferenceService CRD's schema (trimmed from KServe's own
/// CRD by scripts/kserve_crd_schema.py, strict: unknown fields fail); (ok, report).
fn validate_kserve(manifest: &Path) -> (bool, String) {
    const CHECK: &str = "import json, sys, yaml, jsonschema
schema = json.load(open(sys.argv[1]))
errors = [f'{list(e.absolute_path)}: {e.message}' for d in yaml.safe_load_all(open(sys.argv[2]))
          for e in jsonschema.Draft7Validator(schema).iter_errors(d)]
print('\\n'.join(errors) or 'valid')
sys.exit(1 if errors else 0)";
    let out = Command::new(test_venv("python"))
        .args(["-c", CHECK])
        .arg(root().join("tests/fixtures/kserve/inferenceservice-v1beta1.schema.json"))
        .arg(manifest)
        .output()
        .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), report)
}

#[test]
fn the_kserve_inference_service_validates_against_kserve_crd_schema() {
    let manifest = root().join("deploy/kserve/inferenceservice.yaml");
    let (ok, report) = validate_kserve(&manifest);
    assert!(ok, "{report}");
    let text = std::fs::read_to_string(&manifest).unwrap();
    // KServe routes to the container named kserve-container; its probes are the V2 health paths
    // explaind serves.
    assert!(text.contains("- name: kserve-container"));
    for path in ["/v2/health/ready", "/v2/health/live"] {
        assert!(text.contains(path), "{path}");
    }
    // The check can fail: a misspelt field, and a value of the wrong kind, are caught.
    for (from, to) in [
        ("minReplicas: 2", "minReplicaz: 2"),
        ("scaleMetric: cpu", "scaleMetric: gpu"),
    ] {
        let broken = temp_dir("deploy-kserve").join("broken.yaml");
        std::fs::write(&broken, text.replacen(from, to, 1)).unwrap();
        let (ok, report) = validate_kserve(&broken);
        assert!(!ok, "{to} passed: {report}");
    }
}
