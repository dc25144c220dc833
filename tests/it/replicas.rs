//! Many replicas, one service: real `explaind serve` processes sharing one real PostgreSQL (from
//! Debian's packages, started by tests/it/common/postgres.rs) for their asynchronous jobs and their
//! audit log. A job submitted to one is read, streamed and cancelled through another; a replica
//! killed mid-job leaves its lease to expire and another finishes the job once; 200 jobs over two
//! replicas, one of them killed and restarted midway, each end exactly once; the job limits hold
//! exactly under concurrent submission to one replica and to two.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::postgres::Postgres;
use common::{temp_dir, write_slow_tabular};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::Row;

/// A models folder with the slow model of `layers` layers (its sha256 differs with the count).
fn models_with(layers: usize) -> PathBuf {
    let dir = temp_dir("replicas-models");
    write_slow_tabular(&dir, layers);
    dir
}

fn models() -> PathBuf {
    models_with(2)
}

/// One `explaind serve` process.
struct Replica {
    child: Child,
    base: String,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn keys() -> String {
    let key = |name: &str, scopes: &str| {
        format!(
            "{{name = \"{name}\", sha256 = \"{}\", scopes = [{scopes}]}}",
            explaind::http::auth::hash_key(name)
        )
    };
    format!(
        "[{}, {}, {}]",
        key("alpha", "\"predict\""),
        key("beta", "\"predict\""),
        key("auditor", "\"predict\", \"audit\", \"admin\"")
    )
}

impl Replica {
    fn start(db: &str, models: &Path, name: &str) -> Self {
        Self::start_with(db, models, name, &[])
    }

