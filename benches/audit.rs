//! Audit log cost: the latency of a saliency request over HTTP with the audit log off, on with
//! SQLite's `normal` sync (the default), and on with `full` sync (an fsync per record), measured
//! interleaved in one run. Goal: audit on adds under 5%. Run with `cargo bench --bench audit`.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use explaind::config::{AuditMode, AuditSync, Config};

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("target").join("bench-audit");
    let _ = std::fs::remove_dir_all(&dir);
    common::copy_bundled(&root, &dir.join("models"), "fashion-cnn", &["model.onnx", "model.toml"]);
    common::write_resnet18(&dir.join("models"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let settings: [(&str, AuditMode, AuditSync); 3] = [
        ("off", AuditMode::Off, AuditSync::Normal),
        ("on, sync normal", AuditMode::All, AuditSync::Normal),
        ("on, sync full", AuditMode::All, AuditSync::Full),
    ];
    let services: Vec<explaind::Service> = settings
        .iter()
        .enumerate()
        .map(|(i, (_, mode, sync))| {
            let config = Config {
                bind: "127.0.0.1:0".into(),
                models_dir: dir.join("models"),
                data_dir: dir.join(format!("data-{i}")),
                workers: 1,
                audit: *mode,
                audit_sync: *sync,
                ..Config::default()
            };
            let s = rt.block_on(explaind::Service::start(config)).expect("service");
            rt.block_on(s.state.executor.wait_ready(Duration::from_secs(60)));
            s
        })
        .collect();
    let http = reqwest::Client::new();
    println!("audit benchmark: saliency over HTTP, 1 worker, requests interleaved across the three services");
    println!("{:<12} {:<18} {:>10} {:>12}", "model", "audit", "median ms", "vs off");
    for (model, side, rounds) in [("fashion-cnn", 28u32, 300usize), ("resnet-18", 224, 25)] {
        let body = serde_json::json!({"image": common::png(side)});
        let mut times = vec![Vec::new(); services.len()];
        for round in 0..rounds + 2 {
            for (i, s) in services.iter().enumerate() {
                let started = Instant::now();
                let r = rt
                    .block_on(
                        http.post(format!("http://{}/v1/models/{model}/explain/saliency", s.addr))
                            .json(&body)
                            .send(),
                    )
                    .unwrap();
                assert!(r.status().is_success());
                rt.block_on(r.bytes()).unwrap();
                if round >= 2 {
                    times[i].push(started.elapsed());
                }
            }
        }
        let medians: Vec<Duration> = times.into_iter().map(common::median).collect();
        for (i, (name, _, _)) in settings.iter().enumerate() {
            println!(
                "{model:<12} {name:<18} {:>10.3} {:>11.1}%",
                medians[i].as_secs_f64() * 1e3,
                (medians[i].as_secs_f64() / medians[0].as_secs_f64() - 1.0) * 100.0
            );
        }
    }
    for s in services {
        rt.block_on(s.stop()).unwrap();
    }
}
