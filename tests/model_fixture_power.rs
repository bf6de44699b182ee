//! The fixtures can fail: replayed with deliberate defects, the comparison must reject each.
//! Random weights can silence whole paths (a memory encoder blind to the mask, pointers that
//! change nothing); a fixture that no defect can fail would prove nothing.

mod common;

use candle_core::Tensor;
use common::track::{Defect, all_logits_match, replay};
use common::*;
use gstsam2refiner::model::ImagePrompt;

#[track_caller]
fn track_defect_is_caught(case: &str, defect: Defect) {
    let expected = Expected::load(case);
    let model = model(case);
    let outputs = replay(case, &model, &expected, defect);
    assert!(
        !all_logits_match(&outputs, &expected),
        "{case}: the masks replayed with {defect:?} still match"
    );
}

#[test]
fn zeroed_pointers_are_caught() {
    for case in CASES {
        track_defect_is_caught(case, Defect::ZeroPointers);
    }
}

#[test]
fn memories_in_the_wrong_temporal_slot_are_caught() {
    for case in CASES {
        track_defect_is_caught(case, Defect::FlattenTemporalSlots);
    }
}

#[test]
fn a_mask_ignored_by_the_memory_encoder_is_caught() {
    for case in CASES {
        track_defect_is_caught(case, Defect::MaskIgnoredInMemory);
    }
}

#[test]
fn an_inverted_mask_in_memory_is_caught() {
    for case in CASES {
        track_defect_is_caught(case, Defect::MaskInvertedInMemory);
    }
}

#[test]
fn pointer_distances_matter_exactly_where_the_config_encodes_them() {
    // SAM 2.1 (t256) adds a temporal encoding to pointers; SAM 2.0 (s192) does not
    // (`add_tpos_enc_to_obj_ptrs: false`), so there the distances must change nothing.
    track_defect_is_caught("t256", Defect::ZeroPointerDistances);
    let expected = Expected::load("s192");
    let outputs = replay(
        "s192",
        &model("s192"),
        &expected,
        Defect::ZeroPointerDistances,
    );
    assert!(all_logits_match(&outputs, &expected));
}

#[test]
fn memory_encoder_stage_sees_the_mask() {
    for case in CASES {
        let expected = Expected::load(case);
        let model = model(case);
        let dev = device();
        let pix = expected.on("memenc/pix_feat", &dev);
        let mask = expected.on("memenc/mask", &dev);
        let official = expected.get("memenc/features");
        for (what, altered) in [
            ("empty", (mask.zeros_like().unwrap() - 10.0).unwrap()),
            ("inverted", mask.neg().unwrap()),
        ] {
            let ours = model.memory_encoder.forward(&pix, &altered, true).unwrap();
            assert!(
                rel_l2(&ours, &official) > 1e-2,
                "{case}: an {what} mask gives the same memory"
            );
        }
    }
}

#[test]
fn a_box_read_as_y_x_is_caught() {
    for case in CASES {
        let expected = Expected::load(case);
        let model = model(case);
        let predictor = predictor_on_image(&model, case);
        let image = image(case);
        for p in prompts(case).iter().filter(|p| p.bbox.is_some()) {
            let [x0, y0, x1, y1] = p.bbox.unwrap();
            let swapped = ImagePrompt {
                points: p
                    .points
                    .iter()
                    .map(|&[x, y]| {
                        [
                            y.min(image.width as f32 - 1.0),
                            x.min(image.height as f32 - 1.0),
                        ]
                    })
                    .collect(),
                labels: p.labels.clone(),
                bbox: Some([y0, x0, y1, x1]),
                mask_input: None,
            };
            let out = predictor.predict(&swapped, false).unwrap();
            let official: Tensor = expected.get(&format!("image/obj{}/masks", p.object));
            assert!(
                !logits_match(&out.masks, &official),
                "{case} object {}: a transposed box still matches",
                p.object
            );
        }
    }
}

#[test]
fn the_wrong_multimask_candidate_is_caught() {
    for case in CASES {
        let expected = Expected::load(case);
        let model = model(case);
        let predictor = predictor_on_image(&model, case);
        let prompts = prompts(case);
        let p = prompts
            .iter()
            .find(|p| p.points.len() == 1 && p.bbox.is_none())
            .expect("a single-click prompt");
        let prompt = ImagePrompt::clicks_and_box(&p.points, &p.labels, p.bbox);
        let out = predictor.predict(&prompt, true).unwrap();
        let best = out.best_index().unwrap();
        let official = expected
            .get(&format!("image/obj{}/masks", p.object))
            .get(best)
            .unwrap();
        for other in (0..3).filter(|&i| i != best) {
            assert!(
                !logits_match(&out.masks.get(other).unwrap(), &official),
                "{case}: candidate {other} is indistinguishable from the best"
            );
        }
    }
}
