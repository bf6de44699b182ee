//! Shared helpers of the parity tests: fixture loading and the comparison contract.
//!
//! The contract (issue #2): mask logits match the official implementation with a relative L2
//! error of at most 1e-4 in f32, and at least 99.9% of pixels on the same side of 0.
#![allow(dead_code)]

pub mod element;
pub mod track;
pub mod video;

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use gstsam2refiner::image::RgbImage;
use gstsam2refiner::model::{ImagePredictor, Sam2Base, Sam2Config, load_model};
use gstsam2refiner::prompt::{Prompt, read_prompt_file};

pub const MAX_REL_L2: f64 = 1e-4;
pub const MIN_SIGN_AGREEMENT: f64 = 0.999;
/// The parity cases recorded by `tests/reference/make_fixtures.py`.
pub const CASES: &[&str] = &["t256", "s192"];

pub fn fixture_dir(case: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(case)
}

/// The weights file of a case (`.pt` for some, `.safetensors` for others).
pub fn weights_path(case: &str) -> PathBuf {
    let dir = fixture_dir(case);
    ["weights.pt", "weights.safetensors"]
        .iter()
        .map(|f| dir.join(f))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("no weights in {}", dir.display()))
}

pub fn config(case: &str) -> Sam2Config {
    let path = fixture_dir(case).join("config.yaml");
    Sam2Config::load(path.to_str().unwrap()).unwrap()
}

/// The device the parity tests run on: the CPU, or the GPU with `SAM2_TEST_DEVICE=cuda`.
pub fn device() -> Device {
    match std::env::var("SAM2_TEST_DEVICE").as_deref() {
        Ok(name) => gstsam2refiner::device::select_device(name).unwrap(),
        Err(_) => Device::Cpu,
    }
}

pub fn model(case: &str) -> Sam2Base {
    load_model(&config(case), &weights_path(case), DType::F32, &device()).unwrap()
}

/// The case's `image.png`.
pub fn image(case: &str) -> RgbImage {
    RgbImage::read_png(&fixture_dir(case).join("image.png")).unwrap()
}

/// The case's `prompts.json`.
pub fn prompts(case: &str) -> Vec<Prompt> {
    read_prompt_file(&fixture_dir(case).join("prompts.json")).unwrap()
}

/// An image predictor with the case's `image.png` set.
pub fn predictor_on_image<'a>(model: &'a Sam2Base, case: &str) -> ImagePredictor<'a> {
    let mut predictor = ImagePredictor::new(model);
    predictor
        .set_image(&image(case).to_tensor(model.device()).unwrap())
        .unwrap();
    predictor
}

pub struct Expected(pub HashMap<String, Tensor>);

impl Expected {
    pub fn load(case: &str) -> Self {
        let path = fixture_dir(case).join("expected.safetensors");
        Self(candle_core::safetensors::load(&path, &Device::Cpu).unwrap())
    }

    #[track_caller]
    pub fn get(&self, key: &str) -> Tensor {
        self.0
            .get(key)
            .unwrap_or_else(|| panic!("fixture has no tensor {key}"))
            .clone()
    }

    pub fn on(&self, key: &str, device: &Device) -> Tensor {
        self.get(key).to_device(device).unwrap()
    }

    pub fn has(&self, key: &str) -> bool {
        self.0.contains_key(key)
    }
}

fn host_f64(t: &Tensor) -> Vec<f64> {
    t.to_device(&Device::Cpu)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// ‖ours − theirs‖ / ‖theirs‖.
pub fn rel_l2(ours: &Tensor, theirs: &Tensor) -> f64 {
    assert_eq!(ours.dims(), theirs.dims(), "shapes differ");
    let (a, b) = (host_f64(ours), host_f64(theirs));
    let num: f64 = a.iter().zip(&b).map(|(x, y)| (x - y) * (x - y)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    (num / den.max(f64::MIN_POSITIVE)).sqrt()
}

/// The share of elements on the same side of 0 (`> 0` agrees).
pub fn sign_agreement(ours: &Tensor, theirs: &Tensor) -> f64 {
    let (a, b) = (host_f64(ours), host_f64(theirs));
    let same = a
        .iter()
        .zip(&b)
        .filter(|(x, y)| (**x > 0.0) == (**y > 0.0))
        .count();
    same as f64 / a.len().max(1) as f64
}

/// Whether `ours` meets the logits contract against `theirs` (for fixture-power tests).
pub fn logits_match(ours: &Tensor, theirs: &Tensor) -> bool {
    ours.dims() == theirs.dims()
        && rel_l2(ours, theirs) <= MAX_REL_L2
        && sign_agreement(ours, theirs) >= MIN_SIGN_AGREEMENT
}

/// With `SAM2_PARITY_REPORT=1`, every comparison prints its figures (run with `--nocapture`).
fn report(what: &str, err: f64, agree: Option<f64>) {
    if std::env::var_os("SAM2_PARITY_REPORT").is_some() {
        match agree {
            Some(a) => eprintln!(
                "parity {what}: rel L2 {err:.2e}, same sign {:.4}%",
                a * 100.0
            ),
            None => eprintln!("parity {what}: rel L2 {err:.2e}"),
        }
    }
}

/// Mask logits: the parity contract.
#[track_caller]
pub fn assert_logits_match(what: &str, ours: &Tensor, theirs: &Tensor) {
    assert_eq!(ours.dims(), theirs.dims(), "{what}: shapes differ");
    let err = rel_l2(ours, theirs);
    let agree = sign_agreement(ours, theirs);
    report(what, err, Some(agree));
    assert!(
        err <= MAX_REL_L2 && agree >= MIN_SIGN_AGREEMENT,
        "{what}: relative L2 {err:.3e} (max {MAX_REL_L2:.0e}), sign agreement {:.4}% (min {:.1}%)",
        agree * 100.0,
        MIN_SIGN_AGREEMENT * 100.0
    );
}

/// Features and other intermediate tensors: relative L2 within `tol`.
#[track_caller]
pub fn assert_close(what: &str, ours: &Tensor, theirs: &Tensor, tol: f64) {
    assert_eq!(ours.dims(), theirs.dims(), "{what}: shapes differ");
    let err = rel_l2(ours, theirs);
    report(what, err, None);
    assert!(err <= tol, "{what}: relative L2 {err:.3e} > {tol:.0e}");
}

/// Reads `frames/{t:04}.png` of a case as a normalised model input [1, 3, S, S].
pub fn frame_input(case: &str, t: usize, device: &Device) -> Tensor {
    let path = fixture_dir(case).join(format!("frames/{t:04}.png"));
    let image = gstsam2refiner::image::RgbImage::read_png(&path).unwrap();
    let rgb = image.to_tensor(device).unwrap();
    let x = (rgb
        .permute((2, 0, 1))
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        / 255.0)
        .unwrap();
    gstsam2refiner::model::transforms::normalize(&x)
        .unwrap()
        .unsqueeze(0)
        .unwrap()
}
