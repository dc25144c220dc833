//! The committed OpenAPI document is a contract: it validates against the OpenAPI 3.1 schema
//! (openapi-spec-validator), and schemathesis (both installed by scripts/test-setup.sh) generates
//! requests from it for every route against a real server with small bounds, and fails on any 5xx,
//! undocumented status, wrong content type, or response that violates the schema.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;

fn schemathesis() -> PathBuf {
    test_venv("schemathesis")
}

#[test]
fn the_document_is_valid_openapi_3_1() {
    let python = test_venv("python");
    assert!(python.exists(), "{} is missing: run `make test`", python.display());
    let out = Command::new(python)
        .args([
            "-c",
            "import sys\n\
             from openapi_spec_validator import validate\n\
             from openapi_spec_validator.readers import read_from_filename\n\
             spec, _ = read_from_filename(sys.argv[1])\n\
             validate(spec)\n\
             print(spec['openapi'])",
        ])
        .arg(root().join("openapi/openapi.json"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openapi/openapi.json does not validate:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("3.1"),
        "an OpenAPI 3.1 document"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_keeps_its_openapi_contract() {
    let tool = schemathesis();
    assert!(
        tool.exists(),
        "{} is missing: run `make test` (scripts/test-setup.sh installs it)",
        tool.display()
    );
    let mut config = test_config(&root().join("models"));
    config.max_samples = 64;
    config.max_batch = 8;
    config.max_body_bytes = 256 * 1024;
    config.max_image_pixels = 512 * 512;
    let s = start(config).await;
    let base = format!("http://{}", s.addr);
    let spec = root().join("openapi/openapi.json");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(tool)
            .args([
                "run",
                spec.to_str().unwrap(),
                "--url",
                &base,
                "--max-examples",
                "25",
                "--seed",
                "1",
                "--checks",
            ])
            .arg("not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance")
            .env("NO_COLOR", "1")
            // Bodies for the JSON Lines upload (tests/fixtures/schemathesis_hooks.py).
            .env("PYTHONPATH", root().join("tests/fixtures"))
            .env("SCHEMATHESIS_HOOKS", "schemathesis_hooks")
            .current_dir(std::env::temp_dir())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    s.stop().await.unwrap();
}

/// A client that openapi-python-client generates from the committed document (in a scratch
/// folder, at test time) runs the README's tour against a real server and reads every answer
/// with its generated models (tests/fixtures/generated_client_tour.py).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_python_client_runs_the_readme_tour() {
    let generator = test_venv("openapi-python-client");
    assert!(
        generator.exists(),
        "{} is missing: run `make test` (scripts/test-setup.sh installs it)",
        generator.display()
    );
    let dir = temp_dir("generated-client");
    let out = Command::new(generator)
        .args(["generate", "--meta", "none", "--path"])
        .arg(root().join("openapi/openapi.json"))
        .arg("--output-path")
        .arg(dir.join("explaind_client"))
        .output()
        .unwrap();
    assert!(
        dir.join("explaind_client/client.py").exists(),
        "openapi-python-client generated no client:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let s = start_bundled().await;
    let base = format!("http://{}", s.addr);
    let out = tokio::task::spawn_blocking(move || {
        Command::new(test_venv("python"))
            .arg(root().join("tests/fixtures/generated_client_tour.py"))
            .arg(root().join("README.md"))
            .arg(&base)
            .arg(root())
            .env("PYTHONPATH", &dir)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the generated client failed on the tour:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("answers read with the generated client"), "{stdout}");
    s.stop().await.unwrap();
}
