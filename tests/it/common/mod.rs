//! Shared test set-up: real services on loopback ports chosen by the OS, real models.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use explaind::config::{ApiKey, Config};
use explaind::onnx::builder::{Attr, GraphBuilder};
use explaind::Service;
use prost::Message;

pub mod gradcheck;
pub mod postgres;

/// A bundled model's graph (`models/<name>/model.onnx`).
pub fn bundled_model(name: &str) -> explaind::onnx::proto::ModelProto {
    let bytes = std::fs::read(root().join("models").join(name).join("model.onnx")).unwrap();
    explaind::onnx::proto::decode_model(&bytes).unwrap()
}

/// The held-out rows of the bundled breast-cancer models (tests/fixtures/breast_cancer_holdout.json).
/// The first held-out Fashion-MNIST test image (PNG bytes) of tests/fixtures/fashion.
pub fn fashion_png() -> Vec<u8> {
    let dir = root().join("tests/fixtures/fashion");
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    let first = files
        .iter()
        .find(|p| p.extension().is_some_and(|e| e == "png"))
        .unwrap();
    std::fs::read(first).unwrap()
}

pub fn breast_cancer_holdout() -> Vec<Vec<f32>> {
    let holdout: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root().join("tests/fixtures/breast_cancer_holdout.json")).unwrap())
            .unwrap();
    holdout["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            c["features"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect()
        })
        .collect()
}

/// Posts `body` to `path` once per case with the case's `params`, and checks each is refused 400
/// `invalid-request` with a detail that contains the case's text (the parameter it names).
pub async fn assert_params_refused(
    service: &Service,
    path: &str,
    body: &serde_json::Value,
    cases: &[(serde_json::Value, &str)],
) {
    for (params, says) in cases {
        let mut request = body.clone();
        request["params"] = params.clone();
        let p = problem(
            post_json(service, path, &request).await,
            reqwest::StatusCode::BAD_REQUEST,
            "invalid-request",
        )
        .await;
        assert!(p["detail"].as_str().unwrap().contains(says), "{params}: {p}");
    }
}

