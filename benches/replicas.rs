//! Shared jobs on PostgreSQL (Debian's server, a throwaway cluster as in the tests) with real
//! `explaind serve` processes:
//! - submission to start: 100 small jobs submitted one at a time to an idle replica; per job, the
//!   time from the 202 answer to its worker starting (`started` - `created`, both stamped by the
//!   replica's clock). Goal: p50 under 20 ms on loopback.
//! - scale-out: a batch of CPU-bound jobs (KernelSHAP on a slow tabular model) through one replica
//!   pinned to one core, then through two replicas each pinned to its own core. Goal: two finish
//!   at least 1.8x faster than one.
//!
//! Run with `cargo bench --bench replicas` (needs `make test`'s set-up: PostgreSQL, ONNX Runtime).

#[path = "../tests/it/common/mod.rs"]
mod testing;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

struct Replica {
    child: Child,
    base: String,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start(db: &str, models: &Path, data: &Path, core: usize) -> Replica {
    let port = free_port();
    let child = Command::new("taskset")
        .args(["-c", &core.to_string()])
        .arg(env!("CARGO_BIN_EXE_explaind"))
        .args(["serve", "--bind", &format!("127.0.0.1:{port}"), "--models"])
        .arg(models)
        .env("EXPLAIND_DATA_DIR", data.join(format!("replica-{port}")))
        .env("EXPLAIND_JOBS_DATABASE_URL", db)
        .env("EXPLAIND_WORKERS", "1")
        .env("EXPLAIND_INTRA_OP_THREADS", "1")
        .env("EXPLAIND_MAX_BATCH", "1")
        .env("EXPLAIND_MAX_JOBS", "1000")
        .env("EXPLAIND_MAX_JOBS_PER_CALLER", "1000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Replica {
        child,
        base: format!("http://127.0.0.1:{port}"),
    }
}

async fn ready(r: &Replica) {
    for _ in 0..600 {
        if let Ok(resp) = reqwest::get(format!("{}/readyz", r.base)).await {
            if resp.status() == reqwest::StatusCode::OK {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("replica not ready");
}

fn job(samples: usize) -> Value {
    json!({"model": "slow", "method": "kernel-shap", "features": [1, 2, 3, 4, 5, 6, 7, 8],
           "params": {"samples": samples}, "seed": 1})
}

async fn submit(http: &reqwest::Client, r: &Replica, body: &Value) -> String {
    let v: Value = http
        .post(format!("{}/v1/jobs", r.base))
        .json(body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["id"].as_str().unwrap_or_else(|| panic!("{v}")).to_string()
}

async fn finished(http: &reqwest::Client, r: &Replica, id: &str) -> Value {
    loop {
        let v: Value = http
            .get(format!("{}/v1/jobs/{id}", r.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if v["state"] != "queued" && v["state"] != "running" {
            assert_eq!(v["state"], "done", "{v}");
            return v;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn ms(rfc3339: &Value) -> f64 {
    let t = humantime::parse_rfc3339(rfc3339.as_str().unwrap()).unwrap();
    t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64() * 1e3
}

/// Runs `n` jobs through `replicas` (submitted round robin, all at once); the wall time.
async fn batch(http: &reqwest::Client, replicas: &[&Replica], n: usize, samples: usize) -> Duration {
    let started = Instant::now();
    let mut ids = Vec::new();
    for i in 0..n {
        let r = replicas[i % replicas.len()];
        ids.push((submit(http, r, &job(samples)).await, i % replicas.len()));
    }
    for (id, r) in &ids {
        finished(http, replicas[*r], id).await;
    }
    started.elapsed()
}

fn models(dir: &Path) -> PathBuf {
    let models = dir.join("models");
    let _ = std::fs::remove_dir_all(&models);
    // One 1024x1024x1024 product per row: about 20 ms on one core.
    testing::write_slow_tabular(&models, 1);
    models
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-replicas");
    let models = models(&dir);
    let pg = testing::postgres::Postgres::start();
    let db = pg.url();
    rt.block_on(async {
        let http = reqwest::Client::new();
        // Submission to start, on an idle replica.
        let a = start(&db, &models, &dir, 0);
        ready(&a).await;
        let mut waits = Vec::new();
        for _ in 0..100 {
            let id = submit(&http, &a, &job(2)).await;
            let v = finished(&http, &a, &id).await;
            waits.push(ms(&v["started"]) - ms(&v["created"]));
        }
        waits.sort_by(f64::total_cmp);
        println!(
            "submission to start over 100 jobs: p50 {:.1} ms, p90 {:.1} ms, max {:.1} ms (goal: p50 < 20 ms)",
            waits[50], waits[90], waits[99]
        );
        // Scale-out: one replica on one core, then two on two.
        let (n, samples) = (24, 40);
        let one = batch(&http, &[&a], n, samples).await;
        let b = start(&db, &models, &dir, 1);
        ready(&b).await;
        let two = batch(&http, &[&a, &b], n, samples).await;
        println!(
            "{n} KernelSHAP jobs ({samples} samples each): one replica {:.2} s, two replicas {:.2} s: {:.2}x (goal: >= 1.8x)",
            one.as_secs_f64(),
            two.as_secs_f64(),
            one.as_secs_f64() / two.as_secs_f64()
        );
    });
}
