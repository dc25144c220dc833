//! The deployment files validate against their own standards: deploy/explaind.yaml against the
//! Kubernetes API schemas (kubernetes-validate, installed by scripts/test-setup.sh, strict: unknown
//! fields fail), and the service config its ConfigMap carries against explaind's own Config.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;

fn kubernetes_validate() -> PathBuf {
    let cache = std::env::var_os("EXPLAIND_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/explaind"));
    cache.join("venv-tests/bin/kubernetes-validate")
}

fn validate(manifest: &std::path::Path) -> std::process::Output {
    let tool = kubernetes_validate();
    assert!(tool.exists(), "{} is missing: run `make test`", tool.display());
    Command::new(tool)
        .args(["--strict", "-k", "1.34.0"])
        .arg(manifest)
        .output()
        .unwrap()
}

#[test]
fn the_kubernetes_manifests_validate_against_the_api_schemas() {
    let manifest = root().join("deploy/explaind.yaml");
    let out = validate(&manifest);
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "deploy/explaind.yaml:\n{report}");
    for resource in ["configmap/explaind-config", "deployment/explaind", "service/explaind"] {
        assert!(
            report.contains(&format!("passed for resource {resource}")),
            "{resource} not checked:\n{report}"
        );
    }
    // The check can fail: a misspelt field is caught.
    let broken = temp_dir("deploy").join("broken.yaml");
    let text = std::fs::read_to_string(&manifest)
        .unwrap()
        .replacen("replicas: 2", "replicaz: 2", 1);
    std::fs::write(&broken, text).unwrap();
    assert!(!validate(&broken).status.success(), "a misspelt field passed");
}

#[test]
fn the_configmap_holds_a_config_explaind_accepts() {
    let manifest = std::fs::read_to_string(root().join("deploy/explaind.yaml")).unwrap();
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
    let config = explaind::config::Config::load(Some(&file), Vec::<(String, String)>::new())
        .unwrap_or_else(|e| panic!("the ConfigMap's explaind.toml is refused: {e}"));
    assert_eq!(config.models_dir, PathBuf::from("/srv/explaind/models"));
}
