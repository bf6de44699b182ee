//! Memory over a long stream: the resident set after 100, 1,000 and 10,000 frames must be the same.
//!
//! ```text
//! cargo bench --bench memory -- [--config sam2.1_hiera_t] [--size 64] [--frames 10000] [--objects 2]
//!                                [--correct-every 0]
//! ```
//! Random weights of an official config at a small input size (so 10,000 frames take minutes),
//! a synthetic clip of moving discs, one click per object on frame 0, and with `--correct-every N`
//! a correction every N frames (so the conditioning memories also grow, up to their cap). Prints
//! the process's resident set and what the tracker holds at each checkpoint, and frames per second.

mod common;

use std::time::Instant;

use common::{Args, rss_mib};

use candle_core::{DType, Device};
use gstsam2refiner::image::RgbImage;
use gstsam2refiner::model::weights::build_model;
use gstsam2refiner::model::{BuildMode, Sam2Config, WeightFile};
use gstsam2refiner::prompt::Prompt;
use gstsam2refiner::tracker::{FrameResize, Tracker, TrackerOptions};

/// A 160x120 frame with `objects` discs moving on circles over a gradient.
fn frame(t: usize, objects: usize) -> (RgbImage, Vec<[f32; 2]>) {
    let (w, h) = (160usize, 120usize);
    let centres: Vec<[f32; 2]> = (0..objects)
        .map(|o| {
            let a = t as f32 * 0.05 + o as f32 * 2.0;
            [80.0 + 40.0 * a.cos(), 60.0 + 30.0 * a.sin()]
        })
        .collect();
    let mut pixels = Vec::with_capacity(w * h * 3);
    for y in 0..h {
        for x in 0..w {
            let inside = centres
                .iter()
                .position(|c| (x as f32 - c[0]).powi(2) + (y as f32 - c[1]).powi(2) < 144.0);
            match inside {
                Some(o) => pixels.extend([200, 60 + 60 * o as u8, 40]),
                None => pixels.extend([(x * 255 / w) as u8, (y * 255 / h) as u8, 128]),
            }
        }
    }
    (
        RgbImage {
            width: w,
            height: h,
            pixels,
        },
        centres,
    )
}

fn main() -> anyhow::Result<()> {
    let args = Args::from_env();
    let preset = args.string("--config", "sam2.1_hiera_t");
    let size: usize = args.parse("--size", 64)?;
    let correct_every: usize = args.parse("--correct-every", 0)?;
    let frames: usize = args.parse("--frames", 10_000)?;
    let objects: usize = args.parse("--objects", 2)?;
    let mut config = Sam2Config::preset(&preset)?;
    config.apply_build_overrides(BuildMode::Video);
    config.image_size = size;
    let model = build_model(
        &config,
        WeightFile::random(&config, 0)?,
        DType::F32,
        &Device::Cpu,
    )?;
    let mut options = TrackerOptions::for_config(&config);
    options.frame_resize = FrameResize::Bilinear;
    let max_cond = options.max_conditioning_memories;
    let mut tracker = Tracker::new(model, options);
    let corrections = match correct_every {
        0 => "no corrections".to_owned(),
        n => format!("a correction every {n} frames"),
    };
    println!(
        "sam2refiner memory: {preset} at {size}x{size}, random weights, {objects} objects, 160x120 frames, \
         a click on frame 0, {corrections}, conditioning memories capped at {max_cond}"
    );
    let start = Instant::now();
    let mut last = (Instant::now(), 0usize);
    for t in 0..frames {
        let (image, centres) = frame(t, objects);
        tracker.push_frame(t as u64, &image)?;
        if t == 0 || (correct_every > 0 && t % correct_every == 0) {
            for (o, c) in centres.iter().enumerate() {
                tracker.add_prompt(&Prompt {
                    frame: t as u64,
                    object: o as u32 + 1,
                    points: vec![*c],
                    labels: vec![1],
                    bbox: None,
                    mask: None,
                })?;
            }
        }
        let done = t + 1;
        if [10, 100, 1000, 2000, 5000, 10_000, 20_000, 50_000, 100_000].contains(&done)
            || done == frames
        {
            let fps = (done - last.1) as f64 / last.0.elapsed().as_secs_f64();
            println!(
                "after {done:>6} frames: resident {:>7.1} MiB, tracker holds {:>6.2} MiB, {fps:.1} frames/s",
                rss_mib(),
                tracker.held_bytes() as f64 / (1 << 20) as f64
            );
            last = (Instant::now(), done);
        }
    }
    println!("total {:.1} s", start.elapsed().as_secs_f64());
    Ok(())
}
