//! Detection benchmark, on a 640 x 640 YOLO-style zoo detector (`detector_sized`: 1,600
//! candidates, 80 classes, YOLOv8's output layout), each figure next to the same passes run raw
//! through ONNX Runtime, ratios printed in one run:
//! - decoding and NMS against one raw forward pass and against a predict job (goal: at most 5%
//!   of a predict);
//! - a gradient map (saliency) of one detection against its raw passes (goal: at most 1.3x);
//! - D-RISE with 1,000 masks against 1,000 raw forward rows in the same batches (goal: 1.1x).
//!
//! Run with `cargo bench --bench detection` (`-- saliency`: without D-RISE).

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use explaind::common::targets::TargetSpec;
use explaind::explain::{Methods, PlanContext};
use explaind::jobs::ExplainTask;
use explaind::onnx::autodiff::{build_backward, prepare_forward, GradientSpec, RuleTable, WEIGHTS_INPUT};
use explaind::runtime::graph_runner::OrtRunner;
use explaind::runtime::sessions::create_session_from_bytes;
use explaind::runtime::shapes::probe_shapes;
use explaind::runtime::Tensor;
use prost::Message;

const SIDE: usize = 640;
const CLASSES: usize = 80;

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("target").join("bench-detection");
    let _ = std::fs::remove_dir_all(&dir);
    let model = explaind::onnx::zoo::detector_sized(SIDE as i64, CLASSES as i64, 16, 2);
    std::fs::create_dir_all(dir.join("detector")).unwrap();
    std::fs::write(dir.join("detector/model.onnx"), model.encode_to_vec()).unwrap();
    // A low threshold: hundreds of candidates through NMS, more than a real image gives.
    std::fs::write(
        dir.join("detector/model.toml"),
        "task = \"object-detection\"\n[detection]\nlayout = \"yolo\"\nscore_threshold = 0.02\n",
    )
    .unwrap();
    let max_batch = 16;
    let config = explaind::config::Config {
        max_batch,
        ..common::config(&dir)
    };
    let (rt, service) = common::serve(config);
    let env = explaind::runtime::library::init(None).unwrap();
    let runner = OrtRunner::new(env);
    let limits = common::limits(max_batch);
    let loaded = service.state.registry.get("detector").unwrap().clone();
    let dims = vec![1usize, 3, SIDE, SIDE];
    let n: usize = dims.iter().product();
    let x: Vec<f32> = (0..n).map(|i| ((i * 7919) % 1000) as f32 / 1000.0).collect();
    let mut forward = create_session_from_bytes(env, &loaded.bytes).unwrap();
    println!(
        "detection benchmark: zoo detector {SIDE}x{SIDE}, {CLASSES} classes, max_batch {max_batch}; load {}",
        load()
    );

    // Decoding and NMS of one output row, read in place as the run gave it (f32), against one raw
    // forward pass of the row and against a predict job (the worker hop, the pass, the outputs
    // copied for the answer, decoding). Image decoding and letterboxing happen before either (at
    // the HTTP face), so neither side counts them.
    let raw_forward = common::median_of_rounds(5, || common::run_raw(&mut forward, &[("images", dims.clone(), &x)]));
    let out: Vec<f32> =
        explaind::runtime::graph_runner::run_session(&mut forward, &[("images", dims.clone(), x.clone())], &[])
            .unwrap()
            .into_iter()
            .find(|o| o.name == "output0")
            .and_then(|o| o.values)
            .unwrap();
    let mut found = 0;
    let decode = common::median_of_rounds(20, || {
        let rows = explaind::runtime::detect::decode(&loaded.spec, |_| Some(&out[..])).unwrap();
        found = rows.len();
    });
    // The job's input is made before its clock starts (the HTTP face hands it over made).
    let mut times = Vec::new();
    for round in 0..6 {
        let task = explaind::jobs::PredictTask {
            model: loaded.clone(),
            inputs: vec![Tensor::f32(dims.clone(), x.clone())],
            top_k: 5,
        };
        let started = Instant::now();
        let rows = rt.block_on(service.state.executor.submit(task)).unwrap();
        if round > 0 {
            times.push(started.elapsed());
        }
        assert_eq!(rows[0].detections.as_ref().map(Vec::len), Some(found));
    }
    let predict = common::median(times);
    println!(
        "decode + NMS: {:.3} ms ({found} detections kept) vs raw forward {:.2} ms: {:.2}% of the pass and it; predict job {:.2} ms: {:.2}% of it",
        ms(decode),
        ms(raw_forward),
        100.0 * decode.as_secs_f64() / (decode + raw_forward).as_secs_f64(),
        ms(predict),
        100.0 * decode.as_secs_f64() / predict.as_secs_f64()
    );

    // A gradient map of detection 0: the method (one backward pass that takes the highest class
    // score in the graph, checked against the detections decoded from its scores) against the raw
    // backward pass (goal: 1.3x), and against the raw forward + backward a target chosen outside
    // the graph takes.
    let prepared = prepare_forward(&explaind::onnx::proto::decode_model(&loaded.bytes).unwrap()).unwrap();
    let shapes = probe_shapes(&runner, &prepared, "images", &dims).unwrap();
    let spec = GradientSpec {
        input: "images".into(),
        output: "output0".into(),
        layers: vec![],
        input_grad: true,
    };
    let bw = build_backward(&prepared, &spec, &shapes, &RuleTable::exact(), Some(&runner)).unwrap();
    let mut backward = create_session_from_bytes(env, &bw.model.encode_to_vec()).unwrap();
    let width = (4 + CLASSES) * (SIDE / 16).pow(2);
    let mut w = vec![0f32; width];
    w[4 * (SIDE / 16).pow(2)] = 1.0;
    let out_dims = vec![1, 4 + CLASSES, (SIDE / 16).pow(2)];
    let methods = Methods::standard();
    let plan = |name: &str, params: serde_json::Value| {
        let cx = PlanContext {
            model: &loaded,
            limits,
            targets: 1,
            reference: None,
        };
        methods.get(name).unwrap().plan(params, &cx).unwrap()
    };
    let run = |name: &str, params: serde_json::Value, rounds: usize| {
        let mut job = common::job(
            &loaded,
            Tensor::f32(dims.clone(), x.clone()),
            &plan(name, params),
            limits,
        );
        job.targets = Some(TargetSpec::Detection { detection: 0 });
        let mut rows = 0;
        let time = common::median_of_rounds(rounds, || {
            let r = rt
                .block_on(service.state.executor.submit(ExplainTask::new(job.clone())))
                .unwrap();
            rows = r.rows;
        });
        (time, rows)
    };
    // Interleaved rounds (each timed against the others under the same load): the raw backward
    // pass above; the same pass through the graph the job runs (it chooses the best candidate
    // itself: fed all-zero weights); the job. Each job is made before its clock starts, as the
    // HTTP face hands it over made.
    let key = explaind::runtime::gradients::GradientKey {
        model: loaded.name.clone(),
        layers: vec![],
        rules: explaind::onnx::autodiff::RuleSet::Exact,
        input_grad: true,
    };
    let chosen = service.state.gradients.build(&loaded, &key).unwrap();
    let mut chooses = create_session_from_bytes(env, &chosen.bytes).unwrap();
    let zeros = vec![0f32; width];
    let saliency_job = || {
        let mut job = common::job(
            &loaded,
            Tensor::f32(dims.clone(), x.clone()),
            &plan("saliency", serde_json::json!({})),
            limits,
        );
        job.targets = Some(TargetSpec::Detection { detection: 0 });
        ExplainTask::new(job)
    };
    let (mut raw_b, mut raw_c, mut jobs, mut worker, mut model_time) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    // The process's CPU time of each (every thread: the worker, ONNX Runtime's pool): what load
    // moves less than wall time.
    let (mut cpu_b, mut cpu_c, mut cpu_j) = (Vec::new(), Vec::new(), Vec::new());
    let (mut flt_b, mut flt_c, mut flt_j) = (Vec::new(), Vec::new(), Vec::new());
    let mut rows = 0;
    for round in 0..16 {
        let f0 = faults();
        let (started, cpu) = (Instant::now(), cpu_time());
        common::run_raw(
            &mut backward,
            &[("images", dims.clone(), &x), (WEIGHTS_INPUT, out_dims.clone(), &w)],
        );
        let (b, b_cpu) = (started.elapsed(), cpu_time().saturating_sub(cpu));
        let f1 = faults();
        let (started, cpu) = (Instant::now(), cpu_time());
        common::run_raw(
            &mut chooses,
            &[("images", dims.clone(), &x), (WEIGHTS_INPUT, out_dims.clone(), &zeros)],
        );
        let (c, c_cpu) = (started.elapsed(), cpu_time().saturating_sub(cpu));
        let f2 = faults();
        let task = saliency_job();
        let f3 = faults();
        let (started, cpu) = (Instant::now(), cpu_time());
        let r = rt.block_on(service.state.executor.submit(task)).unwrap();
        let (j, j_cpu) = (started.elapsed(), cpu_time().saturating_sub(cpu));
        let f4 = faults();
        rows = r.rows;
        // The first round builds the job's sessions.
        if round > 0 {
            raw_b.push(b);
            raw_c.push(c);
            jobs.push(j);
            worker.push(r.worker_time);
            model_time.push(r.model_time);
            cpu_b.push(b_cpu);
            cpu_c.push(c_cpu);
            cpu_j.push(j_cpu);
            flt_b.push(f1 - f0);
            flt_c.push(f2 - f1);
            flt_j.push(f4 - f3);
        }
    }
    let (cpu_b, cpu_c, cpu_j) = (common::median(cpu_b), common::median(cpu_c), common::median(cpu_j));
    let median_of = |mut v: Vec<i64>| {
        v.sort();
        v[v.len() / 2]
    };
    let (flt_b, flt_c, flt_j) = (median_of(flt_b), median_of(flt_c), median_of(flt_j));
    let (raw_backward, raw_chooses, saliency) = (
        common::median(raw_b),
        common::median(raw_c),
        common::median(jobs.clone()),
    );
    let (worker, model_time) = (common::median(worker), common::median(model_time));
    // What the job does around its pass, timed alone: the scores widened and decoded; the map
    // folded from the gradient's channels.
    let decode_job = common::median_of_rounds(20, || {
        let widened: Vec<f64> = out.iter().map(|v| f64::from(*v)).collect();
        std::hint::black_box(
            explaind::common::detection_targets::detect_and_pick(
                Some(&TargetSpec::Detection { detection: 0 }),
                &loaded,
                &widened,
                &|_| None,
                10,
            )
            .unwrap(),
        );
    });
    let gradient = Tensor::f32(dims.clone(), x.clone());
    let image = loaded.spec.image.as_ref().unwrap();
    let fold = common::median_of_rounds(20, || {
        std::hint::black_box(explaind::explain::fold_channels(
            &gradient,
            0,
            image,
            explaind::explain::Fold::MaxAbs,
        ));
    });
    println!(
        "saliency of the best detection (load {}), {rows} row(s), medians of 15 interleaved rounds: job {:.1} ms; raw backward {:.1} ms: {:.2}x (goal 1.3x); raw backward through the job's graph (chooses its candidate) {:.1} ms: {:.2}x the raw one; vs raw forward + backward {:.1} ms: {:.2}x",
        load(),
        ms(saliency),
        ms(raw_backward),
        saliency.as_secs_f64() / raw_backward.as_secs_f64(),
        ms(raw_chooses),
        raw_chooses.as_secs_f64() / raw_backward.as_secs_f64(),
        ms(raw_forward + raw_backward),
        saliency.as_secs_f64() / (raw_forward + raw_backward).as_secs_f64()
    );
    println!(
        "saliency, process CPU time (medians): job {:.1} ms; raw backward {:.1} ms: {:.2}x; raw backward through the job's graph {:.1} ms: {:.2}x the raw one; minor page faults: job {flt_j}, raw {flt_b}, raw through the job's graph {flt_c}",
        ms(cpu_j),
        ms(cpu_b),
        cpu_j.as_secs_f64() / cpu_b.as_secs_f64(),
        ms(cpu_c),
        cpu_c.as_secs_f64() / cpu_b.as_secs_f64()
    );
    println!(
        "saliency, where the job's time goes (medians): in ONNX Runtime runs {:.1} ms ({:.2}x the raw pass through the same graph), the rest of the worker's job {:.1} ms (of which, timed alone: widening and decoding the scores {:.2} ms, folding the map {:.2} ms), executor hop and answer {:.1} ms; jobs {:?} ms",
        ms(model_time),
        model_time.as_secs_f64() / raw_chooses.as_secs_f64(),
        ms(worker.saturating_sub(model_time)),
        ms(decode_job),
        ms(fold),
        ms(saliency.saturating_sub(worker)),
        jobs.iter().map(|d| (ms(*d) * 10.0).round() / 10.0).collect::<Vec<_>>()
    );

    // `cargo bench --bench detection -- saliency` stops here (D-RISE takes a while).
    if std::env::args().skip(1).any(|a| a == "saliency") {
        rt.block_on(service.stop()).unwrap();
        return;
    }

    // D-RISE, 1,000 masks, against 1,001 raw forward rows (the input's, then the masks' in
    // batches of max_batch), each batch fed in place as the service feeds it (no copy).
    let masks = 1000;
    let (drise, rows) = run("d-rise", serde_json::json!({"masks": masks}), 1);
    let started = Instant::now();
    run_view(&mut forward, dims.clone(), &x);
    let mut left = masks;
    let batch: Vec<f32> = (0..max_batch).flat_map(|_| x.iter().copied()).collect();
    while left > 0 {
        let b = left.min(max_batch);
        run_view(&mut forward, vec![b, 3, SIDE, SIDE], &batch[..b * n]);
        left -= b;
    }
    let raw = started.elapsed();
    println!(
        "d-rise, {masks} masks: {:.0} ms ({rows} rows) vs raw forward rows {:.0} ms: {:.2}x",
        ms(drise),
        ms(raw),
        drise.as_secs_f64() / raw.as_secs_f64()
    );
    rt.block_on(service.stop()).unwrap();
}

/// A raw pass on `values` as a view: what the service's batches are fed as.
fn run_view(session: &mut ort::session::Session, shape: Vec<usize>, values: &[f32]) {
    let input = ort::value::TensorRef::from_array_view((shape, values)).unwrap();
    drop(session.run(ort::inputs!["images" => input]).unwrap());
}

/// The CPU time of every thread of the process so far.
fn cpu_time() -> Duration {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `t` is a valid timespec for the call to write.
    let ok = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut t) } == 0;
    match ok {
        true => Duration::new(t.tv_sec as u64, t.tv_nsec as u32),
        false => Duration::ZERO,
    }
}

/// The process's minor page faults so far (fresh pages touched: memory the allocator took from
/// the system again).
fn faults() -> i64 {
    // SAFETY: a zeroed rusage is a valid value for the call to fill.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid rusage for the call to write.
    match unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } {
        0 => usage.ru_minflt,
        _ => 0,
    }
}

/// The machine's load averages (figures under load are noisy: ratios are within one run).
fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
