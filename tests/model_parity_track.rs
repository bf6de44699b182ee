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

/// Objects tracked together on a frame run as one batch: each with its own memories, slots and
/// pointer distances, the batch must give what each object gives alone.
#[test]
fn a_batch_of_objects_equals_each_object_alone() {
    use gstsam2refiner::model::{MemoryRef, ObjectMemory, PointerRef, TrackStepInput};
    let case = "t256";
    let expected = Expected::load(case);
    let model = model(case);
    let sched = schedule(case);
    let outputs = replay(case, &model, &expected, Defect::None);
    let dev = device();
    // The last plain-tracking steps of objects 1 and 2, both on frame 9.
    let last = |object: u32| {
        sched
            .steps
            .iter()
            .rev()
            .find(|s| s.object == object && s.frame == 9)
            .unwrap()
    };
    let (s1, s2) = (last(1), last(2));
    let memory_of = |step: &common::track::Step| ObjectMemory {
        memories: step
            .memories
            .iter()
            .map(|m| {
                let (features, pos_enc) = outputs[m.step].memory.as_ref().unwrap();
                MemoryRef {
                    features,
                    pos_enc,
                    t_pos: m.t_pos,
                }
            })
            .collect(),
        pointers: step
            .pointers
            .iter()
            .map(|p| PointerRef {
                pointer: &outputs[p.step].heads.obj_ptr,
                distance: p.distance,
            })
            .collect(),
    };
    let (mut m1, mut m2) = (memory_of(s1), memory_of(s2));
    // Equal bank sizes are what a batch needs: trim the longer bank to the shorter.
    let n_mem = m1.memories.len().min(m2.memories.len());
    let n_ptr = m1.pointers.len().min(m2.pointers.len());
    m1.memories.truncate(n_mem);
    m2.memories.truncate(n_mem);
    m1.pointers.truncate(n_ptr);
    m2.pointers.truncate(n_ptr);
    let frame = model.forward_image(&frame_input(case, 9, &dev)).unwrap();
    let run = |objects: &[ObjectMemory]| {
        model
            .track_step(&TrackStepInput {
                features: &frame,
                is_init_cond_frame: false,
                objects,
                max_pointer_distance: 15,
                points: None,
                mask_input: None,
                prev_mask_logits: None,
                run_mem_encoder: true,
                batch: objects.len(),
                refine: None,
            })
            .unwrap()
    };
    let both = run(&[m1.clone(), m2.clone()]);
    for (i, alone) in [run(&[m1]), run(&[m2])].iter().enumerate() {
        let pick = |t: &candle_core::Tensor| t.narrow(0, i, 1).unwrap();
        assert_close(
            &format!("object {i} masks"),
            &pick(&both.heads.low_res_masks),
            &alone.heads.low_res_masks,
            1e-5,
        );
        assert_close(
            &format!("object {i} pointer"),
            &pick(&both.heads.obj_ptr),
            &alone.heads.obj_ptr,
            1e-5,
        );
        assert_close(
            &format!("object {i} memory"),
            &pick(&both.memory.as_ref().unwrap().0),
            &alone.memory.as_ref().unwrap().0,
            1e-5,
        );
    }
    // And the two objects really differ, so the comparison above could fail.
    assert!(
        rel_l2(
            &both.heads.low_res_masks.narrow(0, 0, 1).unwrap(),
            &both.heads.low_res_masks.narrow(0, 1, 1).unwrap()
        ) > 1e-2
    );
}
