//! Time per stage of the SAM 2 engine, on random weights of an official config.
//!
//! ```text
//! cargo bench --bench stages -- [--config sam2.1_hiera_t] [--size 1024] [--reps 5] [--device cpu] [--objects 1,3] [--spans]
//! ```
//! Prints, per stage, the minimum and the median over `--reps` runs after one warm-up, in ms,
//! and the process's peak resident memory; with `--spans`, under each stage the time per run inside each
//! of the engine's tracing spans (inclusive). Compare with the official implementation on the same
//! machine and config: `../shared/tools/official_speed.py` (`enc`, `image`, `track`, `parts`).

mod common;

use std::time::Instant;

use common::{peak_rss_mib, sync, time};

use candle_core::{DType, Tensor};
use gstsam2refiner::device::{describe, select_device};
use gstsam2refiner::model::transforms::{image_to_input, upsample_logits};
use gstsam2refiner::model::weights::build_model;
use gstsam2refiner::model::{
    BuildMode, ImagePredictor, ImagePrompt, MemoryRef, ObjectMemory, PointInputs, PointerRef,
    Sam2Config, TrackStepInput, WeightFile,
};

struct Options {
    config: String,
    size: usize,
    reps: usize,
    device: String,
    objects: Vec<usize>,
    spans: bool,
}

fn options() -> Options {
    let mut o = Options {
        config: "sam2.1_hiera_t".into(),
        size: 1024,
        reps: 5,
        device: "cpu".into(),
        objects: vec![1, 3],
        spans: false,
    };
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .unwrap_or_else(|| panic!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--config" => o.config = value(),
            "--size" => o.size = value().parse().expect("--size N"),
            "--reps" => o.reps = value().parse().expect("--reps N"),
            "--device" => o.device = value(),
            "--spans" => o.spans = true,
            "--objects" => {
                o.objects = value()
                    .split(',')
                    .map(|n| n.parse().expect("--objects 1,3"))
                    .collect()
            }
            other => panic!("unknown option {other}"),
        }
    }
    o
}

