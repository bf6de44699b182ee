//! `sam2refiner video`: the streaming tracker over a folder of PNG frames, with the official
//! video predictor's semantics read causally (see `gstsam2refiner::tracker`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use gstsam2refiner::image::RgbImage;
use gstsam2refiner::model::BuildMode;
use gstsam2refiner::model::refiner::RefineMode;
use gstsam2refiner::prompt::{read_prompt_file, validate_all};
use gstsam2refiner::tracker::{EncodedFrame, Tracker, TrackerOptions};

use crate::model_args::{LoadedModel, ModelArgs};

#[derive(clap::Args)]
pub struct VideoArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// A folder of PNG frames, read in name order as frames 0..N-1 (all of one size).
    #[arg(long)]
    frames: PathBuf,
    /// Prompt file: {"prompts": [{"frame", "object", "points", "labels", "box"}]}, pixels.
    #[arg(long)]
    prompts: PathBuf,
    /// Output safetensors: `frame{T}/obj{ID}`, f32 [H, W] mask logits at the frames' size, for
    /// every frame from the object's first prompt on.
    #[arg(long)]
    out: PathBuf,
    /// How memories are stored: bf16 (as the official predictor: half the memory) or f32.
    #[arg(long, default_value = "bf16")]
    memory_dtype: String,
}

fn list_frames(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut frames: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("png")))
        .collect();
    frames.sort();
    if frames.is_empty() {
        bail!("{}: no .png frames", dir.display());
    }
    Ok(frames)
}

pub fn run(args: &VideoArgs) -> Result<()> {
    let frames = list_frames(&args.frames)?;
    let first = RgbImage::read_png(&frames[0])?;
    let prompts = read_prompt_file(&args.prompts)?;
    validate_all(&prompts, first.width, first.height)
        .with_context(|| args.prompts.display().to_string())?;
    if let Some((i, p)) = prompts
        .iter()
        .enumerate()
        .find(|(_, p)| p.frame as usize >= frames.len())
    {
        bail!(
            "{}: prompt {i} (object {}, frame {}): there are only {} frames (0..{})",
            args.prompts.display(),
            p.object,
            p.frame,
            frames.len(),
            frames.len() - 1
        );
    }
    let LoadedModel {
        config,
        model,
        refiner,
        ..
    } = args.model.load(BuildMode::Video)?;
    let mut options = TrackerOptions::for_config(&config);
    options.memory_dtype = crate::parse_dtype(&args.memory_dtype)?;
    options.refine_mode = args.model.refine_mode.unwrap_or(RefineMode::Roi);
    let mut tracker = Tracker::new(model, options);
    tracker.set_refiner(refiner);
    let mut out = HashMap::new();
    let encoder = tracker.encoder();
    let encode = |path: &PathBuf, image: &RgbImage| -> Result<EncodedFrame> {
        encoder
            .encode(image)
            .with_context(|| path.display().to_string())
    };
    // The first frame, read above for the prompts' check, is not read again.
    let mut next = Some(encode(&frames[0], &first)?);
    for (t, path) in frames.iter().enumerate() {
        let encoded = next.take().expect("each frame is encoded before its turn");
        // The next frame goes through the image encoder while this one is tracked.
        let (pushed, encoded_next) = rayon::join(
            || tracker.push_encoded(t as u64, encoded),
            || {
                frames
                    .get(t + 1)
                    .map(|path| encode(path, &RgbImage::read_png(path)?))
                    .transpose()
            },
        );
        pushed.with_context(|| path.display().to_string())?;
        next = encoded_next?;
        // Prompts on this frame, in file order: a first prompt, or a correction of the frame
        // just tracked.
        for p in prompts.iter().filter(|p| p.frame == t as u64) {
            tracker.add_prompt(p)?;
        }
        let output = tracker.output(t as u64)?;
        for (object, logits) in tracker.frame_logits(&output)? {
            out.insert(
                format!("frame{t}/obj{object}"),
                logits.to_device(&candle_core::Device::Cpu)?,
            );
        }
    }
    candle_core::safetensors::save(&out, &args.out)
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", args.out.display()))?;
    Ok(())
}
