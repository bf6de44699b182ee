//! `sam2refiner`: the command-line face of the engine.
//!
//! ```text
//! sam2refiner image   [--config CONFIG --weights WEIGHTS] --image IMAGE.png --prompts PROMPTS.json --out OUT.safetensors
//! sam2refiner video   [--config CONFIG --weights WEIGHTS] --frames DIR --prompts PROMPTS.json --out OUT.safetensors
//! sam2refiner convert --weights IN.pt --out OUT.safetensors [--dtype f16] [--config CONFIG]
//! ```
//! CONFIG is an official Hydra YAML or a preset name (`sam2.1_hiera_t`, ...); WEIGHTS an
//! official `.pt` checkpoint or a `.safetensors` file with the same keys. Without them, the
//! built-in nano model (`sam2.1_nano`) runs. Errors are one line.

mod image_cmd;
mod model_args;
mod video_cmd;

use std::path::PathBuf;

use anyhow::{Context, Result};
use candle_core::DType;
use clap::{Parser, Subcommand};
use gstsam2refiner::model::{Sam2Config, WeightFile, weights::build_model};

#[derive(Parser)]
#[command(
    name = "sam2refiner",
    version,
    about = "SAM 2 segmentation in pure Rust (candle)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Segment objects of one image from clicks and boxes (the prompts of frame 0).
    Image(image_cmd::ImageArgs),
    /// Track objects through a folder of PNG frames from clicks and boxes on any frames.
    Video(video_cmd::VideoArgs),
    /// Rewrite a checkpoint as safetensors (same keys), optionally in half precision.
    Convert(ConvertArgs),
}

#[derive(clap::Args)]
struct ConvertArgs {
    /// An official `.pt` checkpoint or a `.safetensors` file.
    #[arg(long)]
    weights: PathBuf,
    /// The `.safetensors` file to write.
    #[arg(long)]
    out: PathBuf,
    /// Precision of the floating-point tensors written: f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Check the weights against this config (YAML path or preset) before writing.
    #[arg(long)]
    config: Option<String>,
}

pub fn parse_dtype(name: &str) -> Result<DType> {
    match name {
        "f32" => Ok(DType::F32),
        "f16" => Ok(DType::F16),
        "bf16" => Ok(DType::BF16),
        other => anyhow::bail!("unknown dtype {other:?} (f32, f16, bf16)"),
    }
}

fn convert(args: &ConvertArgs) -> Result<()> {
    let dtype = parse_dtype(&args.dtype)?;
    let weights = WeightFile::load(&args.weights)?;
    if let Some(config) = &args.config {
        let config = Sam2Config::load(config)?;
        let check = WeightFile {
            path: weights.path.clone(),
            tensors: weights.tensors.clone(),
        };
        build_model(&config, check, DType::F32, &candle_core::Device::Cpu)?;
    }
    weights
        .save_safetensors(&args.out, dtype)
        .with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!(
        "wrote {} tensors to {} ({dtype:?})",
        weights.tensors.len(),
        args.out.display()
    );
    Ok(())
}

fn main() {
    // Before any other thread exists (it sets an environment variable).
    gstsam2refiner::device::keep_candle_pool_off_the_cores();
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Image(args) => image_cmd::run(args),
        Command::Video(args) => video_cmd::run(args),
        Command::Convert(args) => convert(args),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
