//! The `explaind` command line: serve the API, print the OpenAPI document, inspect a model.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use explaind::config::Config;

#[derive(Parser)]
#[command(
    name = "explaind",
    version,
    about = "Explains the predictions of ONNX models over HTTP"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API (flags override EXPLAIND_* variables, which override the config file).
    Serve {
        /// TOML config file.
        #[arg(long, env = "EXPLAIND_CONFIG")]
        config: Option<PathBuf>,
        /// Listen address, e.g. 127.0.0.1:8080.
        #[arg(long)]
        bind: Option<String>,
        /// Models directory (one folder per model).
        #[arg(long)]
        models: Option<PathBuf>,
        /// Worker threads.
        #[arg(long)]
        workers: Option<usize>,
    },
    /// Print the OpenAPI document.
    Openapi,
    /// The audit log named by the config (`audit_database_url`, or `audit.db` in `data_dir`).
    Audit {
        /// TOML config file.
        #[arg(long, env = "EXPLAIND_CONFIG")]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Print the sha256 of an API key, as `api_keys` in the config stores it.
    HashKey {
        /// The key.
        key: String,
    },
    /// Write the backward model of an ONNX file: its outputs plus `<input>.grad` (the gradient of
    /// sum(output * explaind.target_weights) w.r.t. the input) and, per --layer, the layer's
    /// activation and `<layer>.grad`. Standard ONNX operators only; runs on stock ONNX Runtime.
    Backward {
        /// An ONNX file.
        model: PathBuf,
        /// Where to write the backward model.
        #[arg(short, long)]
        out: PathBuf,
        /// Input to differentiate (default: the first float input).
        #[arg(long)]
        input: Option<String>,
        /// Output whose weighted sum is the target (default: the first float output).
        #[arg(long)]
        output: Option<String>,
        /// Intermediate tensors to expose with their gradients.
        #[arg(long)]
        layer: Vec<String>,
        /// Rule set.
        #[arg(long, value_enum, default_value = "standard")]
        rules: Rules,
        /// Sample input shape for the shape probe, e.g. 1,3,224,224 (default: the graph's, batch 1).
        #[arg(long, value_delimiter = ',')]
        input_shape: Option<Vec<usize>>,
        /// ONNX Runtime library (default: as `serve` finds it).
        #[arg(long)]
        onnxruntime_library: Option<PathBuf>,
    },
    /// Print a model's interface (inputs, outputs, opsets) and gradient support as JSON:
    /// differentiable end to end or not (and which operators block it), candidate CAM layers.
    Inspect {
        /// An ONNX file.
        model: PathBuf,
        /// Input to differentiate (default: the first float input).
        #[arg(long)]
        input: Option<String>,
        /// Output whose scores are explained (default: the first float output).
        #[arg(long)]
        output: Option<String>,
        /// Sample input shape for the shape probe, e.g. 1,3,224,224 (default: the graph's, batch 1).
        #[arg(long, value_delimiter = ',')]
        input_shape: Option<Vec<usize>>,
        /// ONNX Runtime library (default: as `serve` finds it).
        #[arg(long)]
        onnxruntime_library: Option<PathBuf>,
    },
}

/// Audit log commands.
#[derive(Subcommand)]
enum AuditCommand {
    /// Walk the hash chain and check the signed checkpoints; exit 1 and name the first broken
    /// record (or refused checkpoint, or cut) when it does not verify.
    Verify,
    /// Write every record as JSON Lines to stdout, in chain order; with checkpoints, the public
    /// keys first and the signed checkpoints last.
    Export,
    /// Make a new Ed25519 signing key: its secret (hex) to the named file, created with mode 0600,
    /// and its key id and public key to stdout.
    Keygen {
        /// Where to write the secret key (must not exist).
        out: PathBuf,
    },
}

/// Rule sets on the command line.
#[derive(Clone, Copy, clap::ValueEnum)]
enum Rules {
    /// Exact gradients.
    Standard,
    /// Guided backpropagation.
    GuidedBackprop,
    /// DeconvNet.
    Deconvnet,
}

