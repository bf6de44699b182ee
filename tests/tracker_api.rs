//! The streaming tracker's contract beyond parity: prompts at any time, bounded memory, and bad
//! input that gets a clear error and loses nothing.

mod common;

use common::*;
use gstsam2refiner::Error;
use gstsam2refiner::image::RgbImage;
use gstsam2refiner::prompt::{Prompt, PromptMask};
use gstsam2refiner::tracker::{PromptOutcome, Tracker, TrackerOptions};

fn tracker(case: &str) -> Tracker {
    let mut config = config(case);
    config.apply_build_overrides(gstsam2refiner::model::BuildMode::Video);
    let mut options = TrackerOptions::for_config(&config);
    options.feature_history = 2;
    Tracker::new(model(case), options)
}

/// Frame t of the case's clip, cycled.
fn clip_frame(case: &str, t: usize) -> RgbImage {
    RgbImage::read_png(&fixture_dir(case).join(format!("frames/{:04}.png", t % 10))).unwrap()
}

fn click(frame: u64, object: u32, x: f32, y: f32) -> Prompt {
    Prompt {
        frame,
        object,
        points: vec![[x, y]],
        labels: vec![1],
        bbox: None,
        mask: None,
    }
}

#[test]
fn prompts_for_future_past_and_held_frames() {
    let mut t = tracker("t256");
    // A prompt before any frame waits for its frame.
    assert!(matches!(
        t.add_prompt(&click(2, 1, 100.0, 100.0)).unwrap(),
        PromptOutcome::Queued
    ));
    // A waiting object is already one of the tracker's objects, and can be removed.
    t.add_prompt(&click(5, 7, 10.0, 10.0)).unwrap();
    assert_eq!(t.objects().collect::<Vec<_>>(), [1, 7]);
    t.remove_object(7).unwrap();
    assert_eq!(t.objects().collect::<Vec<_>>(), [1]);
    for f in 0..2 {
        assert!(
            t.push_frame(f, &clip_frame("t256", f as usize))
                .unwrap()
                .objects
                .is_empty()
        );
    }
    let out = t.push_frame(2, &clip_frame("t256", 2)).unwrap();
    assert_eq!(out.objects.len(), 1, "the queued prompt applied on frame 2");
    assert!(out.objects[0].conditioning);
    // A prompt for the frame just shown (still held) applies to it: a correction.
    t.push_frame(3, &clip_frame("t256", 3)).unwrap();
    match t.add_prompt(&click(2, 1, 120.0, 90.0)).unwrap() {
        PromptOutcome::Applied(o) => assert!(o.conditioning),
        other => panic!("{other:?}"),
    }
    // Frame 0 is gone from a history of 2 frames: a new object's prompt goes to the next frame.
    assert!(matches!(
        t.add_prompt(&click(0, 2, 50.0, 50.0)).unwrap(),
        PromptOutcome::Deferred
    ));
    let out = t.push_frame(4, &clip_frame("t256", 4)).unwrap();
    let ids: Vec<u32> = out.objects.iter().map(|o| o.object).collect();
    assert_eq!(ids, vec![1, 2]);
    assert!(out.objects[1].conditioning, "object 2 starts on frame 4");
    // Every output has the frame's logits at its own size.
    for (_, logits) in t.frame_logits(&out).unwrap() {
        assert_eq!(logits.dims(), &[256, 256]);
    }
}

