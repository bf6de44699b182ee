//! The tracking step against the official `SAM2Base.track_step`, replayed over the recorded
//! schedule (`track.json`): initial conditioning frames from a click, a box and a mask, plain
//! tracking frames with up to the full memory window and pointer list, and a correction.

mod common;

use common::track::{Defect, all_steps_match, replay, schedule};
use common::*;

#[test]
fn every_step_of_every_case() {
    for case in CASES {
        let expected = Expected::load(case);
        let model = model(case);
        let sched = schedule(case);
        let outputs = replay(case, &model, &expected, Defect::None);
        let mut absent = 0;
        for (step, out) in sched.steps.iter().zip(&outputs) {
            let s = step.step;
            let what = format!(
                "{case} step {s} (object {}, frame {}, {})",
                step.object, step.frame, step.stored_as
            );
            let key = |k: &str| format!("track/step{s}/{k}");
            assert_logits_match(
                &format!("{what} pred_masks"),
                &out.heads.low_res_masks,
                &expected.get(&key("pred_masks")),
            );
            if expected.has(&key("pred_masks_high_res")) {
                assert_logits_match(
                    &format!("{what} pred_masks_high_res"),
                    &out.heads.high_res_masks,
                    &expected.get(&key("pred_masks_high_res")),
                );
            }
            assert_close(
                &format!("{what} obj_ptr"),
                &out.heads.obj_ptr,
                &expected.get(&key("obj_ptr")),
                1e-4,
            );
            assert_close(
                &format!("{what} object score"),
                &out.heads.object_score_logits,
                &expected.get(&key("object_score_logits")),
                1e-4,
            );
            let (features, pos) = out
                .memory
                .as_ref()
                .expect("run_mem_encoder is on in the schedule");
            assert_close(
                &format!("{what} maskmem_features"),
                features,
                &expected.get(&key("maskmem_features")),
                1e-4,
            );
            // The same at every step; the fixture holds it once.
            assert_close(
                &format!("{what} maskmem_pos_enc"),
                pos,
                &expected.get("track/step0/maskmem_pos_enc"),
                1e-6,
            );
            let score: f32 = expected
                .get(&key("object_score_logits"))
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()[0];
            absent += usize::from(score <= 0.0);
            assert_eq!(step.num_obj_ptr_tokens % step.pointers.len().max(1), 0);
        }
        assert!(
            absent > 0,
            "{case}: no step has the object absent: the no-object path is untested"
        );
        assert!(all_steps_match(&outputs, &expected));
    }
}
