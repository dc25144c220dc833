//! explaind: an HTTP service that explains the predictions of ONNX models.
//!
//! The parts, in the order a request meets them: [`http`] (the face), [`executor`] (bounded job
//! queue and worker threads), [`runtime`] (models, sessions, pre- and post-processing), [`onnx`]
//! (model files and graph tools). This file only wires them together.

pub mod audit;
pub mod common;
pub mod config;
pub mod eval;
pub mod examples;
pub mod executor;
pub mod explain;
pub mod http;
pub mod jobs;
pub mod onnx;
pub mod pixels;
pub mod render;
pub mod runtime;
pub mod telemetry;
pub mod uncertainty;

#[cfg(test)]
mod layering;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use config::Config;
use executor::{Executor, ExecutorOptions};
use runtime::Registry;
use telemetry::Metrics;

/// A running service: its address, its state, and the handle that ends it.
pub struct Service {
    /// Address the server listens on.
    pub addr: SocketAddr,
    /// Shared state (executor, registry, metrics).
    pub state: Arc<http::AppState>,
    shutdown: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    claimer: Option<http::claimer::Claimer>,
}

/// Opens every model's sessions; fails at start, naming the model, rather than in a worker later.
/// Without `strict_models`, a model ONNX Runtime refuses joins the registry's failed models and the
/// others are opened again (only a start with a refused model pays that second pass).
fn open_sessions(
    env: &'static ort::environment::Environment,
    mut registry: Arc<Registry>,
    gradients: &Arc<runtime::gradients::GradientCache>,
    metrics: &Arc<Metrics>,
    config: &Config,
) -> anyhow::Result<(Arc<Registry>, Arc<runtime::sessions::SessionStore>)> {
    let options = runtime::sessions::StoreOptions {
        provider: config.execution_provider,
        max_model_memory: config.max_model_memory,
        memory_arena: config.memory_arena,
        inline_pass_bytes: config.inline_pass_bytes,
        max_pass_bytes: config.max_pass_bytes,
        batching: runtime::batching::Batching {
            enabled: config.batching,
            max_batch: config.max_batch,
            wait: Duration::from_micros(config.batch_wait_us),
        },
    };
    loop {
        let error = match runtime::sessions::SessionStore::new(
            env,
            registry.clone(),
            gradients.clone(),
            options,
            metrics.passes.clone(),
        ) {
            Ok(store) => return Ok((registry, Arc::new(store))),
            Err(e) => e,
        };
        // The store's error starts with the refused model's file.
        let refused = registry
            .iter()
            .find(|m| error.starts_with(&format!("{}:", m.dir.join("model.onnx").display())));
        match refused {
            Some(model) if !config.strict_models => {
                registry = Arc::new(registry.without(&model.name, &error, &config.models_dir)?);
            }
            _ => return Err(anyhow::anyhow!(error)),
        }
    }
}

impl Service {
    /// Loads ONNX Runtime and the models, starts the workers, and binds the listener.
    pub async fn start(config: Config) -> anyhow::Result<Self> {
        Self::start_with(config, explain::Methods::standard()).await
    }

