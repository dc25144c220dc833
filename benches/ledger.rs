//! The audit ledger's own costs, optimised: sealing a record (XChaCha20-Poly1305 over its inputs and
//! maps, as `audit_encrypt` does) against writing its text in the clear, for a small and a large
//! record; and a signed checkpoint against the appends it covers (SQLite, in a scratch folder).
//! Goals: sealing and checkpoints each add under 5%. Run with `cargo bench --bench ledger`.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use explaind::audit::{AuditLog, Context, Evidence, Kind};
use explaind::config::{AuditMode, Config};
use serde_json::{json, Value};

/// A record body shaped like an explanation's: an input of `input` bytes, a map of `map` bytes.
fn record(input: usize, map: usize) -> Value {
    let b64 = |n: usize| {
        base64::engine::general_purpose::STANDARD.encode((0..n).map(|i| (i * 31 % 251) as u8).collect::<Vec<u8>>())
    };
    json!({"id": "r", "kind": "explanation", "model": "m", "method": "saliency",
           "inputs": [{"sha256": "00", "media_type": "image/png", "data": {"image_base64": b64(input)}}],
           "targets": [{"target": {"label": "a", "score": 0.9}, "summary": {"map": {"max": 1.0}},
                        "map": {"shape": [224, 224], "encoding": "f32le+deflate+base64", "data": b64(map)}}]})
}

fn main() {
    let key = explaind::audit::secret::Secret([7; 32]);
    println!("sealing a record against writing it in the clear (median of 200):");
    for (name, input, map) in [("28x28 saliency", 900, 2800), ("224x224 saliency", 110_000, 150_000)] {
        let body = record(input, map);
        let (mut clear, mut sealed) = (Vec::new(), Vec::new());
        for _ in 0..200 {
            let b = body.clone();
            let started = Instant::now();
            std::hint::black_box(serde_json::to_string(&b).unwrap());
            clear.push(started.elapsed());
            let mut b = body.clone();
            let started = Instant::now();
            explaind::audit::seal::seal(&mut b, "r", "k", &key).unwrap();
            std::hint::black_box(serde_json::to_string(&b).unwrap());
            sealed.push(started.elapsed());
        }
        let (c, s) = (common::median(clear), common::median(sealed));
        println!(
            "  {name:<18} clear {:>8.1} us  sealed {:>8.1} us  sealing adds {:>7.1} us",
            c.as_secs_f64() * 1e6,
            s.as_secs_f64() * 1e6,
            (s.as_secs_f64() - c.as_secs_f64()) * 1e6
        );
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target").join("bench-ledger");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("k"), hex::encode([9u8; 32])).unwrap();
        let config = Config {
            data_dir: dir.clone(),
            audit: AuditMode::All,
            audit_signing_key: Some(format!("file:{}", dir.join("k").display())),
            ..Config::default()
        };
        let log = Arc::new(AuditLog::open(&config).await.unwrap());
        let response = json!({"model": "m", "model_sha256": "00", "predictions": [{"label": "a", "score": 0.5}]});
        let mut appends = Vec::new();
        let mut checkpoints = Vec::new();
        for i in 0..2000 {
            let started = Instant::now();
            let evidence = Evidence::features(&[i as f32, 2.0], true);
            log.prediction(Kind::Prediction, &Context::default(), vec![evidence], &response)
                .await
                .unwrap();
            appends.push(started.elapsed());
            if i % 20 == 19 {
                let started = Instant::now();
                log.checkpoint().await.unwrap();
                checkpoints.push(started.elapsed());
            }
        }
        let (a, c): (Duration, Duration) = (common::median(appends), common::median(checkpoints));
        println!(
            "a checkpoint {:.1} us against an append {:.1} us: at the default 1000 records it adds {:.3}%, at 100 {:.2}%",
            c.as_secs_f64() * 1e6,
            a.as_secs_f64() * 1e6,
            c.as_secs_f64() / (1000.0 * a.as_secs_f64()) * 100.0,
            c.as_secs_f64() / (100.0 * a.as_secs_f64()) * 100.0
        );
        log.close().await;
    });
}
