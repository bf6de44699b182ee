//! The `sam2refiner` element in a pipeline: frames per second, time per frame and memory, on
//! random weights of an official config (speed does not depend on the weights).
//!
//! ```text
//! cargo bench --bench element -- [--config sam2.1_hiera_t] [--width 1280] [--height 720]
//!     [--frames 12] [--objects 1] [--output alpha] [--skip-policy none] [--device cpu] [--spans]
//! ```
//! Runs `videotestsrc pattern=ball num-buffers=N ! video/x-raw,format=RGBA,... ! sam2refiner !
//! fakesink sync=false` with one click per object on frame 0 (from a prompt timeline), and
//! prints the model load time, the first frame (a prompted frame: no memory attention), the
//! median time per tracked frame once the memory bank holds all its spatial memories (from frame
//! `num_maskmem` on, as the official figures are taken; earlier frames when the run is shorter),
//! frames per second, the latency the element reports, and the process's peak resident memory.
//! With `--spans`, the time per frame (averaged over all frames) inside each of the engine's and
//! the element's tracing spans: reading the frame, the model's input, tracking, mattes, rendering.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use candle_core::DType;
use common::{Args, peak_rss_mib};
use gst::prelude::*;
use gstsam2refiner::model::{Sam2Config, WeightFile};

fn main() -> anyhow::Result<()> {
    let args = Args::from_env();
    let config_name = args.string("--config", "sam2.1_hiera_t");
    let (width, height): (u32, u32) = (args.parse("--width", 1280)?, args.parse("--height", 720)?);
    let frames: usize = args.parse("--frames", 12)?;
    let objects: usize = args.parse("--objects", 1)?;
    let output = args.string("--output", "alpha");
    let skip_policy = args.string("--skip-policy", "none");
    let device = args.string("--device", "cpu");
    anyhow::ensure!(
        frames >= 3,
        "--frames: at least 3 (a prompted frame, then tracked ones)"
    );

    if args.flag("--spans") {
        // Before the element builds its model: the modules make their spans then.
        common::spans::SpanProfile::install();
    }
    gst::init()?;
    gstsam2refiner::plugin_register_static()?;

    let scratch = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("bench-element");
    std::fs::create_dir_all(&scratch)?;
    let config = Sam2Config::load(&config_name)?;
    let weights = scratch.join(format!(
        "random-{}.safetensors",
        config_name.replace(['/', '.'], "_")
    ));
    // Written afresh each run: a file left by an earlier version of the same config would not fit.
    WeightFile::random(&config, 0)?.save_safetensors(&weights, DType::F32)?;
    // One click per object on frame 0, spread along the middle row.
    let clicks: Vec<String> = (0..objects)
        .map(|o| {
            let x = width as f32 * (o as f32 + 1.0) / (objects as f32 + 1.0);
            format!(
                r#"{{"frame": 0, "object": {}, "points": [[{x}, {}]], "labels": [1]}}"#,
                o + 1,
                height / 2
            )
        })
        .collect();
    let timeline = scratch.join("clicks.json");
    std::fs::write(
        &timeline,
        format!(r#"{{"prompts": [{}]}}"#, clicks.join(", ")),
    )?;

    let pipeline = gst::parse::launch(&format!(
        "videotestsrc pattern=ball num-buffers={frames} ! video/x-raw,format=RGBA,width={width},height={height},framerate=30/1 \
         ! sam2refiner name=refiner config=\"{config_name}\" weights=\"{}\" device={device} output={output} \
           skip-policy={skip_policy} prompts=\"{}\" \
         ! fakesink name=sink sync=false signal-handoffs=true",
        weights.display(),
        timeline.display()
    ))?
    .downcast::<gst::Pipeline>()
    .map_err(|_| anyhow::anyhow!("not a pipeline"))?;
    let arrivals = Arc::new(Mutex::new(Vec::<Instant>::new()));
    let sink = pipeline.by_name("sink").expect("named sink");
    let recorded = arrivals.clone();
    sink.connect("handoff", false, move |_| {
        recorded.lock().unwrap().push(Instant::now());
        None
    });

    let bus = pipeline.bus().expect("a pipeline has a bus");
    let load_start = Instant::now();
    // The element loads the model in its READY->PAUSED change, before it returns; frames flow
    // from then on (the sink prerolls), so the first frame's time counts from here.
    pipeline.set_state(gst::State::Paused)?;
    let start = Instant::now();
    let load = start - load_start;
    pipeline.set_state(gst::State::Playing)?;
    let end = bus
        .timed_pop_filtered(
            gst::ClockTime::NONE,
            &[gst::MessageType::Eos, gst::MessageType::Error],
        )
        .expect("EOS or an error");
    if let gst::MessageView::Error(e) = end.view() {
        pipeline.set_state(gst::State::Null)?;
        anyhow::bail!("{} ({:?})", e.error(), e.debug());
    }
    // Asked of the element itself: a sink with sync=false does not ask upstream.
    let mut latency = gst::query::Latency::new();
    let refiner_src = pipeline
        .by_name("refiner")
        .and_then(|e| e.static_pad("src"))
        .expect("the element's source pad");
    let reported = refiner_src.query(&mut latency).then(|| latency.result().1);
    pipeline.set_state(gst::State::Null)?;

    let arrivals = arrivals.lock().unwrap().clone();
    anyhow::ensure!(
        arrivals.len() == frames,
        "{} of {frames} frames came out",
        arrivals.len()
    );
    let first = arrivals[0] - start;
    // Frame k's time is the gap between the outputs k-1 and k (the model works on one frame at a
    // time); steady state once the bank is full, if the run reaches it.
    let gaps: Vec<Duration> = arrivals.windows(2).map(|w| w[1] - w[0]).collect();
    let full_bank = config.num_maskmem.max(1);
    let steady = if gaps.len() > full_bank { full_bank } else { 1 };
    let mut per_frame: Vec<Duration> = gaps[steady - 1..].to_vec();
    per_frame.sort();
    let median = per_frame[per_frame.len() / 2];
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "sam2refiner element: {config_name}, random weights, {width}x{height} RGBA, {objects} object(s), output={output}, \
         skip-policy={skip_policy}, device {device}, {frames} frames"
    );
    println!("model load:                 {:8.0} ms", ms(load));
    println!("first frame (prompted):     {:8.1} ms", ms(first));
    println!(
        "tracked frame, median:      {:8.1} ms   (min {:.1}, max {:.1}; frames {steady} to {})",
        ms(median),
        ms(per_frame[0]),
        ms(per_frame[per_frame.len() - 1]),
        frames - 1
    );
    println!(
        "frames per second:          {:8.2}",
        1.0 / median.as_secs_f64()
    );
    if let Some(latency) = reported {
        println!(
            "latency reported:           {:8.1} ms",
            latency.nseconds() as f64 / 1e6
        );
    }
    println!("peak resident memory:       {:8.0} MiB", peak_rss_mib());
    if let Some(profile) = common::spans::SpanProfile::installed() {
        println!("per frame, inside each span (all {frames} frames):");
        profile.print(frames);
    }
    Ok(())
}
