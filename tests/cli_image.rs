//! `sam2refiner image` as other checks call it: it reproduces the official outputs of the
//! fixtures, and bad input gets a one-line error that says what is wrong.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::Device;
use common::*;

fn sam2refiner() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sam2refiner"))
}

fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cli_image");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn run_image(
    config: &str,
    weights: &Path,
    image: &Path,
    prompts: &Path,
    out: &Path,
) -> std::process::Output {
    sam2refiner()
        .args(["image", "--device", "cpu", "--config", config])
        .arg("--weights")
        .arg(weights)
        .arg("--image")
        .arg(image)
        .arg("--prompts")
        .arg(prompts)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap()
}

/// Runs a command that must fail; returns its single line of error.
#[track_caller]
fn one_line_error(output: std::process::Output) -> String {
    assert!(!output.status.success(), "the command succeeded");
    let stderr = String::from_utf8(output.stderr).unwrap();
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one line, got:\n{stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    lines[0].to_owned()
}

#[test]
fn reproduces_the_official_outputs() {
    for case in CASES {
        let dir = fixture_dir(case);
        let out = scratch(&format!("{case}.safetensors"));
        let config = dir.join("config.yaml");
        let result = run_image(
            config.to_str().unwrap(),
            &weights_path(case),
            &dir.join("image.png"),
            &dir.join("prompts.json"),
            &out,
        );
        assert!(
            result.status.success(),
            "{}",
            String::from_utf8_lossy(&result.stderr)
        );
        let ours = candle_core::safetensors::load(&out, &Device::Cpu).unwrap();
        let expected = Expected::load(case);
        let prompts = gstsam2refiner::prompt::read_prompt_file(&dir.join("prompts.json")).unwrap();
        assert_eq!(ours.len(), prompts.len(), "{case}: one mask per object");
        for p in &prompts {
            let id = p.object;
            let iou = expected.get(&format!("image/obj{id}/iou"));
            let best = iou.argmax(0).unwrap().to_scalar::<u32>().unwrap() as usize;
            let official = expected
                .get(&format!("image/obj{id}/masks"))
                .get(if iou.dim(0).unwrap() == 3 { best } else { 0 })
                .unwrap();
            assert_logits_match(
                &format!("{case} cli obj{id}"),
                &ours[&format!("image/obj{id}")],
                &official,
            );
        }
    }
}

#[test]
fn mismatching_weights() {
    let dir = fixture_dir("s192");
    let err = one_line_error(run_image(
        dir.join("config.yaml").to_str().unwrap(),
        &weights_path("t256"),
        &dir.join("image.png"),
        &dir.join("prompts.json"),
        &scratch("never.safetensors"),
    ));
    assert!(err.contains("weights.pt") && err.contains("shape"), "{err}");
}

#[test]
fn unsupported_config_field() {
    let dir = fixture_dir("s192");
    let yaml = std::fs::read_to_string(dir.join("config.yaml")).unwrap();
    let bad = scratch("bad-config.yaml");
    std::fs::write(
        &bad,
        yaml.replacen(
            "num_maskmem: 7",
            "num_maskmem: 7\n  use_flash_memory: true",
            1,
        ),
    )
    .unwrap();
    let err = one_line_error(run_image(
        bad.to_str().unwrap(),
        &weights_path("s192"),
        &dir.join("image.png"),
        &dir.join("prompts.json"),
        &scratch("never.safetensors"),
    ));
    assert!(err.contains("use_flash_memory"), "{err}");
    let err = one_line_error(run_image(
        "sam2.5_hiera_t",
        &weights_path("s192"),
        &dir.join("image.png"),
        &dir.join("prompts.json"),
        &scratch("never.safetensors"),
    ));
    assert!(
        err.contains("sam2.5_hiera_t") && err.contains("preset"),
        "{err}"
    );
}

#[test]
fn malformed_prompt_files() {
    let dir = fixture_dir("s192");
    for (json, expect) in [
        (
            r#"{"prompts": [{"frame": 0, "object": 1, "points": [[5, 5]]}]}"#,
            "1 points but 0 labels",
        ),
        (
            r#"{"prompts": [{"frame": 0, "object": 1, "points": [[5, 5]], "labels": [1]}, {"frame": 0, "points": [[1, 1]], "labels": [1]}]}"#,
            "prompt 1",
        ),
        (
            r#"{"prompts": [{"frame": 0, "object": 7, "points": [[500, 5]], "labels": [1]}]}"#,
            "outside",
        ),
        (
            r#"{"prompts": [{"frame": 0, "object": 1, "points": [[5, 5]], "labels": [1]"#,
            "EOF",
        ),
        (r#"{"prompts": []}"#, "no prompt on frame 0"),
    ] {
        let prompts = scratch("prompts.json");
        std::fs::write(&prompts, json).unwrap();
        let err = one_line_error(run_image(
            dir.join("config.yaml").to_str().unwrap(),
            &weights_path("s192"),
            &dir.join("image.png"),
            &prompts,
            &scratch("never.safetensors"),
        ));
        assert!(err.contains(expect), "{json}: {err}");
    }
}

#[test]
fn convert_writes_loadable_half_precision_weights() {
    let out = scratch("t256-f16.safetensors");
    let status = sam2refiner()
        .args(["convert", "--dtype", "f16", "--config"])
        .arg(fixture_dir("t256").join("config.yaml"))
        .arg("--weights")
        .arg(weights_path("t256"))
        .arg("--out")
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    let dir = fixture_dir("t256");
    let result = run_image(
        dir.join("config.yaml").to_str().unwrap(),
        &out,
        &dir.join("image.png"),
        &dir.join("prompts.json"),
        &scratch("f16.safetensors"),
    );
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    // A config the weights do not fit is refused before anything is written.
    let err = one_line_error(
        sam2refiner()
            .args(["convert", "--config", "sam2.1_hiera_t"])
            .arg("--weights")
            .arg(weights_path("t256"))
            .arg("--out")
            .arg(scratch("never-converted.safetensors"))
            .output()
            .unwrap(),
    );
    assert!(err.contains("shape"), "{err}");
    assert!(!scratch("never-converted.safetensors").exists());
}

#[test]
fn half_precision_runs_and_stays_close() {
    // f32 is the parity reference; f16 must run through the same code and land near it.
    let dir = fixture_dir("t256");
    let command = |dtype: &str, out: &Path| {
        let mut c = sam2refiner();
        c.args(["image", "--device", "cpu", "--dtype", dtype, "--config"])
            .arg(dir.join("config.yaml"))
            .arg("--weights")
            .arg(weights_path("t256"))
            .arg("--image")
            .arg(dir.join("image.png"))
            .arg("--prompts")
            .arg(dir.join("prompts.json"))
            .arg("--out")
            .arg(out);
        c
    };
    let run = |dtype: &str| {
        let out = scratch(&format!("t256-{dtype}.safetensors"));
        let result = command(dtype, &out).output().unwrap();
        assert!(
            result.status.success(),
            "{dtype}: {}",
            String::from_utf8_lossy(&result.stderr)
        );
        candle_core::safetensors::load(&out, &Device::Cpu).unwrap()
    };
    let reference = run("f32");
    let half = run("f16");
    for (key, mask) in &reference {
        let agree = sign_agreement(&half[key], mask);
        assert!(
            agree > 0.9,
            "f16 {key}: only {:.1}% of pixels agree with f32",
            agree * 100.0
        );
    }
    // candle's CPU backend has no bf16 matrix product: a clear refusal, not a failure midway.
    let err = one_line_error(
        command("bf16", &scratch("never-bf16.safetensors"))
            .output()
            .unwrap(),
    );
    assert!(err.contains("bf16") && err.contains("CPU"), "{err}");
}

/// `--refiner`: the refiner fixture's random refiner on the built-in nano model gives the PyTorch
/// reference's masks (box prompt, each mode), `--refine-mode off` plain SAM 2, and a refiner for
/// other weights is refused in one line that says so.
#[test]
fn refiner_flags_refine_and_check_the_base() {
    let dir = fixture_dir("refiner");
    let refiner = dir.join("refiner.safetensors");
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    let box_case = cases["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "quadrants_box")
        .unwrap();
    let prompts = scratch("refiner-box.json");
    std::fs::write(
        &prompts,
        format!(
            r#"{{"prompts": [{{"frame": 0, "object": 1, "box": {}}}]}}"#,
            box_case["box"]
        ),
    )
    .unwrap();
    let expected =
        candle_core::safetensors::load(dir.join("expected.safetensors"), &Device::Cpu).unwrap();
    // `image` with the refiner on the fixture's frame and box, and `extra` model options.
    let image_with_refiner = |extra: &[&std::ffi::OsStr], out: &Path| {
        sam2refiner()
            .args(["image", "--device", "cpu", "--refiner"])
            .arg(&refiner)
            .args(extra)
            .arg("--image")
            .arg(dir.join("frame.png"))
            .arg("--prompts")
            .arg(&prompts)
            .arg("--out")
            .arg(out)
            .output()
            .unwrap()
    };
    let run = |mode: &str| {
        let out = scratch(&format!("refiner-{mode}.safetensors"));
        let result = image_with_refiner(&["--refine-mode".as_ref(), mode.as_ref()], &out);
        assert!(result.status.success(), "{result:?}");
        candle_core::safetensors::load(&out, &Device::Cpu).unwrap()["image/obj1"].clone()
    };
    let quadrants = run("quadrants");
    let want = expected["quadrants_box/masks"].get(0).unwrap();
    assert_logits_match("cli quadrants box", &quadrants, &want);
    let off = run("off");
    assert!(!logits_match(&off, &want), "off must not refine");

    // The refiner was trained for the nano weights, not for the t256 fixture model's.
    let t256 = fixture_dir("t256");
    let (config, weights) = (t256.join("config.yaml"), weights_path("t256"));
    let error = one_line_error(image_with_refiner(
        &[
            "--config".as_ref(),
            config.as_os_str(),
            "--weights".as_ref(),
            weights.as_os_str(),
        ],
        &scratch("refused.safetensors"),
    ));
    assert!(
        error.contains("trained for the base model sam2.1_nano"),
        "{error}"
    );
}