/// An explanation answer's attribution values (`attributions.values`), as f64.
pub fn attribution_values(answer: &serde_json::Value) -> Vec<f64> {
    answer["attributions"]["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// A served tabular model's feature names, as its report gives them.
pub async fn tabular_features(service: &Service, model: &str) -> Vec<String> {
    let report = ok_json(
        reqwest::get(url(service, &format!("/v1/models/{model}")))
            .await
            .unwrap(),
    )
    .await;
    report["tabular"]["features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap().to_string())
        .collect()
}

/// explaind's cache (`EXPLAIND_CACHE_DIR`, default `~/.cache/explaind`): downloads, ONNX Runtime,
/// the test virtualenv.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("EXPLAIND_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/explaind"))
}

/// A program of the test virtualenv (`python`, `schemathesis`, ...), as scripts/test-setup.sh
/// installs it.
pub fn test_venv(tool: &str) -> PathBuf {
    cache_dir().join("venv-tests/bin").join(tool)
}

/// Runs the Python `script` (`python -c`) of the test virtualenv with `args`, `stdin` written to
/// it as JSON; what it prints, read as JSON (the reference answers of Python libraries).
pub fn python_json<T: serde::de::DeserializeOwned>(
    script: &str,
    args: &[&std::ffi::OsStr],
    stdin: &impl serde::Serialize,
) -> T {
    use std::io::Write;
    let mut child = std::process::Command::new(test_venv("python"))
        .args(["-c", script])
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&serde_json::to_vec(stdin).unwrap())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Runs scripts/`script` (rollout_reference.py, chefer_reference.py) on `spec`, written to a
/// file, with the test virtualenv's Python; its `patches`.
pub fn attention_reference(script: &str, spec: &serde_json::Value) -> Vec<f64> {
    let file = temp_dir("attention-spec").join("spec.json");
    std::fs::write(&file, spec.to_string()).unwrap();
    let out = std::process::Command::new(test_venv("python"))
        .arg(root().join("scripts").join(script))
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    serde_json::from_value(answer["patches"].clone()).unwrap()
}

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A config for tests: loopback on an ephemeral port, the bundled models, small limits.
pub fn test_config(models_dir: &Path) -> Config {
    Config {
        bind: "127.0.0.1:0".into(),
        models_dir: models_dir.to_path_buf(),
        workers: 2,
        queue_capacity: 8,
        data_dir: temp_dir("data"),
        ..Config::default()
    }
}

/// Starts a service on the bundled example models.
pub async fn start_bundled() -> Service {
    start(test_config(&root().join("models"))).await
}

/// Starts a service with `config`, with a clear message when ONNX Runtime is missing.
pub async fn start(config: Config) -> Service {
    match Service::start(config).await {
        Ok(s) => {
            assert!(
                s.state.executor.wait_ready(std::time::Duration::from_secs(60)).await,
                "workers not ready"
            );
            s
        }
        Err(e) => panic!("service failed to start: {e:#}\n(run `make test`, which fetches ONNX Runtime first)"),
    }
}

/// The error that stops `config`'s start (a start that succeeds fails the test).
pub async fn start_error(config: Config) -> String {
    Service::start(config)
        .await
        .err()
        .expect("the service started")
        .to_string()
}

/// Two API keys: `frontend` (bearer `key-one`) may predict and explain, `auditor` (bearer
/// `key-two`) may also read the audit log.
pub fn frontend_and_auditor_keys() -> Vec<ApiKey> {
    use explaind::config::Scope;
    let key = |name: &str, secret: &str, scopes: Vec<Scope>| ApiKey {
        name: name.into(),
        sha256: explaind::http::auth::hash_key(secret),
        scopes,
    };
    vec![
        key("frontend", "key-one", vec![Scope::Predict]),
        key("auditor", "key-two", vec![Scope::Predict, Scope::Audit]),
    ]
}

/// Base URL of a service.
pub fn url(service: &Service, path: &str) -> String {
    format!("http://{}{}", service.addr, path)
}

/// A fresh temporary directory under target/ (kept out of /tmp so a failing run can be inspected).
pub fn temp_dir(name: &str) -> PathBuf {
    // Tests of one binary run in parallel in one process: every call gets its own folder.
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = root()
        .join("target")
        .join("test-tmp")
        .join(format!("{name}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Copies the bundled model `name` into `models_dir`: its files, and its reference set's folder as
/// a link (the manifest names it relatively).
pub fn copy_bundled(name: &str, models_dir: &Path) {
    let (from, to) = (root().join("models").join(name), models_dir.join(name));
    std::fs::create_dir_all(&to).unwrap();
    for f in ["model.onnx", "model.toml", "background.csv", "tokenizer.json"] {
        if from.join(f).exists() {
            std::fs::copy(from.join(f), to.join(f)).unwrap();
        }
    }
    if from.join("reference").is_dir() {
        std::os::unix::fs::symlink(from.join("reference"), to.join("reference")).unwrap();
    }
}

/// Writes a model folder (`model.onnx` + `model.toml`) under `models_dir`.
pub fn write_model(models_dir: &Path, name: &str, model: &explaind::onnx::proto::ModelProto, manifest: &str) {
    let dir = models_dir.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("model.onnx"), model.encode_to_vec()).unwrap();
    std::fs::write(dir.join("model.toml"), manifest).unwrap();
}

/// y = x W + b over 4 features, 2 outputs, and its weights W (row-major 4 x 2): every gradient
/// method, and Shapley values, have a closed form.
pub fn linear_model() -> (explaind::onnx::proto::ModelProto, Vec<f32>) {
    let mut g = GraphBuilder::new("linear", 17);
    let x = g.input("input", &[-1, 4]);
    let w = vec![0.5, -1.0, 2.0, 0.0, -0.25, 1.0, 1.5, 3.0];
    let wn = g.constant("w", &[4, 2], &w);
    let b = g.constant("b", &[2], &[0.3, -0.2]);
    let mm = g.node("MatMul", &[&x, &wn], vec![]);
    g.node("Add", &[&mm, &b], vec![]);
    g.rename_last_output("logits");
    g.output("logits", &[-1, 2]);
    (g.build(), w)
}

/// A deliberately slow tabular-regression model: 8 features in, one value out, with `layers`
/// 1024x1024x1024 matrix products in between that depend on the input (so nothing constant-folds).
pub fn slow_model(layers: usize) -> explaind::onnx::proto::ModelProto {
    let mut g = GraphBuilder::new("slow", 17);
    let x = g.input("input", &[1, 8]);
    let tile = g.constant_i64("tile", &[2], &[1024, 128]);
    let wide = g.node("Tile", &[&x, &tile], vec![]); // [1024, 1024]
    let w: Vec<f32> = (0..1024 * 1024).map(|i| ((i % 7) as f32 - 3.0) * 1e-3).collect();
    let w = g.constant("w", &[1024, 1024], &w);
    let mut h = wide;
    for _ in 0..layers {
        let m = g.node("MatMul", &[&h, &w], vec![]);
        h = g.node("Tanh", &[&m], vec![]);
    }
    g.node(
        "ReduceMean",
        &[&h],
        vec![("axes", Attr::Ints(vec![0, 1])), ("keepdims", Attr::Int(1))],
    );
    g.rename_last_output("value");
    g.output("value", &[1, 1]);
    g.build()
}

/// Writes `slow` (a [`slow_model`] of `layers` layers) into `models_dir` as a tabular regression
/// over eight features with one all-zero background row: what the job tests run KernelSHAP on.
pub fn write_slow_tabular(models_dir: &Path, layers: usize) {
    let manifest = "task = \"tabular-regression\"\n[tabular]\nfeatures = [\"f0\", \"f1\", \"f2\", \"f3\", \"f4\", \"f5\", \"f6\", \"f7\"]\nbackground = \"background.csv\"\n";
    write_model(models_dir, "slow", &slow_model(layers), manifest);
    std::fs::write(
        models_dir.join("slow/background.csv"),
        "f0,f1,f2,f3,f4,f5,f6,f7\n0,0,0,0,0,0,0,0\n",
    )
    .unwrap();
}

/// Manifest for [`slow_model`].
pub const SLOW_MANIFEST: &str = "task = \"tabular-regression\"\n";

/// A small deterministic random number generator (SplitMix64), so failures can be replayed by seed.
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32)
    }

    /// `n` uniform values in [lo, hi).
    pub fn vec(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform(lo, hi)).collect()
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f32 {
        let u1 = self.uniform(1e-7, 1.0);
        let u2 = self.uniform(0.0, 1.0);
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
    }

    /// `n` values spaced at least `gap` apart in [-1, 1), shuffled: no ties, no values near 0 or each other.
    pub fn separated(&mut self, n: usize, gap: f32) -> Vec<f32> {
        let mut v: Vec<f32> = (0..n).map(|i| (i as f32 - n as f32 / 2.0 + 0.5) * gap).collect();
        for i in (1..n).rev() {
            let j = (self.next_u64() % (i as u64 + 1)) as usize;
            v.swap(i, j);
        }
        v
    }
}

/// POSTs `body` as JSON to `path` on `service`.
pub async fn post_json(service: &Service, path: &str, body: &serde_json::Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(url(service, path))
        .json(body)
        .send()
        .await
        .unwrap()
}

/// The JSON of a 200 answer; any other status fails the test, showing the body.
pub async fn ok_json(resp: reqwest::Response) -> serde_json::Value {
    let status = resp.status();
    let v: serde_json::Value = resp.json().await.unwrap_or(serde_json::Value::Null);
    assert_eq!(status, reqwest::StatusCode::OK, "{v}");
    v
}

/// GETs `path` on `service` and returns the JSON of its 200 answer (see `ok_json`).
pub async fn get_json(service: &Service, path: &str) -> serde_json::Value {
    ok_json(reqwest::get(url(service, path)).await.unwrap()).await
}

/// Polls the job at `path` (`/v1/jobs/{id}`, as `Location` names it) until it is done and
/// returns its view; a job that fails, is cancelled or is not done `within` fails the test.
pub async fn job_done(service: &Service, path: &str, within: std::time::Duration) -> serde_json::Value {
    let deadline = std::time::Instant::now() + within;
    loop {
        let v = get_json(service, path).await;
        if v["state"] == "done" {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline && matches!(v["state"].as_str(), Some("queued" | "running")),
            "{v}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// The reason a model's report (`GET /v1/models/{name}`) gives for not offering `method`.
pub fn unavailable_reason(report: &serde_json::Value, method: &str) -> String {
    let listed = report["unavailable"]
        .as_array()
        .and_then(|u| u.iter().find(|u| u["name"] == method))
        .unwrap_or_else(|| panic!("{method} not in unavailable: {report}"));
    listed["reason"].as_str().unwrap().to_string()
}

/// Checks an RFC 9457 problem response (status, content type, `type`, fields) and returns its body.
pub async fn problem(resp: reqwest::Response, status: reqwest::StatusCode, slug: &str) -> serde_json::Value {
    let got = resp.status();
    let content_type = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap_or("").to_string());
    let body: serde_json::Value = resp.json().await.unwrap_or(serde_json::Value::Null);
    let text = body.to_string();
    assert_eq!(got, status, "expected {slug}, got {}", &text[..text.len().min(400)]);
    assert_eq!(content_type.as_deref(), Some("application/problem+json"));
    assert_eq!(body["type"], format!("/problems/{slug}"), "{body}");
    assert_eq!(body["status"], status.as_u16());
    assert!(body["title"].is_string() && body["detail"].is_string(), "{body}");
    assert_discloses_nothing(&text);
    body
}

/// Fails when an answer shows something of the server's insides: a path on this machine (the
/// checkout, the temporary folders that hold data and models in tests, the cache), an operating
/// system error text, or a panic or source location. Every refusal the suite checks passes here.
pub fn assert_discloses_nothing(answer: &str) {
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let mut forbidden = vec![
        root().display().to_string(),
        std::env::temp_dir().display().to_string() + "/",
        cache_dir().display().to_string(),
        home + "/",
    ];
    forbidden.extend(["os error", "panicked", ".rs:", "RUST_BACKTRACE"].map(String::from));
    for f in forbidden {
        assert!(!answer.contains(&f), "the answer shows `{f}`: {answer}");
    }
}

/// The vocabulary of the test text models: BERT's special tokens first, then words and pieces.
pub const TEXT_VOCAB: &[&str] = &[
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    "the",
    "a",
    "movie",
    "film",
    "was",
    "is",
    "and",
    "but",
    "not",
    "plot",
    "acting",
    "story",
    "good",
    "great",
    "excellent",
    "bad",
    "awful",
    "terrible",
    "un",
    "##believ",
    "##able",
    "very",
    "it",
    "this",
    "of",
    "!",
    ".",
    ",",
    "##s",
    "ending",
    "music",
    "caf",
    "##é",
];

/// Ids of [`TEXT_VOCAB`]'s positive and negative words.
pub fn text_keywords() -> (Vec<usize>, Vec<usize>) {
    let id = |w: &str| TEXT_VOCAB.iter().position(|v| *v == w).unwrap();
    (
        ["good", "great", "excellent"].map(id).to_vec(),
        ["bad", "awful", "terrible"].map(id).to_vec(),
    )
}

/// Writes the test text models under `models_dir`, each with a WordPiece tokenizer over
/// [`TEXT_VOCAB`]: `keywords` (the zoo's keyword classifier: its answer is known) and
/// `text-transformer` (the zoo's two-layer BERT-style classifier, seeded weights).
pub fn write_text_models(models_dir: &Path) {
    use explaind::onnx::zoo;
    let tokenizer = serde_json::to_vec_pretty(&zoo::wordpiece_tokenizer(TEXT_VOCAB)).unwrap();
    let (positive, negative) = text_keywords();
    let vocab = TEXT_VOCAB.len();
    write_model(
        models_dir,
        "keywords",
        &zoo::keyword_classifier(vocab, 4, &positive, &negative),
        "task = \"text-classification\"\nscores = \"logits\"\nlabels = [\"negative\", \"positive\"]\n[text]\ntokenizer = \"tokenizer.json\"\nmax_length = 32\n",
    );
    write_model(
        models_dir,
        "text-transformer",
        &zoo::text_transformer(vocab as i64, 32, (16, 2, 2), 3),
        "task = \"text-classification\"\nlabels = [\"negative\", \"neutral\", \"positive\"]\n[text]\ntokenizer = \"tokenizer.json\"\nmax_length = 32\n",
    );
    for name in ["keywords", "text-transformer"] {
        std::fs::write(models_dir.join(name).join("tokenizer.json"), &tokenizer).unwrap();
    }
}

/// Runs `command` off the async threads and returns what it printed; a failure fails the test
/// with `what`, the output and the error output.
pub async fn run_ok(mut command: std::process::Command, what: String) -> String {
    let out = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what}:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}
