//! What the refiner costs: ms per frame of each refine mode against plain SAM 2, per stage, in
//! the image path and in tracking, on random weights (with the guided filter open: the cost of
//! trained ones).
//!
//! ```text
//! cargo bench --bench refiner -- [--config sam2.1_nano] [--frame 1280x720] [--reps 5] [--device cpu]
//! ```
//! Prints the minimum and the median over `--reps` runs after one warm-up, in ms.

mod common;

use candle_core::{DType, Tensor};
use common::{Args, time};
use gstsam2refiner::device::{describe, select_device};
use gstsam2refiner::image::RgbImage;
use gstsam2refiner::model::refiner::{BaseIdentity, RefineMode, Refiner, crops};
use gstsam2refiner::model::weights::build_model;
use gstsam2refiner::model::{BuildMode, ImagePredictor, ImagePrompt, Sam2Config, WeightFile};
use gstsam2refiner::prompt::Prompt;
use gstsam2refiner::tracker::{FrameResize, Tracker, TrackerOptions};

fn main() -> anyhow::Result<()> {
    let args = Args::from_env();
    let config_name = args.string("--config", "sam2.1_nano");
    let frame = args.string("--frame", "1280x720");
    let reps: usize = args.parse("--reps", 5)?;
    let device = select_device(&args.string("--device", "cpu"))?;
    let (fw, fh) = frame
        .split_once('x')
        .and_then(|(w, h)| Some((w.parse::<usize>().ok()?, h.parse::<usize>().ok()?)))
        .ok_or_else(|| anyhow::anyhow!("--frame WxH"))?;

    let mut config = Sam2Config::preset(&config_name)?;
    config.apply_build_overrides(BuildMode::Video);
    let weights = WeightFile::random(&config, 0)?;
    let base = BaseIdentity {
        config: config_name.clone(),
        weights_hash: String::new(),
    };
    let model = build_model(&config, weights, DType::F32, &device)?;
    let refiner = Refiner::for_benchmarks(base.clone(), true, DType::F32, &device)?;
    let s = config.image_size;
    println!(
        "sam2refiner refiner: {config_name} at {s}x{s}, {fw}x{fh} frames, f32, {}, {reps} reps after 1 warm-up",
        describe(&device)
    );
    let pixels: Vec<u8> = (0..fw * fh * 3).map(|i| (i * 7 % 251) as u8).collect();
    let image = RgbImage {
        width: fw,
        height: fh,
        pixels,
    };
    let rgb = image.to_tensor(&device)?;

    println!("-- stages");
    time(
        "local features: 4 quadrants (encoder, batch 4)",
        reps,
        &device,
        || crops::local_features(&model, &rgb, &crops::quadrant_origins(s)).unwrap(),
    );
    let roi = time(
        "local features: 1 ROI window (encoder, batch 1)",
        reps,
        &device,
        || crops::window_features(&model, &rgb, &[(s / 4 / 16 * 16, s / 4 / 16 * 16)]).unwrap(),
    );
    let input = gstsam2refiner::model::transforms::image_to_input(&rgb, s, DType::F32)?;
    let features = model.forward_image(&input)?;
    let (f0, f1) = features.high_res(3).expect("high-res features");
    let global = [f0.clone(), f1.clone(), features.vision_features().clone()];
    let enhanced = time(
        "localization augment (3 levels, ROI)",
        reps,
        &device,
        || {
            refiner
                .localization_augment
                .forward(&global, &roi[0])
                .unwrap()
        },
    );
    let low = Tensor::zeros((1, 1, s / 4, s / 4), DType::F32, &device)?;
    let upscaled = Tensor::zeros((1, 32, s / 4, s / 4), DType::F32, &device)?;
    let (local_s2, coverage) = crops::stride2_local(&roi[0], s)?;
    let refined = time(
        "mask refinement (one mask, to SxS, with the guided filter's coefficients)",
        reps,
        &device,
        || {
            refiner
                .mask_refinement
                .forward(&low, &upscaled, &input, Some((&local_s2, &coverage)), &[])
                .unwrap()
        },
    );
    let frame01 = gstsam2refiner::model::transforms::rgb_to_unit(&rgb)?;
    time(
        "refined mask to the frame (guided filter applied with the frame)",
        reps,
        &device,
        || refined.at_frame(&frame01).unwrap(),
    );
    drop(enhanced);

    // The refiners measured: every module live, and the guided filter alone (no crops read).
    let kinds = [("every module", true), ("guided filter only", false)];
    let cases = [(RefineMode::Off, true)]
        .into_iter()
        .chain(
            kinds
                .iter()
                .flat_map(|&(_, every)| [(RefineMode::Roi, every), (RefineMode::Quadrants, every)]),
        )
        .collect::<Vec<_>>();
    let label = |mode: RefineMode, every: bool| match mode {
        RefineMode::Off => "refine off".to_string(),
        _ => format!(
            "refine {mode}, {}",
            if every { kinds[0].0 } else { kinds[1].0 }
        ),
    };
    let refiner_for =
        |every: bool| Refiner::for_benchmarks(base.clone(), every, DType::F32, &device);

    println!("-- image path: set_image + one box prompt");
    let prompt = ImagePrompt::clicks_and_box(
        &[],
        &[],
        Some([
            fw as f32 * 0.3,
            fh as f32 * 0.3,
            fw as f32 * 0.6,
            fh as f32 * 0.7,
        ]),
    );
    for &(mode, every) in &cases {
        let refiner = refiner_for(every)?;
        time(
            &format!("image, {}", label(mode, every)),
            reps,
            &device,
            || {
                let mut p = ImagePredictor::with_refiner(&model, &refiner, mode);
                p.set_image(&rgb).unwrap();
                p.predict(&prompt, false).unwrap()
            },
        );
    }

    println!("-- image path: a correction (two clicks and the mask prompt), image already set");
    let refiner = refiner_for(false)?;
    let (center, beside) = (
        [fw as f32 * 0.5, fh as f32 * 0.5],
        [fw as f32 * 0.55, fh as f32 * 0.5],
    );
    for click_guard in [false, true] {
        let mut p = ImagePredictor::with_refiner(&model, &refiner, RefineMode::Roi);
        p.click_guard = click_guard;
        p.set_image(&rgb)?;
        let first = p.predict(&ImagePrompt::clicks_and_box(&[center], &[1], None), true)?;
        let mut correction = ImagePrompt::clicks_and_box(&[center, beside], &[1, 0], None);
        let best = first.low_res.get(first.best_index()?)?;
        correction.mask_input = Some(best.unsqueeze(0)?.unsqueeze(0)?);
        let on_off = if click_guard { "on" } else { "off" };
        time(
            &format!("correction, refine roi, guided filter only, click guard {on_off}"),
            reps,
            &device,
            || p.predict(&correction, false).unwrap(),
        );
    }

    println!("-- tracking: ms per frame, one object, matte at the frame's size");
    for &(mode, every) in &cases {
        let mut options = TrackerOptions::for_config(&config);
        options.frame_resize = FrameResize::Bilinear;
        options.refine_mode = mode;
        let mut tracker = Tracker::new(
            build_model(
                &config,
                WeightFile::random(&config, 0)?,
                DType::F32,
                &device,
            )?,
            options,
        );
        tracker.set_refiner(Some(refiner_for(every)?));
        tracker.push_frame(0, &image)?;
        tracker.add_prompt(&Prompt {
            frame: 0,
            object: 1,
            points: vec![[fw as f32 / 2.0, fh as f32 / 2.0]],
            labels: vec![1],
            bbox: None,
            mask: None,
        })?;
        let mut id = 1u64;
        time(
            &format!("track one frame, {}", label(mode, every)),
            reps,
            &device,
            || {
                let out = tracker.push_frame(id, &image).unwrap();
                id += 1;
                tracker.frame_mattes(&out, 0.0).unwrap()
            },
        );
    }
    Ok(())
}