    /// [`Service::start`] serving the given explanation methods.
    pub async fn start_with(config: Config, methods: explain::Methods) -> anyhow::Result<Self> {
        let threads = runtime::library::Threads {
            intra_op: config.intra_op_threads,
            spinning: config.intra_op_spinning,
        };
        let env = runtime::library::init_with(config.onnxruntime_library.as_deref(), threads)?;
        let registry = Arc::new(Registry::load_dir(&config.models_dir, config.strict_models)?);
        let gradients =
            Arc::new(runtime::gradients::GradientCache::new(env).with_pattern_dir(config.data_dir.join("patterns")));
        let metrics = Arc::new(Metrics::default());
        let (registry, sessions) = open_sessions(env, registry, &gradients, &metrics, &config)?;
        tracing::info!(models = ?registry.names(), "models loaded");
        report_gradients(&registry, &gradients);
        let executor = start_executor(&config, sessions, &metrics);
        let references = Arc::new(examples::Sets::default());
        jobs::reference::prepare_all(&registry, &references, &gradients, &executor, &config).await?;
        jobs::patterns::prepare_all(&registry, &references, &gradients, &executor, &config).await;
        let audit = Arc::new(
            audit::AuditLog::open(&config)
                .await
                .context("cannot open the audit log")?,
        );
        audit.start_upkeep();
        let jobs = Arc::new(executor::board::JobBoard::new(
            Duration::from_secs(config.job_ttl_secs),
            config.max_jobs,
            Duration::from_millis(config.async_job_deadline_ms),
        ));
        let shared_jobs = open_shared_jobs(&config).await?;
        http::server::raise_open_file_limit(config.max_connections);
        let listener = tokio::net::TcpListener::bind(&config.bind)
            .await
            .with_context(|| format!("cannot listen on {}", config.bind))?;
        let addr = listener.local_addr()?;
        let state = Arc::new(http::AppState {
            config,
            registry,
            executor,
            references,
            gradients,
            metrics,
            audit,
            jobs,
            shared_jobs: shared_jobs.clone(),
            methods: Arc::new(methods),
        });
        let claimer = shared_jobs.map(|shared| {
            tracing::info!(replica = shared.me(), "asynchronous jobs are shared through PostgreSQL");
            http::claimer::start(state.clone(), shared)
        });
        let app = http::router(state.clone());
        let limits = http::server::ConnectionLimits::from_config(&state.config);
        let (shutdown, on_shutdown) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(http::server::serve(listener, app, limits, async {
            let _ = on_shutdown.await;
        }));
        tracing::info!(%addr, "listening");
        Ok(Self {
            addr,
            state,
            shutdown,
            server,
            claimer,
        })
    }

    /// Stops accepting connections, finishes in-flight requests and jobs, and stops the workers.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.shutdown.send(());
        // Shared jobs go back to the queue at once, for other replicas, rather than wait for this one.
        if let Some(claimer) = self.claimer {
            claimer.stop().await;
        }
        self.server.await??;
        let cancelled = self.state.jobs.cancel_all();
        if cancelled > 0 {
            tracing::info!(cancelled, "asynchronous jobs cancelled at shutdown");
        }
        let executor = self.state.executor.clone();
        tokio::task::spawn_blocking(move || executor.shutdown()).await?;
        self.state.audit.close().await;
        if let Some(shared) = &self.state.shared_jobs {
            shared.close().await;
        }
        Ok(())
    }
}

/// Logs and keeps each model's gradient support, and reads tree ensembles once.
fn report_gradients(registry: &Registry, gradients: &runtime::gradients::GradientCache) {
    for model in registry.iter() {
        let report = gradients.report(model);
        tracing::info!(model = %model.name, differentiable = report.differentiable,
            blocking = ?report.blocking_operators, cam_layer = ?report.default_cam_layer, "gradient support");
        let _ = model.gradient_report.set(report);
        // Tree ensembles are read once here, not on the first request's async thread.
        if model.spec.tabular.is_some() {
            let _ = model.forest();
        }
    }
}

/// The workers, with the configured queue, deadline and memory bounds.
fn start_executor(
    config: &Config,
    sessions: Arc<runtime::sessions::SessionStore>,
    metrics: &Arc<Metrics>,
) -> Arc<Executor> {
    Arc::new(Executor::start(
        sessions,
        ExecutorOptions {
            workers: config.workers,
            queue_capacity: config.queue_capacity,
            job_deadline: Duration::from_millis(config.job_deadline_ms),
            retry_after_secs: config.retry_after_secs,
            max_running_job_bytes: config.max_running_job_bytes,
        },
        metrics.clone(),
    ))
}

/// The PostgreSQL job table shared by replicas, where one is configured.
async fn open_shared_jobs(config: &Config) -> anyhow::Result<Option<Arc<executor::shared::SharedJobs>>> {
    let Some(url) = config.shared_jobs_url() else {
        return Ok(None);
    };
    let shared = executor::shared::SharedJobs::open(
        url,
        executor::shared::SharedOptions {
            lease: Duration::from_millis(config.job_lease_ms),
            max_attempts: config.job_max_attempts,
            ttl: Duration::from_secs(config.job_ttl_secs),
            max_jobs: config.max_jobs,
        },
    )
    .await
    .context("cannot open the jobs database")?;
    Ok(Some(Arc::new(shared)))
}

/// Runs the service until SIGTERM or Ctrl-C, then shuts down gracefully.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let service = Service::start(config).await?;
    shutdown_signal().await;
    tracing::info!("shutting down: finishing in-flight requests");
    service.stop().await?;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