    /// A replica with further `EXPLAIND_*` settings.
    fn start_with(db: &str, models: &Path, name: &str, settings: &[(&str, &str)]) -> Self {
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_explaind"))
            .args(["serve", "--bind", &format!("127.0.0.1:{port}"), "--models"])
            .arg(models)
            .env("EXPLAIND_DATA_DIR", temp_dir(&format!("replica-{name}")))
            .env("EXPLAIND_AUDIT_DATABASE_URL", db)
            .env("EXPLAIND_JOBS_DATABASE_URL", db)
            .env("EXPLAIND_AUDIT", "all")
            .env("EXPLAIND_WORKERS", "1")
            .env("EXPLAIND_MAX_BATCH", "1")
            .env("EXPLAIND_JOB_LEASE_MS", "1500")
            .env("EXPLAIND_MAX_JOBS", "1000")
            .env("EXPLAIND_MAX_JOBS_PER_CALLER", "500")
            .env("EXPLAIND_API_KEYS", keys())
            .env("RUST_LOG", "explaind=info")
            .envs(settings.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(temp_dir(&format!("replica-log-{name}")).join("log")).unwrap(),
            ))
            .spawn()
            .unwrap();
        Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
        }
    }

    async fn ready(self) -> Self {
        for _ in 0..600 {
            if let Ok(r) = reqwest::get(format!("{}/readyz", self.base)).await {
                if r.status() == StatusCode::OK {
                    return self;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("replica at {} not ready", self.base);
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn kill(&mut self) {
        self.child.kill().unwrap(); // SIGKILL
        let _ = self.child.wait();
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn job(samples: usize) -> Value {
    json!({"model": "slow", "method": "kernel-shap", "features": [1, 2, 3, 4, 5, 6, 7, 8],
           "params": {"samples": samples, "background_rows": 1}, "seed": 7, "audit": true})
}

async fn submit(http: &reqwest::Client, r: &Replica, who: &str, body: &Value) -> reqwest::Result<Value> {
    let resp = http.post(r.url("/v1/jobs")).bearer_auth(who).json(body).send().await?;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    resp.json().await
}

async fn view(http: &reqwest::Client, r: &Replica, who: &str, id: &str) -> (StatusCode, Value) {
    let resp = http
        .get(r.url(&format!("/v1/jobs/{id}")))
        .bearer_auth(who)
        .send()
        .await
        .unwrap();
    (resp.status(), resp.json().await.unwrap())
}

/// GET `path` on `r` as `who`, as JSON.
async fn get_json(http: &reqwest::Client, r: &Replica, who: &str, path: &str) -> Value {
    let resp = http.get(r.url(path)).bearer_auth(who).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "GET {path}");
    resp.json().await.unwrap()
}

/// Polls until `until` holds of the job's view (seen through `r`).
async fn wait_for(
    http: &reqwest::Client,
    r: &Replica,
    id: &str,
    within: Duration,
    until: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let (status, v) = view(http, r, "alpha", id).await;
        assert_eq!(status, StatusCode::OK, "{v}");
        if until(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "gave up waiting: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn running_on(v: &Value) -> u32 {
    v["replica"]
        .as_str()
        .unwrap()
        .split('/')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_jobs_their_progress_results_cancellation_and_one_audit_chain() {
    let pg = Postgres::start();
    let models = models();
    let a = Replica::start(&pg.url(), &models, "share-a").ready().await;
    let b = Replica::start(&pg.url(), &models, "share-b").ready().await;
    let http = reqwest::Client::new();
    // Submitted on A: B shows its progress and its result.
    let v = submit(&http, &a, "alpha", &job(300)).await.unwrap();
    let id = v["id"].as_str().unwrap().to_string();
    let running = wait_for(&http, &b, &id, Duration::from_secs(30), |v| {
        v["state"] == "running" && v["progress"]["done"].as_u64().unwrap() > 10
    })
    .await;
    assert!(running["progress"]["planned"].as_u64().unwrap() >= 300, "{running}");
    let done = wait_for(&http, &b, &id, Duration::from_secs(120), |v| v["state"] == "done").await;
    assert_eq!(done["result"]["method"], "kernel-shap");
    assert_eq!(done["attempts"], 1);
    let p = &done["progress"];
    assert_eq!(p["done"], p["planned"]);
    assert_eq!(p["done"], done["result"]["stats"]["model_rows"]);
    // The event stream through either replica ends with the same job.
    let text = http
        .get(a.url(&format!("/v1/jobs/{id}/events")))
        .bearer_auth("alpha")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("event: done"), "{text}");
    // Another caller sees nothing of it on any replica; the admin key sees it.
    for r in [&a, &b] {
        assert_eq!(view(&http, r, "beta", &id).await.0, StatusCode::NOT_FOUND);
        assert_eq!(view(&http, r, "auditor", &id).await.0, StatusCode::OK);
        let resp = http
            .delete(r.url(&format!("/v1/jobs/{id}")))
            .bearer_auth("beta")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    }
    // A long job, cancelled through the replica that is not running it: the runner stops.
    let v = submit(&http, &b, "alpha", &job(2000)).await.unwrap();
    let id = v["id"].as_str().unwrap().to_string();
    let running = wait_for(&http, &a, &id, Duration::from_secs(30), |v| {
        v["state"] == "running" && v["progress"]["done"].as_u64().unwrap() > 5
    })
    .await;
    let other = if running_on(&running) == a.pid() { &b } else { &a };
    let resp = http
        .delete(other.url(&format!("/v1/jobs/{id}")))
        .bearer_auth("alpha")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.json::<Value>().await.unwrap()["state"], "cancelled");
    // The runner is free again within a renewal: a short job finishes quickly on either.
    let started = Instant::now();
    let quick: Vec<String> = futures_util::future::join_all((0..2).map(|i| {
        let http = http.clone();
        let r = if i == 0 { &a } else { &b };
        async move {
            submit(&http, r, "alpha", &job(20)).await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        }
    }))
    .await;
    for q in &quick {
        wait_for(&http, &a, q, Duration::from_secs(30), |v| v["state"] == "done").await;
    }
    eprintln!(
        "two short jobs done {:?} after cancelling the long one",
        started.elapsed()
    );
    let cancelled = view(&http, &a, "alpha", &id).await.1;
    assert_eq!(cancelled["state"], "cancelled");
    assert!(cancelled["progress"]["done"].as_u64().unwrap() < 2000);
    // Errors: not a UUID (400), unknown (404).
    assert_eq!(view(&http, &a, "alpha", "42").await.0, StatusCode::BAD_REQUEST);
    let unknown = uuid::Uuid::new_v4().to_string();
    assert_eq!(view(&http, &b, "alpha", &unknown).await.0, StatusCode::NOT_FOUND);
    // Both replicas wrote audit records into one chain; it verifies.
    for r in [&a, &b] {
        let resp = http
            .post(r.url("/v1/models/slow/predict"))
            .bearer_auth("alpha")
            .json(&json!({"features": [1, 2, 3, 4, 5, 6, 7, 8]}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
    }
    let verify = get_json(&http, &b, "auditor", "/v1/audit/verify").await;
    assert_eq!(verify["ok"], true, "{verify}");
    assert!(verify["records"].as_u64().unwrap() >= 5, "{verify}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_replica_is_killed_is_finished_by_another_once() {
    let pg = Postgres::start();
    let models = models();
    // Finished jobs are kept 2 s: the idle survivor removes this one afterwards.
    let ttl = [("EXPLAIND_JOB_TTL_SECS", "2")];
    let mut a = Replica::start_with(&pg.url(), &models, "kill-a", &ttl).ready().await;
    let mut b = Replica::start_with(&pg.url(), &models, "kill-b", &ttl).ready().await;
    let http = reqwest::Client::new();
    let v = submit(&http, &a, "alpha", &job(300)).await.unwrap();
    let id = v["id"].as_str().unwrap().to_string();
    let running = wait_for(&http, &a, &id, Duration::from_secs(30), |v| {
        v["state"] == "running" && v["progress"]["done"].as_u64().unwrap() > 10
    })
    .await;
    let (victim, survivor) = if running_on(&running) == a.pid() {
        (&mut a, &b)
    } else {
        (&mut b, &a)
    };
    victim.kill();
    let killed = Instant::now();
    let done = wait_for(&http, survivor, &id, Duration::from_secs(120), |v| {
        v["state"].as_str().is_some_and(|s| s != "running" && s != "queued")
    })
    .await;
    eprintln!("finished by the survivor {:?} after the kill", killed.elapsed());
    assert_eq!(done["state"], "done", "{done}");
    assert_eq!(done["attempts"], 2, "run again once");
    // Once: one audit record for it (its id is the job's), from the survivor's run.
    assert_eq!(done["result"]["audit_record"]["id"].as_str(), Some(id.as_str()));
    let records = get_json(
        &http,
        survivor,
        "auditor",
        "/v1/audit/records?method=kernel-shap&limit=100",
    )
    .await;
    let ids: Vec<&Value> = records["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["explanation_id"])
        .collect();
    assert_eq!(ids, vec![&done["result"]["id"]], "{records}");
    // Past its time the job is gone, on any replica; its audit record stays.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(view(&http, survivor, "alpha", &id).await.0, StatusCode::NOT_FOUND);
    get_json(&http, survivor, "auditor", &format!("/v1/audit/records/{id}")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_is_never_run_on_a_model_other_than_the_one_it_was_checked_against() {
    let pg = Postgres::start();
    let a = Replica::start(&pg.url(), &models_with(2), "sha-a").ready().await;
    let http = reqwest::Client::new();
    // A's one worker is busy with a long job, so the next job can only be claimed by B, whose
    // `slow` model is another file.
    let long = submit(&http, &a, "alpha", &job(2000)).await.unwrap();
    let long = long["id"].as_str().unwrap().to_string();
    wait_for(&http, &a, &long, Duration::from_secs(30), |v| v["state"] == "running").await;
    let b = Replica::start(&pg.url(), &models_with(3), "sha-b").ready().await;
    let v = submit(&http, &a, "alpha", &job(20)).await.unwrap();
    let id = v["id"].as_str().unwrap().to_string();
    let failed = wait_for(&http, &a, &id, Duration::from_secs(30), |v| {
        v["state"].as_str().is_some_and(|s| s != "running" && s != "queued")
    })
    .await;
    assert_eq!(failed["state"], "failed", "{failed}");
    let detail = failed["error"]["detail"].as_str().unwrap();
    assert!(detail.contains("changed after the job was submitted"), "{detail}");
    let resp = http
        .delete(b.url(&format!("/v1/jobs/{long}")))
        .bearer_auth("alpha")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    // Without its database a replica is not ready (it leaves the Service), though it lives.
    drop(pg);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = reqwest::get(a.url("/readyz")).await.unwrap();
        if r.status() == StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(r.json::<Value>().await.unwrap()["status"], "database-unreachable");
            break;
        }
        assert!(Instant::now() < deadline, "still ready without its database");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(reqwest::get(a.url("/healthz")).await.unwrap().status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_jobs_over_two_replicas_one_killed_and_restarted_each_end_exactly_once() {
    let pg = Postgres::start();
    let models = models();
    let mut a = Replica::start(&pg.url(), &models, "many-a").ready().await;
    let b = Replica::start(&pg.url(), &models, "many-b").ready().await;
    let http = reqwest::Client::new();
    let mut ids = Vec::new();
    let started = Instant::now();
    for i in 0..200 {
        if i == 100 {
            // Midway: A dies (jobs it ran are left to their leases) and comes back.
            a.kill();
            a = Replica::start(&pg.url(), &models, "many-a2").ready().await;
        }
        let r = if i % 2 == 0 { &a } else { &b };
        let v = submit(&http, r, "alpha", &job(10)).await.unwrap();
        ids.push(v["id"].as_str().unwrap().to_string());
        if i % 20 == 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let mut attempts = std::collections::BTreeMap::<u64, usize>::new();
    for id in &ids {
        let v = wait_for(&http, &b, id, Duration::from_secs(300), |v| {
            v["state"].as_str().is_some_and(|s| s != "running" && s != "queued")
        })
        .await;
        assert_eq!(v["state"], "done", "{v}");
        let n = v["attempts"].as_u64().unwrap();
        assert!((1..=3).contains(&n), "{v}");
        *attempts.entry(n).or_default() += 1;
    }
    eprintln!("200 jobs in {:?}; runs per job: {attempts:?}", started.elapsed());
    // Exactly once: one audit record per job (a run killed after recording and before finishing
    // leaves the record its rerun then answers with), and one stored result per job.
    let pool = sqlx::PgPool::connect(&pg.url()).await.unwrap();
    let row = sqlx::query("SELECT count(*), count(DISTINCT id) FROM audit_records WHERE kind = 'explanation'")
        .fetch_one(&pool)
        .await
        .unwrap();
    let (records, distinct): (i64, i64) = (row.get(0), row.get(1));
    assert_eq!((records, distinct), (200, 200));
    let recorded: std::collections::HashSet<String> =
        sqlx::query("SELECT id FROM audit_records WHERE kind = 'explanation'")
            .fetch_all(&pool)
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
    assert!(
        ids.iter().all(|id| recorded.contains(id)),
        "every job has its record, under its id"
    );
    let row = sqlx::query("SELECT count(*) FROM explaind_jobs WHERE state = 'done' AND result IS NOT NULL")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(row.get::<i64, _>(0), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_stopped_with_sigterm_gives_its_running_job_back_at_once() {
    let pg = Postgres::start();
    let models = models();
    let mut a = Replica::start(&pg.url(), &models, "term-a").ready().await;
    let http = reqwest::Client::new();
    let v = submit(&http, &a, "alpha", &job(300)).await.unwrap();
    let id = v["id"].as_str().unwrap().to_string();
    wait_for(&http, &a, &id, Duration::from_secs(30), |v| {
        v["state"] == "running" && v["progress"]["done"].as_u64().unwrap() > 10
    })
    .await;
    let b = Replica::start(&pg.url(), &models, "term-b").ready().await;
    // SIGTERM, as Kubernetes stops a pod: A stops claiming and hands the job back before it exits.
    unsafe { libc::kill(a.pid() as i32, libc::SIGTERM) };
    let stopped = Instant::now();
    let status = a.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(
        stopped.elapsed() < Duration::from_secs(10),
        "stopping took {:?}",
        stopped.elapsed()
    );
    let taken = wait_for(&http, &b, &id, Duration::from_secs(10), |v| {
        v["replica"]
            .as_str()
            .is_some_and(|r| r.contains(&format!("/{}/", b.pid())))
    })
    .await;
    eprintln!("taken over {:?} after SIGTERM", stopped.elapsed());
    assert_eq!(taken["attempts"], 1, "a run given back is not an attempt: {taken}");
    let done = wait_for(&http, &b, &id, Duration::from_secs(60), |v| v["state"] == "done").await;
    assert_eq!(done["attempts"], 1);
}

/// 32 submissions at once, spread over `replicas`, as `who`: how many were accepted, and each
/// refusal's status and problem type (counted).
async fn submit_at_once(
    http: &reqwest::Client,
    replicas: &[&Replica],
    who: &str,
) -> (usize, std::collections::BTreeMap<(u16, String), usize>) {
    let answers = futures_util::future::join_all((0..32).map(|i| {
        let http = http.clone();
        let r = replicas[i % replicas.len()];
        async move {
            let resp = http
                .post(r.url("/v1/jobs"))
                .bearer_auth(who)
                .json(&job(2000))
                .send()
                .await
                .unwrap();
            let status = resp.status();
            let kind = resp
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .map(|v| v.to_str().unwrap().to_string());
            (status, kind, resp.json::<Value>().await.unwrap())
        }
    }))
    .await;
    let mut accepted = 0;
    let mut refused = std::collections::BTreeMap::new();
    for (status, kind, body) in answers {
        if status == StatusCode::ACCEPTED {
            accepted += 1;
            continue;
        }
        assert_eq!(kind.as_deref(), Some("application/problem+json"), "{status}: {body}");
        let problem = body["type"].as_str().unwrap().rsplit('/').next().unwrap().to_string();
        *refused.entry((status.as_u16(), problem)).or_insert(0) += 1;
    }
    (accepted, refused)
}

/// `max_jobs_per_caller` 20 and `max_jobs` 30 on every replica: 32 submissions at once from one
/// caller get exactly 20 accepted (the rest 429), then 32 from another exactly the 10 places left
/// (the rest 503), however the submissions interleave over the replicas and the database.
async fn job_limits_hold_under_concurrent_submission(replicas: usize) {
    let pg = Postgres::start();
    let models = models();
    let limits = [("EXPLAIND_MAX_JOBS", "30"), ("EXPLAIND_MAX_JOBS_PER_CALLER", "20")];
    let mut started = Vec::new();
    for i in 0..replicas {
        let name = format!("limits-{replicas}-{i}");
        started.push(Replica::start_with(&pg.url(), &models, &name, &limits).ready().await);
    }
    let all: Vec<&Replica> = started.iter().collect();
    let http = reqwest::Client::new();
    let (accepted, refused) = submit_at_once(&http, &all, "alpha").await;
    assert_eq!(
        (accepted, refused.into_iter().collect::<Vec<_>>()),
        (20, vec![((429, "too-many-jobs".to_string()), 12)]),
        "max_jobs_per_caller over {replicas} replica(s)"
    );
    let (accepted, refused) = submit_at_once(&http, &all, "beta").await;
    assert_eq!(
        (accepted, refused.into_iter().collect::<Vec<_>>()),
        (10, vec![((503, "overloaded".to_string()), 22)]),
        "max_jobs over {replicas} replica(s)"
    );
    let pool = sqlx::PgPool::connect(&pg.url()).await.unwrap();
    let row = sqlx::query("SELECT count(*) FROM explaind_jobs WHERE state IN ('queued', 'running')")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(row.get::<i64, _>(0), 30, "unfinished jobs in the database");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_limits_hold_exactly_under_concurrent_submission_to_one_replica() {
    job_limits_hold_under_concurrent_submission(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_limits_hold_exactly_under_concurrent_submission_to_two_replicas() {
    job_limits_hold_under_concurrent_submission(2).await;
}