#[test]
fn frames_encoded_beside_the_step_before_them_track_as_pushed_ones() {
    // The element and the CLI encode each frame on another thread while the tracker tracks the
    // frame before it: the model is shared by the two at once, and the results must be those
    // of pushing the frames one by one, to the bit.
    let (mut pushed, mut pipelined) = (tracker("t256"), tracker("t256"));
    let encoder = pipelined.encoder();
    let mut next = Some(encoder.encode(&clip_frame("t256", 0)).unwrap());
    for t in 0..5 {
        let frame = t as u64;
        let a = pushed.push_frame(frame, &clip_frame("t256", t)).unwrap();
        let encoded = next.take().unwrap();
        let (b, encoded_next) = rayon::join(
            || pipelined.push_encoded(frame, encoded),
            || encoder.encode(&clip_frame("t256", t + 1)),
        );
        next = Some(encoded_next.unwrap());
        assert_eq!(a.size, b.unwrap().size);
        if t == 1 {
            for tracker in [&mut pushed, &mut pipelined] {
                tracker.add_prompt(&click(1, 1, 100.0, 90.0)).unwrap();
            }
        }
        let logits = |tracker: &Tracker| -> Vec<(u32, Vec<f32>)> {
            let out = tracker.output(frame).unwrap();
            (tracker.frame_logits(&out).unwrap().into_iter())
                .map(|(o, l)| (o, l.flatten_all().unwrap().to_vec1().unwrap()))
                .collect()
        };
        let expected = logits(&pushed);
        assert_eq!(expected.len(), usize::from(t >= 1));
        assert_eq!(logits(&pipelined), expected, "frame {t}");
    }
    // An encoded frame is checked as a pushed one is: its id must follow the last.
    let err = pipelined
        .push_encoded(4, next.unwrap())
        .unwrap_err()
        .to_string();
    assert!(err.contains("must increase"), "{err}");
}

#[test]
fn memory_is_bounded_over_a_long_stream() {
    let mut t = tracker("t256");
    let mut held = Vec::new();
    for f in 0..120u64 {
        t.push_frame(f, &clip_frame("t256", f as usize)).unwrap();
        if f == 0 {
            t.add_prompt(&click(0, 1, 100.0, 100.0)).unwrap();
            t.add_prompt(&Prompt {
                bbox: Some([20.0, 30.0, 120.0, 160.0]),
                points: vec![],
                labels: vec![],
                ..click(0, 2, 0.0, 0.0)
            })
            .unwrap();
        }
        held.push(t.held_bytes());
    }
    // Once the memory window is full (num_maskmem, then max_obj_ptrs frames), nothing grows.
    assert!(held[20] > held[1], "the bank fills first");
    assert_eq!(held[20], held[119], "memory held after 20 and 120 frames");
}

#[test]
fn bad_input_is_refused_and_nothing_is_lost() {
    let mut t = tracker("t256");
    t.push_frame(0, &clip_frame("t256", 0)).unwrap();
    t.add_prompt(&click(0, 1, 100.0, 100.0)).unwrap();
    t.push_frame(1, &clip_frame("t256", 1)).unwrap();

    fn err<T>(r: gstsam2refiner::Result<T>) -> String {
        r.map(|_| ()).unwrap_err().to_string()
    }
    // Frames of another size: an error that says so (reset() starts a new stream).
    let small = RgbImage {
        width: 64,
        height: 48,
        pixels: vec![0; 64 * 48 * 3],
    };
    let e = err(t.push_frame(2, &small));
    assert!(
        e.contains("64x48") && e.contains("256x256") && e.contains("reset"),
        "{e}"
    );
    // Frame ids must increase.
    let e = err(t.push_frame(1, &clip_frame("t256", 1)));
    assert!(e.contains("increase"), "{e}");
    // A mask of the wrong size, a point outside, clicks without labels.
    let mask = PromptMask {
        width: 10,
        height: 10,
        data: vec![1; 100],
    };
    let bad_mask = Prompt {
        points: vec![],
        labels: vec![],
        mask: Some(mask),
        ..click(1, 3, 0.0, 0.0)
    };
    let e = err(t.add_prompt(&bad_mask));
    assert!(e.contains("10x10") && e.contains("256x256"), "{e}");
    assert!(err(t.add_prompt(&click(1, 3, 300.0, 10.0))).contains("outside"));
    // Removing or clearing an object that does not exist.
    assert!(matches!(t.remove_object(7), Err(Error::Prompt(_))));
    assert!(t.clear_prompts(7).unwrap_err().to_string().contains("7"));
    // None of that disturbed the stream: object 1 is tracked on, object 3 was never created.
    let out = t.push_frame(2, &clip_frame("t256", 2)).unwrap();
    assert_eq!(
        out.objects.iter().map(|o| o.object).collect::<Vec<_>>(),
        vec![1]
    );
    // A mask prompt of the right size works, and a removed object is gone.
    let mask = PromptMask {
        width: 256,
        height: 256,
        data: (0..256 * 256).map(|i| u8::from((i % 256) < 128)).collect(),
    };
    let good_mask = Prompt {
        points: vec![],
        labels: vec![],
        mask: Some(mask),
        ..click(2, 3, 0.0, 0.0)
    };
    assert!(matches!(
        t.add_prompt(&good_mask).unwrap(),
        PromptOutcome::Applied(_)
    ));
    t.remove_object(1).unwrap();
    let out = t.push_frame(3, &clip_frame("t256", 3)).unwrap();
    assert_eq!(
        out.objects.iter().map(|o| o.object).collect::<Vec<_>>(),
        vec![3]
    );
    // reset() accepts a new size and restarts the frame ids.
    t.reset();
    t.push_frame(0, &small).unwrap();
}

