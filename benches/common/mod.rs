//! What the benchmarks share: model folders (copies of bundled models, a ResNet-18 with seeded
//! weights), the service they run under, and the median of their timings.

#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use prost::Message;

/// A `side` x `side` RGB PNG of colour gradients, base64-encoded as requests carry images.
pub fn png(side: u32) -> String {
    use base64::Engine;
    let img = image::RgbImage::from_fn(side, side, |x, y| {
        image::Rgb([(x * 7) as u8, (y * 5) as u8, ((x + y) * 3) as u8])
    });
    let mut out = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    base64::engine::general_purpose::STANDARD.encode(out)
}

/// A job explaining `input` with the planned `params` (seed 1, the model's own targets, no
/// metrics), as a request makes it.
pub fn job(
    model: &std::sync::Arc<explaind::runtime::LoadedModel>,
    input: explaind::runtime::Tensor,
    params: &explaind::explain::method::ValidParams,
    limits: explaind::explain::Limits,
) -> explaind::explain::ExplainJob {
    explaind::explain::ExplainJob {
        region: None,
        model: model.clone(),
        input,
        text: None,
        targets: None,
        params: params.clone(),
        seed: 1,
        limits,
        scores: None,
        scored_outputs: None,
        reference: None,
    }
}

/// The median of some timings.
pub fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Copies `files` of the bundled model `name` into `models/name`.
pub fn copy_bundled(root: &Path, models: &Path, name: &str, files: &[&str]) {
    std::fs::create_dir_all(models.join(name)).unwrap();
    for f in files {
        std::fs::copy(root.join("models").join(name).join(f), models.join(name).join(f)).unwrap();
    }
    // The reference set's folder, which the manifest names relatively, as a link.
    let reference = root.join("models").join(name).join("reference");
    if reference.is_dir() && !models.join(name).join("reference").exists() {
        std::os::unix::fs::symlink(reference, models.join(name).join("reference")).unwrap();
    }
}

/// Writes `models/resnet-18`: ResNet-18 at 224x224, 1,000 classes, seeded weights.
pub fn write_resnet18(models: &Path) {
    write_resnet(models, "resnet-18", &[2, 2, 2, 2], &[64, 128, 256, 512], 224, 1000);
}

/// A zoo ResNet with seeded weights as the image model `name` (blocks and widths per stage).
pub fn write_resnet(models: &Path, name: &str, blocks: &[usize], widths: &[i64], size: i64, classes: i64) {
    let resnet = explaind::onnx::zoo::resnet(blocks, widths, size, classes);
    write_image_model(models, name, &resnet, classes);
}

/// A benchmark's config: loopback on an ephemeral port, the models under `dir`, data in `dir/data`.
pub fn config(dir: &Path) -> explaind::config::Config {
    explaind::config::Config {
        bind: "127.0.0.1:0".into(),
        models_dir: dir.to_path_buf(),
        data_dir: dir.join("data"),
        ..Default::default()
    }
}

/// `model` as the image classifier `name` under `models` (labels `class i`, a plain manifest).
pub fn write_image_model(models: &Path, name: &str, model: &explaind::onnx::proto::ModelProto, classes: i64) {
    let dir = models.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("model.onnx"), model.encode_to_vec()).unwrap();
    let labels: Vec<String> = (0..classes).map(|i| format!("class {i}")).collect();
    std::fs::write(dir.join("labels.txt"), labels.join("\n")).unwrap();
    std::fs::write(
        dir.join("model.toml"),
        "task = \"image-classification\"\nlabels_file = \"labels.txt\"\n",
    )
    .unwrap();
}

/// A multi-threaded runtime and a service on `config`, its workers ready.
pub fn serve(config: explaind::config::Config) -> (tokio::runtime::Runtime, explaind::Service) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let service = rt.block_on(explaind::Service::start(config)).expect("service");
    rt.block_on(service.state.executor.wait_ready(std::time::Duration::from_secs(60)));
    (rt, service)
}

/// Runs `session` on float `feeds` (name, shape, values) and drops the outputs: a raw pass, for
/// the ratios the benchmarks print.
pub fn run_raw(session: &mut ort::session::Session, feeds: &[(&str, Vec<usize>, &[f32])]) {
    let values: Vec<(String, ort::session::SessionInputValue<'static>)> = feeds
        .iter()
        .map(|(n, s, v)| {
            (
                n.to_string(),
                ort::value::Tensor::from_array((s.clone(), v.to_vec())).unwrap().into(),
            )
        })
        .collect();
    drop(session.run(values).unwrap());
}

/// Generous limits for benchmark jobs, with passes of at most `max_batch` rows.
pub fn limits(max_batch: usize) -> explaind::explain::Limits {
    explaind::explain::Limits {
        max_samples: 4096,
        max_targets: 10,
        max_job_bytes: 4 << 30,
        max_batch,
    }
}

/// The median of `rounds` timed calls of `round`, after one untimed call (it builds and warms the
/// sessions the later ones use).
pub fn median_of_rounds(rounds: usize, mut round: impl FnMut()) -> Duration {
    round();
    let times = (0..rounds)
        .map(|_| {
            let started = std::time::Instant::now();
            round();
            started.elapsed()
        })
        .collect();
    median(times)
}

/// The rows an explanation ran, run raw once, as the methods run them: `forward_rows` through
/// `forward` (the first alone, the prediction a method starts from, the rest in batches of
/// `max_batch`), then `gradient_rows` split evenly over the `backward` sessions (one per graph the
/// method used) in batches of `max_batch`, weighted on class 0. Every row is `x`, shaped `dims`
/// (batch axis first), fed as `input`.
#[allow(clippy::too_many_arguments)]
pub fn run_raw_rows(
    forward: &mut ort::session::Session,
    backward: &mut [&mut ort::session::Session],
    input: &str,
    (dims, x): (&[usize], &[f32]),
    classes: usize,
    forward_rows: usize,
    gradient_rows: usize,
    max_batch: usize,
) {
    let rows = |b: usize| {
        let mut shape = dims.to_vec();
        shape[0] = b;
        (shape, (0..b).flat_map(|_| x.iter().copied()).collect::<Vec<f32>>())
    };
    let mut left = forward_rows;
    let mut first = true;
    while left > 0 {
        let b = if first { 1 } else { left.min(max_batch) };
        first = false;
        let (shape, xs) = rows(b);
        run_raw(forward, &[(input, shape, &xs)]);
        left -= b;
    }
    let per_session = gradient_rows.checked_div(backward.len()).unwrap_or(0);
    for session in backward {
        let mut left = per_session;
        while left > 0 {
            let b = left.min(max_batch);
            let (shape, xs) = rows(b);
            let w: Vec<f32> = (0..b * classes)
                .map(|i| if i % classes == 0 { 1.0 } else { 0.0 })
                .collect();
            run_raw(
                session,
                &[
                    (input, shape, &xs),
                    (explaind::onnx::autodiff::WEIGHTS_INPUT, vec![b, classes], &w),
                ],
            );
            left -= b;
        }
    }
}
