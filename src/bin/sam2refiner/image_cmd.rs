//! `sam2refiner image`: the official `SAM2ImagePredictor` semantics on one image.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use candle_core::{DType, Tensor};
use gstsam2refiner::image::RgbImage;
use gstsam2refiner::model::refiner::RefineMode;
use gstsam2refiner::model::{BuildMode, ImagePredictor, ImagePrompt};
use gstsam2refiner::prompt::{read_prompt_file, validate_all};

use crate::model_args::{LoadedModel, ModelArgs};

#[derive(clap::Args)]
pub struct ImageArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The image (PNG).
    #[arg(long)]
    image: PathBuf,
    /// Prompt file: {"prompts": [{"frame", "object", "points", "labels", "box"}]}, pixels.
    #[arg(long)]
    prompts: PathBuf,
    /// Output safetensors: `image/obj{ID}`, f32 [H, W] mask logits at the image's size.
    #[arg(long)]
    out: PathBuf,
}

pub fn run(args: &ImageArgs) -> Result<()> {
    let image = RgbImage::read_png(&args.image)?;
    let prompts = read_prompt_file(&args.prompts)?;
    let frame0: Vec<_> = prompts.iter().filter(|p| p.frame == 0).cloned().collect();
    if frame0.is_empty() {
        bail!("{}: no prompt on frame 0", args.prompts.display());
    }
    validate_all(&frame0, image.width, image.height)
        .with_context(|| args.prompts.display().to_string())?;
    let mut by_object = BTreeMap::new();
    for p in &frame0 {
        if by_object.insert(p.object, p).is_some() {
            bail!(
                "{}: object {} has more than one prompt on frame 0",
                args.prompts.display(),
                p.object
            );
        }
    }
    let LoadedModel {
        model,
        device,
        refiner,
        ..
    } = args.model.load(BuildMode::Image)?;
    let mode = args.model.refine_mode.unwrap_or(RefineMode::Quadrants);
    let mut predictor = match &refiner {
        Some(refiner) => ImagePredictor::with_refiner(&model, refiner, mode),
        None => ImagePredictor::new(&model),
    };
    predictor.set_image(&image.to_tensor(&device)?)?;
    let mut out = HashMap::new();
    for (object, p) in by_object {
        let prompt = ImagePrompt::clicks_and_box(&p.points, &p.labels, p.bbox);
        let multimask = prompt.is_ambiguous();
        let prediction = predictor.predict(&prompt, multimask)?;
        let best = if multimask {
            prediction.best_index()?
        } else {
            0
        };
        let mask: Tensor = prediction
            .masks
            .get(best)?
            .to_dtype(DType::F32)?
            .to_device(&candle_core::Device::Cpu)?;
        out.insert(format!("image/obj{object}"), mask);
    }
    candle_core::safetensors::save(&out, &args.out)
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", args.out.display()))?;
    Ok(())
}
