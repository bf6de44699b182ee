//! The engine as a library: cut an object out of an image with one click.
//!
//! ```text
//! cargo run --release --example segment_image -- CONFIG WEIGHTS IMAGE.png X Y OUT.png
//! cargo run --release --example segment_image -- sam2.1_hiera_t sam2.1_hiera_tiny.pt photo.png 320 240 cutout.png
//! ```
//! Writes the image with everything but the clicked object blacked out, and prints the
//! predicted IoU of each of the three candidate masks.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use candle_core::DType;
use gstsam2refiner::device::select_device;
use gstsam2refiner::image::RgbImage;
use gstsam2refiner::model::{BuildMode, ImagePredictor, ImagePrompt, Sam2Config, load_model};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [config, weights, image, x, y, out] = args.as_slice() else {
        bail!("usage: segment_image CONFIG WEIGHTS IMAGE.png X Y OUT.png");
    };
    let (x, y): (f32, f32) = (x.parse().context("X")?, y.parse().context("Y")?);

    // The official config (a preset or a YAML), with what `build_sam2` adds to it.
    let mut config = Sam2Config::load(config)?;
    config.apply_build_overrides(BuildMode::Image);
    let device = select_device("auto")?;
    let model = load_model(&config, &PathBuf::from(weights), DType::F32, &device)?;

    let mut image = RgbImage::read_png(&PathBuf::from(image))?;
    let mut predictor = ImagePredictor::new(&model);
    predictor.set_image(&image.to_tensor(&device)?)?;

    // One click is ambiguous: ask for three candidates and keep the best by predicted IoU.
    let prompt = ImagePrompt {
        points: vec![[x, y]],
        labels: vec![1],
        ..Default::default()
    };
    let prediction = predictor.predict(&prompt, true)?;
    let ious: Vec<f32> = prediction.iou.to_vec1()?;
    println!("predicted IoU of the candidates: {ious:?}");
    let mask: Vec<Vec<f32>> = prediction.masks.get(prediction.best_index()?)?.to_vec2()?;

    // Logits above 0 are the object.
    for (row, logits) in mask.iter().enumerate() {
        for (col, &logit) in logits.iter().enumerate() {
            if logit <= 0.0 {
                let i = (row * image.width + col) * 3;
                image.pixels[i..i + 3].fill(0);
            }
        }
    }
    image.write_png(&PathBuf::from(out))?;
    println!("wrote {out}");
    Ok(())
}