fn main() -> anyhow::Result<()> {
    let o = options();
    if o.spans {
        // Before the model is built: its modules make their spans then.
        common::spans::SpanProfile::install();
    }
    let device = select_device(&o.device)?;
    let mut config = Sam2Config::preset(&o.config)?;
    config.apply_build_overrides(BuildMode::Video);
    config.image_size = o.size;
    let model = build_model(
        &config,
        WeightFile::random(&config, 0)?,
        DType::F32,
        &device,
    )?;
    let s = config.image_size;
    let e = config.image_embedding_size();
    println!(
        "sam2refiner stages: {} at {s}x{s}, f32, {}, {} reps after 1 warm-up",
        o.config,
        describe(&device),
        o.reps
    );

    // The machine's matrix-product throughput, to read the figures below against.
    let a = Tensor::ones((4096, 256), DType::F32, &device)?;
    let b = Tensor::ones((256, 4096), DType::F32, &device)?;
    let gemm_ms = {
        let _ = a.matmul(&b)?;
        sync(&device);
        let start = Instant::now();
        for _ in 0..5 {
            let _ = a.matmul(&b)?;
        }
        sync(&device);
        start.elapsed().as_secs_f64() * 1e3 / 5.0
    };
    println!(
        "calibration: matmul 4096x256 @ 256x4096 {gemm_ms:.1} ms = {:.0} GFLOP/s",
        2.0 * 4096.0 * 256.0 * 4096.0 / gemm_ms / 1e6
    );

    // A 1080p frame, as the element would get it.
    let (fw, fh) = (1920usize, 1080usize);
    let pixels: Vec<u8> = (0..fw * fh * 3).map(|i| (i * 7 % 251) as u8).collect();
    let rgb = Tensor::from_vec(pixels, (fh, fw, 3), &device)?;
    let input = time(
        "preprocess 1920x1080 -> input (resize, normalise)",
        o.reps,
        &device,
        || image_to_input(&rgb, s, DType::F32).unwrap(),
    );
    let trunk = time("image encoder: trunk (Hiera)", o.reps, &device, || {
        model.image_encoder.trunk.forward(&input).unwrap()
    });
    time("image encoder: neck (FPN)", o.reps, &device, || {
        model.image_encoder.neck.forward(&trunk).unwrap()
    });
    let features = time(
        "image encoder: total (forward_image)",
        o.reps,
        &device,
        || model.forward_image(&input).unwrap(),
    );

    let mut predictor = ImagePredictor::new(&model);
    predictor.set_input(&input, (fh, fw))?;
    let click = ImagePrompt {
        points: vec![[fw as f32 / 2.0, fh as f32 / 2.0]],
        labels: vec![1],
        ..Default::default()
    };
    time(
        "image path: one click -> 3 masks at 1920x1080",
        o.reps,
        &device,
        || predictor.predict(&click, true).unwrap(),
    );
    let low_res = Tensor::zeros((1, 1, 4 * e, 4 * e), DType::F32, &device)?;
    time(
        "  of which: logits 4h -> 1920x1080 (one mask)",
        o.reps,
        &device,
        || upsample_logits(&low_res, (fh, fw)).unwrap(),
    );

    for &b in &o.objects {
        // A full memory bank: one conditioning memory, num_maskmem - 1 recent ones, and the
        // maximum of pointers, as on every frame of a long video.
        let point = PointInputs {
            coords: Tensor::from_vec(vec![s as f32 / 2.0; 2 * b], (b, 1, 2), &device)?,
            labels: Tensor::ones((b, 1), DType::F32, &device)?,
        };
        let first = model.track_step(&TrackStepInput {
            features: &features,
            is_init_cond_frame: true,
            objects: &[],
            max_pointer_distance: config.max_obj_ptrs_in_encoder - 1,
            points: Some(&point),
            mask_input: None,
            prev_mask_logits: None,
            run_mem_encoder: true,
            batch: b,
            refine: None,
        })?;
        let (mem, pos) = first.memory.as_ref().expect("memory");
        let (mem, ptr) = (mem.narrow(0, 0, 1)?, first.heads.obj_ptr.narrow(0, 0, 1)?);
        let object = ObjectMemory {
            memories: (0..config.num_maskmem)
                .map(|t_pos| MemoryRef {
                    features: &mem,
                    pos_enc: pos,
                    t_pos,
                })
                .collect(),
            pointers: (0..config.max_obj_ptrs_in_encoder)
                .map(|d| PointerRef {
                    pointer: &ptr,
                    distance: d as i64,
                })
                .collect(),
        };
        let objects = vec![object; b];
        let step = TrackStepInput {
            features: &features,
            is_init_cond_frame: false,
            objects: &objects,
            max_pointer_distance: config.max_obj_ptrs_in_encoder - 1,
            points: None,
            mask_input: None,
            prev_mask_logits: None,
            run_mem_encoder: true,
            batch: b,
            refine: None,
        };
        let keys = objects[0].memories.len() * e * e
            + objects[0].pointers.len() * config.hidden_dim() / config.mem_dim();
        println!("tracking, {b} object(s), full memory bank ({keys} memory tokens per object):");
        let conditioned = time("  memory attention", o.reps, &device, || {
            model.prepare_memory_conditioned_features(&step).unwrap()
        });
        let high_res = features.high_res(config.num_feature_levels());
        let broadcast = |t: &Tensor| {
            let mut dims = t.dims().to_vec();
            dims[0] = b;
            t.broadcast_as(dims).unwrap().contiguous().unwrap()
        };
        let high_res_b = high_res.map(|(a, c)| (broadcast(a), broadcast(c)));
        let heads = time(
            "  SAM heads (prompt encoder + mask decoder)",
            o.reps,
            &device,
            || {
                model
                    .forward_sam_heads(
                        &conditioned,
                        None,
                        None,
                        high_res_b.as_ref().map(|(a, c)| (a, c)),
                        true,
                        None,
                    )
                    .unwrap()
            },
        );
        time("  memory encoder", o.reps, &device, || {
            model
                .encode_new_memory(
                    &features,
                    &heads.high_res_masks,
                    &heads.object_score_logits,
                    false,
                )
                .unwrap()
        });
        time(
            "  track step total (excl. image encoder)",
            o.reps,
            &device,
            || model.track_step(&step).unwrap(),
        );
        // What a stream overlaps (the element, the CLI): the next frame's encoder does not wait
        // for this frame's step, so the two share the cores (`rayon::join`) where each alone
        // leaves them idle between its small operations.
        time(
            "  pipelined: next frame's encoder beside the step",
            o.reps,
            &device,
            || {
                rayon::join(
                    || model.forward_image(&input).unwrap(),
                    || model.track_step(&step).unwrap(),
                )
            },
        );
    }
    println!("peak resident memory: {:.0} MiB", peak_rss_mib());
    Ok(())
}
