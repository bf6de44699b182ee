//! The element with a refiner: `refine` off gives plain SAM 2 (and says so in the metadata),
//! quadrants and roi refine (and say so), `refine-pin-clicks` reaches the tracker, and a refiner file trained for other weights, or not a
//! refiner file at all, fails the start with the reason. The refiner is the parity fixture's
//! (random weights that change every mask) on the built-in nano model.

mod common;

use common::element::{buffer, harness, init, rgba_frame, start_error, timeline};
use common::{fixture_dir, weights_path};
use gst::glib;
use gst::prelude::*;

const CAPS: &str = "video/x-raw,format=RGBA,width=64,height=48,framerate=25/1";
const CLICK: &str =
    r#"{"prompts": [{"frame": 0, "object": 1, "points": [[20, 24]], "labels": [1]}]}"#;
const FRAMES: usize = 3;

fn refiner_file() -> String {
    fixture_dir("refiner")
        .join("refiner.safetensors")
        .to_str()
        .unwrap()
        .to_owned()
}

/// `sam2refiner` on the built-in nano model with `props` set.
fn nano_element(props: &[(&str, &str)]) -> gst::Element {
    init();
    let mut builder = gst::ElementFactory::make("sam2refiner")
        .property("device", "cpu")
        .property_from_str("output", "meta");
    for (name, value) in props {
        builder = builder.property_from_str(name, value);
    }
    builder.build().unwrap()
}

/// Each frame's (matte, refined flag) of object 1, clicked on frame 0.
fn run(props: &[(&str, &str)]) -> Vec<(Vec<u8>, bool)> {
    run_prompted(("refine-click.json", CLICK), props)
}

/// `run` with the prompt timeline `(file name, JSON)`.
fn run_prompted((name, json): (&str, &str), props: &[(&str, &str)]) -> Vec<(Vec<u8>, bool)> {
    let prompts = timeline(name, json);
    let mut all: Vec<(&str, &str)> = vec![("prompts", prompts.as_str())];
    all.extend_from_slice(props);
    let element = nano_element(&all);
    let (mut h, _bus) = harness(&element, CAPS, None);
    (0..FRAMES)
        .map(|t| {
            h.push(buffer(rgba_frame(t), t)).unwrap();
            let out = h.pull().unwrap();
            let (_, masks) = gstsam2refiner::element::meta::read(&out).expect("the meta");
            let mask = masks.into_iter().find(|m| m.object == 1).expect("object 1");
            let (_, _, pixels) = gstsam2refiner::element::meta::gray8_pixels(&mask.mask).unwrap();
            (pixels, mask.refined)
        })
        .collect()
}

#[test]
fn refine_off_is_plain_sam2_and_the_modes_refine() {
    let plain = run(&[]);
    assert!(plain.iter().all(|(_, refined)| !refined));
    let refiner = refiner_file();
    let off = run(&[("refiner-weights", &refiner), ("refine", "off")]);
    assert_eq!(off, plain, "refine=off must give plain SAM 2's mattes");
    for mode in ["quadrants", "roi"] {
        let refined = run(&[("refiner-weights", &refiner), ("refine", mode)]);
        assert!(
            refined.iter().all(|(_, flag)| *flag),
            "{mode}: every mask is flagged refined"
        );
        assert!(
            refined.iter().zip(&plain).any(|((a, _), (b, _))| a != b),
            "{mode}: the refiner's masks differ from SAM 2's"
        );
    }
}

/// A negative click beside the positive one: pinned (the default), the filter holds each
/// click's label around it, and the prompted frame's matte is not the unpinned one.
#[test]
fn refine_pin_clicks_reaches_the_tracker() {
    const TWO_CLICKS: &str = r#"{"prompts": [{"frame": 0, "object": 1, "points": [[20, 24], [22, 24]], "labels": [1, 0]}]}"#;
    let refiner = refiner_file();
    let prompts = ("refine-two-clicks.json", TWO_CLICKS);
    let pinned = run_prompted(prompts, &[("refiner-weights", &refiner)]);
    let unpinned = run_prompted(
        prompts,
        &[
            ("refiner-weights", &refiner),
            ("refine-pin-clicks", "false"),
        ],
    );
    assert_ne!(pinned[0].0, unpinned[0].0, "the pins change nothing");
}

#[test]
fn a_refiner_for_other_weights_fails_the_start_with_the_reason() {
    // The fixture refiner was trained for the nano weights, not the t256 fixture model's.
    let config = fixture_dir("t256").join("config.yaml");
    let element = nano_element(&[
        ("config", config.to_str().unwrap()),
        ("weights", weights_path("t256").to_str().unwrap()),
        ("refiner-weights", &refiner_file()),
    ]);
    let error = start_error(element);
    assert!(
        error.contains("trained for the base model sam2.1_nano") && error.contains(&refiner_file()),
        "{error}"
    );
}

#[test]
fn a_file_that_is_not_a_refiner_fails_the_start() {
    let scratch = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("element");
    std::fs::create_dir_all(&scratch).unwrap();
    let garbage = scratch.join("garbage-refiner.safetensors");
    std::fs::write(&garbage, b"not a refiner").unwrap();
    let missing = scratch.join("no-such-refiner.safetensors");
    // A model's weights: safetensors, but not a refiner.
    let model_weights = weights_path("t256").with_file_name("weights.safetensors");
    let model_weights = if model_weights.is_file() {
        model_weights
    } else {
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("models/nano/sam2.1_nano.safetensors")
    };
    for (path, cause) in [
        (garbage, "not a valid safetensors file"),
        (missing, "no such file"),
        (model_weights, "not a refiner file"),
    ] {
        let error = start_error(nano_element(&[("refiner-weights", path.to_str().unwrap())]));
        assert!(error.contains(cause), "{error} should say {cause:?}");
    }
}

#[test]
fn refine_properties_are_documented_with_their_defaults() {
    let element = nano_element(&[]);
    assert_eq!(element.property::<Option<String>>("refiner-weights"), None);
    for (name, default) in [("refine", "roi"), ("refine-memory", "sam2")] {
        let value = element.property_value(name);
        let (_, nick) = glib::EnumValue::from_value(&value).unwrap();
        assert_eq!(nick.nick(), default, "{name}");
    }
    assert!(element.property::<bool>("refine-pin-clicks"));
    for name in [
        "refiner-weights",
        "refine",
        "refine-memory",
        "refine-pin-clicks",
    ] {
        let pspec = element.find_property(name).unwrap();
        assert!(
            pspec.blurb().is_some_and(|b| b.len() > 40),
            "{name} is documented"
        );
    }
}