#[test]
fn post_processing_options() {
    // Hole filling: with it on, no background region of 8 low-res pixels or fewer is left.
    let run = |adjust: &dyn Fn(&mut TrackerOptions)| {
        let mut config = config("t256");
        config.apply_build_overrides(gstsam2refiner::model::BuildMode::Video);
        let mut options = TrackerOptions::for_config(&config);
        adjust(&mut options);
        let mut t = Tracker::new(model("t256"), options);
        let mut outs = Vec::new();
        for f in 0..4u64 {
            t.push_frame(f, &clip_frame("t256", f as usize)).unwrap();
            if f == 0 {
                t.add_prompt(&click(0, 1, 100.0, 100.0)).unwrap();
                t.add_prompt(&click(0, 2, 60.0, 180.0)).unwrap();
            }
            let out = t.output(f).unwrap();
            outs.push((out.clone(), t.frame_logits(&out).unwrap()));
        }
        outs
    };
    let filled = run(&|o| o.fill_hole_area = 8);
    let unfilled = run(&|o| o.fill_hole_area = 0);
    let mut changed = 0;
    for ((f, _), (u, _)) in filled.iter().zip(&unfilled) {
        for (a, b) in f.objects.iter().zip(&u.objects) {
            let (h, w) = a.low_res.dims2().unwrap();
            let mut v: Vec<f32> = a.low_res.flatten_all().unwrap().to_vec1().unwrap();
            let before = v.clone();
            gstsam2refiner::model::fill_holes::fill_holes(&mut v, (h, w), 8);
            assert_eq!(v, before, "a small hole was left");
            changed += usize::from(rel_l2(&a.low_res, &b.low_res) > 0.0);
        }
    }
    assert!(
        changed > 0,
        "hole filling never fired: the check above proves nothing"
    );
    // Non-overlap: at each pixel at most one object keeps a positive logit (and without it, the
    // two objects do overlap somewhere, so the check can fail).
    let overlap = |logits: &[(u32, candle_core::Tensor)]| {
        let planes: Vec<Vec<f32>> = logits
            .iter()
            .map(|(_, l)| l.flatten_all().unwrap().to_vec1().unwrap())
            .collect();
        (0..planes[0].len())
            .filter(|&px| planes.iter().filter(|p| p[px] > 0.0).count() > 1)
            .count()
    };
    assert!(unfilled.iter().map(|(_, l)| overlap(l)).sum::<usize>() > 0);
    for (_, logits) in run(&|o| o.non_overlap_masks = true) {
        assert_eq!(overlap(&logits), 0);
    }
}