impl Rules {
    /// The autodiff rule table this choice names.
    fn set(self) -> explaind::onnx::autodiff::RuleSet {
        match self {
            Rules::Standard => explaind::onnx::autodiff::RuleSet::Exact,
            Rules::GuidedBackprop => explaind::onnx::autodiff::RuleSet::ReluMaskedByInputAndGradient,
            Rules::Deconvnet => explaind::onnx::autodiff::RuleSet::ReluMaskedByGradient,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve {
            config,
            bind,
            models,
            workers,
        } => serve(config, bind, models, workers),
        Command::Openapi => {
            print!(
                "{}",
                explaind::http::openapi::document_json(
                    &explaind::explain::Methods::standard(),
                    explaind::explain::Limits::from_config(&Config::default()),
                )
            );
            Ok(())
        }
        Command::HashKey { key } => {
            println!("{}", explaind::http::auth::hash_key(&key));
            Ok(())
        }
        Command::Audit {
            command: AuditCommand::Keygen { out },
            ..
        } => keygen(&out),
        Command::Audit { config, command } => {
            let cfg = Config::load(config.as_deref(), std::env::vars())?;
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(audit(cfg, command))
        }
        Command::Backward {
            model,
            out,
            input,
            output,
            layer,
            rules,
            input_shape,
            onnxruntime_library,
        } => {
            let built = explaind::runtime::inspect::backward(
                &model,
                input.as_deref(),
                output.as_deref(),
                &layer,
                rules.set(),
                input_shape.as_deref(),
                onnxruntime_library.as_deref(),
            )?;
            write_backward(&out, &built)
        }
        Command::Inspect {
            model,
            input,
            output,
            input_shape,
            onnxruntime_library,
        } => {
            let report = explaind::runtime::inspect::inspect(
                &model,
                input.as_deref(),
                output.as_deref(),
                input_shape.as_deref(),
                onnxruntime_library.as_deref(),
            )?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
    }
}

/// `serve`: the config from file, environment and flags, then the server until a signal.
fn serve(
    config: Option<PathBuf>,
    bind: Option<String>,
    models: Option<PathBuf>,
    workers: Option<usize>,
) -> anyhow::Result<()> {
    let mut cfg = Config::load(config.as_deref(), std::env::vars())?;
    if let Some(b) = bind {
        cfg.bind = b;
    }
    if let Some(m) = models {
        cfg.models_dir = m;
    }
    if let Some(w) = workers {
        cfg.workers = w;
    }
    let cfg = cfg.validated()?;
    // Before any thread starts: the allocator settings apply to the whole process.
    explaind::runtime::memory::tune_allocator(cfg.malloc_arenas, cfg.return_pass_memory);
    explaind::telemetry::init_logging(cfg.log_format);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(explaind::serve(cfg))
}

/// `backward`: writes the built model to `out` and says what it holds.
fn write_backward(out: &std::path::Path, built: &explaind::onnx::autodiff::BackwardModel) -> anyhow::Result<()> {
    std::fs::write(out, prost::Message::encode_to_vec(&built.model))
        .map_err(|e| anyhow::anyhow!("{}: {e}", out.display()))?;
    eprintln!(
        "wrote {} (opset {}): input gradient `{}`, weights input `{}`",
        out.display(),
        built.opset,
        built.input_grad,
        explaind::onnx::autodiff::WEIGHTS_INPUT
    );
    Ok(())
}

/// `audit keygen`: a new signing key, its secret written only to `out` (0600, never overwritten).
fn keygen(out: &std::path::Path) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let secret = explaind::audit::secret::Secret(explaind::audit::secret::random());
    let signer = explaind::audit::Signer::new(&secret);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .map_err(|e| anyhow::anyhow!("{}: {e}", out.display()))?;
    writeln!(file, "{}", hex::encode(secret.0))?;
    let public = signer.public();
    println!(
        "{}",
        serde_json::json!({"key_id": explaind::audit::checkpoint::key_id(&public),
                           "public_key": hex::encode(public.as_bytes()),
                           "audit_signing_key": format!("file:{}", out.display())})
    );
    Ok(())
}

async fn audit(cfg: Config, command: AuditCommand) -> anyhow::Result<()> {
    use std::io::Write;
    let log = explaind::audit::AuditLog::open(&cfg).await?;
    match command {
        AuditCommand::Verify => {
            let v = log.verify().await?;
            println!("{}", serde_json::to_string_pretty(&v)?);
            if !v.ok {
                anyhow::bail!("the audit chain is broken");
            }
        }
        AuditCommand::Export => {
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            let mut at = Some(explaind::audit::ExportAt::Start);
            while let Some(now) = at {
                let (text, next) = log.export(now).await?;
                out.write_all(text.as_bytes())?;
                at = next;
            }
            out.flush()?;
        }
        // Handled before the config is read.
        AuditCommand::Keygen { .. } => {}
    }
    Ok(())
}
