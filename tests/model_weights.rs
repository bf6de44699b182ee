//! Weights are loaded strictly and bad files are errors that say what is wrong, never panics.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use common::*;
use gstsam2refiner::Error;
use gstsam2refiner::model::weights::build_model;
use gstsam2refiner::model::{WeightFile, load_model};

fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("model_weights");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn weights_error(case: &str, tensors: HashMap<String, Tensor>) -> String {
    let file = WeightFile {
        path: PathBuf::from("test.safetensors"),
        tensors,
    };
    match build_model(&config(case), file, DType::F32, &Device::Cpu) {
        Ok(_) => panic!("the model built"),
        Err(e @ Error::Weights { .. }) => e.to_string(),
        Err(other) => panic!("not a weights error: {other}"),
    }
}

fn tensors(case: &str) -> HashMap<String, Tensor> {
    WeightFile::load(&weights_path(case)).unwrap().tensors
}

#[test]
fn pt_and_safetensors_hold_the_same_weights() {
    // t256 ships as an official-style `.pt` ({"model": state_dict}).
    let pt = WeightFile::load(&fixture_dir("t256").join("weights.pt")).unwrap();
    let out = scratch("t256.safetensors");
    pt.save_safetensors(&out, DType::F32).unwrap();
    let st = WeightFile::load(&out).unwrap();
    assert_eq!(pt.tensors.len(), st.tensors.len());
    for (k, t) in &pt.tensors {
        let diff = (t - &st.tensors[k])
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(diff, 0.0, "{k}");
    }
    load_model(&config("t256"), &out, DType::F32, &Device::Cpu).unwrap();
}

#[test]
fn half_precision_files_load() {
    let out = scratch("s192-f16.safetensors");
    WeightFile::load(&weights_path("s192"))
        .unwrap()
        .save_safetensors(&out, DType::F16)
        .unwrap();
    let file = WeightFile::load(&out).unwrap();
    assert!(file.tensors.values().all(|t| t.dtype() == DType::F16));
    load_model(&config("s192"), &out, DType::F32, &Device::Cpu).unwrap();
}

#[test]
fn a_missing_key_is_named() {
    let mut t = tensors("s192");
    t.remove("memory_encoder.out_proj.weight").unwrap();
    let e = weights_error("s192", t);
    assert!(
        e.contains("missing key memory_encoder.out_proj.weight"),
        "{e}"
    );
}

#[test]
fn an_unexpected_key_is_named() {
    let mut t = tensors("s192");
    t.insert(
        "refiner.gate".into(),
        Tensor::zeros(1, DType::F32, &Device::Cpu).unwrap(),
    );
    let e = weights_error("s192", t);
    assert!(e.contains("unexpected key refiner.gate"), "{e}");
}

#[test]
fn a_mis_shaped_tensor_is_named_with_both_shapes() {
    let mut t = tensors("s192");
    t.insert(
        "no_mem_embed".into(),
        Tensor::zeros((1, 1, 33), DType::F32, &Device::Cpu).unwrap(),
    );
    let e = weights_error("s192", t);
    assert!(
        e.contains("no_mem_embed") && e.contains("[1, 1, 33]") && e.contains("[1, 1, 32]"),
        "{e}"
    );
}

#[test]
fn weights_of_another_config_are_refused() {
    let e = load_model(
        &config("s192"),
        &weights_path("t256"),
        DType::F32,
        &Device::Cpu,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("weights.pt") && e.contains("image_encoder"),
        "{e}"
    );
}

fn corrupt_copies(src: &Path, ext: &str) -> Vec<(String, PathBuf)> {
    let bytes = std::fs::read(src).unwrap();
    let mut out = Vec::new();
    for (what, data) in [
        ("empty", Vec::new()),
        ("truncated to 10%", bytes[..bytes.len() / 10].to_vec()),
        ("truncated by one byte", bytes[..bytes.len() - 1].to_vec()),
        (
            "garbage",
            (0..4096u32)
                .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
                .collect(),
        ),
        ("header bytes flipped", {
            let mut b = bytes.clone();
            for x in b.iter_mut().take(64) {
                *x ^= 0x5a;
            }
            b
        }),
    ] {
        let path = scratch(&format!(
            "{}-{}.{ext}",
            src.file_stem().unwrap().to_string_lossy(),
            what.replace(' ', "_")
        ));
        std::fs::write(&path, data).unwrap();
        out.push((what.to_owned(), path));
    }
    out
}

#[test]
fn corrupt_files_are_errors_not_panics() {
    for (src, ext) in [
        (fixture_dir("t256").join("weights.pt"), "pt"),
        (
            fixture_dir("s192").join("weights.safetensors"),
            "safetensors",
        ),
    ] {
        for (what, path) in corrupt_copies(&src, ext) {
            let result = WeightFile::load(&path).and_then(|w| {
                build_model(
                    &config(if ext == "pt" { "t256" } else { "s192" }),
                    w,
                    DType::F32,
                    &Device::Cpu,
                )
            });
            match result {
                Err(e @ Error::Weights { .. }) => {
                    let msg = e.to_string();
                    assert!(
                        msg.contains(&*path.file_name().unwrap().to_string_lossy())
                            && !msg.contains('\n'),
                        "{what}: {msg}"
                    );
                }
                Err(other) => panic!("{ext} {what}: unexpected error kind: {other}"),
                Ok(_) => panic!("{ext} {what}: a corrupt file loaded"),
            }
        }
    }
}

#[test]
fn missing_file_and_unknown_format() {
    let e = WeightFile::load(Path::new("/nonexistent/sam2.pt"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("/nonexistent/sam2.pt"), "{e}");
    let odd = scratch("weights.onnx");
    std::fs::write(&odd, b"onnx").unwrap();
    let e = WeightFile::load(&odd).unwrap_err().to_string();
    assert!(e.contains("unknown weights format"), "{e}");
}
