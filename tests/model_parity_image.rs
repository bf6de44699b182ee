//! The image path against the official `SAM2ImagePredictor`: one click (multimask), several
//! clicks (single mask, with the stability fallback), a box, a box with clicks, a mask prompt.

mod common;

use candle_core::DType;
use common::*;
use gstsam2refiner::model::ImagePrompt;

#[test]
fn every_prompt_of_every_case() {
    for case in CASES {
        let expected = Expected::load(case);
        let model = model(case);
        let predictor = predictor_on_image(&model, case);
        let prompts = prompts(case);
        assert!(
            prompts.len() >= 4,
            "{case}: click, clicks, box, box + clicks"
        );
        for p in prompts.iter().filter(|p| p.frame == 0) {
            let id = p.object;
            let prompt = ImagePrompt::clicks_and_box(&p.points, &p.labels, p.bbox);
            let multimask = prompt.is_ambiguous();
            let out = predictor.predict(&prompt, multimask).unwrap();
            let what = format!("{case} object {id}");
            assert_logits_match(
                &format!("{what} masks"),
                &out.masks,
                &expected.get(&format!("image/obj{id}/masks")),
            );
            assert_logits_match(
                &format!("{what} low_res"),
                &out.low_res,
                &expected.get(&format!("image/obj{id}/low_res")),
            );
            assert_close(
                &format!("{what} iou"),
                &out.iou,
                &expected.get(&format!("image/obj{id}/iou")),
                1e-4,
            );
            // The choice `sam2refiner image` makes: the best by IoU, as the official argmax.
            let best = if multimask {
                out.best_index().unwrap()
            } else {
                0
            };
            let official_best = expected
                .get(&format!("image/obj{id}/iou"))
                .argmax(0)
                .unwrap()
                .to_scalar::<u32>()
                .unwrap();
            assert_eq!(best, official_best as usize, "{what}: chosen candidate");
        }
    }
}

#[test]
fn mask_prompt_with_points() {
    for case in CASES {
        let expected = Expected::load(case);
        let model = model(case);
        let dev = device();
        let predictor = predictor_on_image(&model, case);
        let coords = expected
            .get("mask_prompt/points")
            .squeeze(0)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let labels = expected
            .get("mask_prompt/labels")
            .squeeze(0)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let prompt = ImagePrompt {
            points: coords.iter().map(|c| [c[0], c[1]]).collect(),
            labels: labels.iter().map(|&l| l as i32).collect(),
            bbox: None,
            mask_input: Some(expected.on("mask_prompt/input", &dev)),
        };
        let out = predictor.predict(&prompt, false).unwrap();
        assert_logits_match(
            &format!("{case} mask prompt masks"),
            &out.masks,
            &expected.get("mask_prompt/masks"),
        );
        assert_logits_match(
            &format!("{case} mask prompt low_res"),
            &out.low_res,
            &expected.get("mask_prompt/low_res"),
        );
        assert_close(
            &format!("{case} mask prompt iou"),
            &out.iou,
            &expected.get("mask_prompt/iou"),
            1e-4,
        );
    }
}
