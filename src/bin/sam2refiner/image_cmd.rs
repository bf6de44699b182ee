//! `sam2refiner image`: the official `SAM2ImagePredictor` semantics on one image.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use candle_core::{DType, Tensor};
use gstsam2refiner::device::{check_dtype, select_device};
use gstsam2refiner::image::RgbImage;
use gstsam2refiner::model::{BuildMode, ImagePredictor, ImagePrompt, Sam2Config, load_model};
use gstsam2refiner::prompt::{read_prompt_file, validate_all};

#[derive(clap::Args)]
pub struct ImageArgs {
    /// Official Hydra YAML, or a preset name (sam2.1_hiera_t, sam2.1_hiera_s, ...).
    #[arg(long)]
    config: String,
    /// Official `.pt` checkpoint or `.safetensors` with the same keys.
    #[arg(long)]
    weights: PathBuf,
    /// The image (PNG).
    #[arg(long)]
    image: PathBuf,
    /// Prompt file: {"prompts": [{"frame", "object", "points", "labels", "box"}]}, pixels.
    #[arg(long)]
    prompts: PathBuf,
    /// Output safetensors: `image/obj{ID}`, f32 [H, W] mask logits at the image's size.
    #[arg(long)]
    out: PathBuf,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Compute precision: f32 (the parity reference), f16 or bf16.
    #[arg(long, default_value = "f32")]
    dtype: String,
}

pub fn run(args: &ImageArgs) -> Result<()> {
    let device = select_device(&args.device)?;
    let dtype: DType = crate::parse_dtype(&args.dtype)?;
    check_dtype(&device, dtype)?;
    let mut config = Sam2Config::load(&args.config)?;
    config.apply_build_overrides(BuildMode::Image);
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
    let model = load_model(&config, &args.weights, dtype, &device)?;
    let mut predictor = ImagePredictor::new(&model);
    predictor.set_image(&image.to_tensor(&device)?)?;
    let mut out = HashMap::new();
    for (object, p) in by_object {
        let prompt = ImagePrompt {
            points: p.points.clone(),
            labels: p.labels.clone(),
            bbox: p.bbox,
            mask_input: None,
        };
        // One click and no box is ambiguous: three candidates, keep the best by predicted IoU.
        let multimask = p.points.len() == 1 && p.bbox.is_none();
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
