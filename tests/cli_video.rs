//! `sam2refiner video` as other checks call it: it reproduces the official video predictor's
//! recorded outputs, and bad input gets a one-line error.

mod common;

use std::path::PathBuf;
use std::process::Command;

use candle_core::Device;
use common::*;

fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cli_video");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn memory_dtype_name(case: &str) -> &'static str {
    match common::video::memory_dtype(case) {
        candle_core::DType::BF16 => "bf16",
        _ => "f32",
    }
}

fn video(case: &str, prompts: &std::path::Path, out: &std::path::Path) -> std::process::Output {
    let dir = fixture_dir(case).join("video");
    Command::new(env!("CARGO_BIN_EXE_sam2refiner"))
        .args([
            "video",
            "--device",
            "cpu",
            "--memory-dtype",
            memory_dtype_name(case),
            "--config",
        ])
        .arg(dir.join("config.yaml"))
        .arg("--weights")
        .arg(weights_path(case))
        .arg("--frames")
        .arg(dir.join("frames"))
        .arg("--prompts")
        .arg(prompts)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap()
}

#[test]
fn reproduces_the_official_outputs() {
    for case in CASES {
        let dir = fixture_dir(case).join("video");
        let out = scratch(&format!("{case}.safetensors"));
        let result = video(case, &dir.join("prompts.json"), &out);
        assert!(
            result.status.success(),
            "{}",
            String::from_utf8_lossy(&result.stderr)
        );
        let ours = candle_core::safetensors::load(&out, &Device::Cpu).unwrap();
        let expected =
            candle_core::safetensors::load(dir.join("expected.safetensors"), &Device::Cpu).unwrap();
        // The JSON prompts every object but the one prompted by a mask (not in the JSON schema).
        let prompted: Vec<u32> =
            gstsam2refiner::prompt::read_prompt_file(&dir.join("prompts.json"))
                .unwrap()
                .iter()
                .map(|p| p.object)
                .collect();
        let mut compared = 0;
        for (key, official) in expected.iter().filter(|(k, _)| !k.ends_with("/score")) {
            let object: u32 = key.rsplit("obj").next().unwrap().parse().unwrap();
            if !prompted.contains(&object) {
                assert!(!ours.contains_key(key), "{case}: {key} was never prompted");
                continue;
            }
            let mine = ours
                .get(key)
                .unwrap_or_else(|| panic!("{case}: no {key} in the output"));
            assert_logits_match(&format!("{case} cli {key}"), mine, official);
            compared += 1;
        }
        assert_eq!(compared, ours.len(), "{case}: every output was compared");
    }
}

#[test]
fn bad_input_is_a_one_line_error() {
    for (json, expect) in [
        (
            r#"{"prompts": [{"frame": 40, "object": 1, "points": [[5, 5]], "labels": [1]}]}"#,
            "only 18 frames",
        ),
        (
            r#"{"prompts": [{"frame": 0, "object": 1, "points": [[500, 5]], "labels": [1]}]}"#,
            "outside",
        ),
    ] {
        let prompts = scratch("prompts.json");
        std::fs::write(&prompts, json).unwrap();
        let result = video("t256", &prompts, &scratch("never.safetensors"));
        assert!(!result.status.success());
        let stderr = String::from_utf8(result.stderr).unwrap();
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.starts_with("error: ") && stderr.contains(expect),
            "{stderr}"
        );
    }
}
