//! Predict benchmark: the service's time per request next to the time of the same batch run raw
//! through ONNX Runtime, and throughput with concurrent clients. Prints ratios within one run, since
//! absolute times on a shared machine are noisy.
//!
//! Run with `cargo bench --bench predict` (or `make bench`).

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use base64::Engine;
use explaind::config::Config;
use explaind::runtime::{registry::load_model, sessions::create_session};
use ort::value::Tensor as OrtTensor;
use serde_json::json;

const ROUNDS: usize = 200;

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let env = explaind::runtime::library::init(None).expect("ONNX Runtime (run `make onnxruntime`)");
    let model = load_model(&root.join("models/fashion-cnn")).expect("fashion-cnn");
    let png = std::fs::read(root.join("tests/fixtures/fashion/test_00.png")).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(&png);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let config = Config {
        bind: "127.0.0.1:0".into(),
        models_dir: root.join("models"),
        workers: 1,
        queue_capacity: 64,
        ..Config::default()
    };
    let service = rt.block_on(explaind::Service::start(config)).expect("service");
    rt.block_on(service.state.executor.wait_ready(Duration::from_secs(30)));
    let endpoint = format!("http://{}/v1/models/fashion-cnn/predict", service.addr);
    let http = reqwest::Client::new();

    println!("predict benchmark: fashion-cnn (1x28x28), 1 worker, the default intra-op pool, median of {ROUNDS}");
    println!(
        "{:>6} {:>14} {:>16} {:>8}",
        "batch", "raw ORT (ms)", "service (ms)", "ratio"
    );
    for batch in [1usize, 8, 32] {
        // Raw: one session, a prepared tensor, nothing else.
        let mut session = create_session(env, &model).unwrap();
        let data = vec![0.1f32; batch * 28 * 28];
        let mut raw = Vec::new();
        for _ in 0..ROUNDS {
            let t = OrtTensor::from_array((vec![batch, 1, 28, 28], data.clone())).unwrap();
            let start = Instant::now();
            let out = session.run(ort::inputs!["input" => t]).unwrap();
            let _ = out["logits"].try_extract_tensor::<f32>().unwrap();
            raw.push(start.elapsed());
        }
        // Service: the same batch as one JSON request of PNGs (HTTP, base64, decode, preprocessing, JSON).
        let body = if batch == 1 {
            json!({"image": b64, "top_k": 1})
        } else {
            json!({"instances": vec![json!({"image": b64}); batch], "top_k": 1})
        };
        let mut served = Vec::new();
        rt.block_on(async {
            for _ in 0..ROUNDS {
                let start = Instant::now();
                let r = http.post(&endpoint).json(&body).send().await.unwrap();
                assert!(r.status().is_success());
                let _ = r.bytes().await.unwrap();
                served.push(start.elapsed());
            }
        });
        let (raw, served) = (common::median(raw), common::median(served));
        println!(
            "{batch:>6} {:>14.3} {:>16.3} {:>8.2}",
            raw.as_secs_f64() * 1e3,
            served.as_secs_f64() * 1e3,
            served.as_secs_f64() / raw.as_secs_f64()
        );
    }

    // Throughput: concurrent clients sending single raw-PNG requests for a fixed time.
    for clients in [1usize, 4, 16] {
        let done = rt.block_on(async {
            let stop = Instant::now() + Duration::from_secs(2);
            let mut tasks = Vec::new();
            for _ in 0..clients {
                let (http, endpoint, png) = (http.clone(), endpoint.clone(), png.clone());
                tasks.push(tokio::spawn(async move {
                    let mut n = 0usize;
                    while Instant::now() < stop {
                        let r = http
                            .post(&endpoint)
                            .header("content-type", "image/png")
                            .body(png.clone())
                            .send()
                            .await
                            .unwrap();
                        if r.status().is_success() {
                            n += 1;
                        }
                        let _ = r.bytes().await;
                    }
                    n
                }));
            }
            let mut total = 0;
            for t in tasks {
                total += t.await.unwrap();
            }
            total
        });
        println!(
            "throughput, {clients:>2} concurrent clients, raw PNG bodies: {:.0} predictions/s",
            done as f64 / 2.0
        );
    }
    rt.block_on(service.stop()).unwrap();
}
