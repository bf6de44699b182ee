//! `sam2refiner` as a pipeline sees it: buffers out once and in order, EOS after the last one,
//! flushes and seeks, caps changes, latency, skip policies, state changes, and model files that
//! cannot load.

mod common;

use common::element::*;
use common::weights_path;
use gst::prelude::*;
use gstsam2refiner::element::meta;

fn segment() -> gst::Event {
    gst::event::Segment::new(&gst::FormattedSegment::<gst::ClockTime>::new())
}

fn flush(h: &mut gst_check::Harness) {
    assert!(h.push_event(gst::event::FlushStart::new()));
    assert!(h.push_event(gst::event::FlushStop::new(true)));
    assert!(h.push_event(segment()));
}

fn objects(buffer: &gst::Buffer) -> Vec<u32> {
    meta_mattes(buffer).into_iter().map(|(o, _)| o).collect()
}

fn carried(buffer: &gst::Buffer) -> Vec<bool> {
    meta::read(buffer)
        .unwrap()
        .1
        .iter()
        .map(|m| m.carried)
        .collect()
}

#[test]
fn every_buffer_comes_out_once_in_order_and_eos_after_the_last() {
    let e = element(&[("queue-size", "2")]);
    let (mut h, _bus) = harness(&e, RGBA_CAPS, None);
    for event in mask_events() {
        assert!(h.push_event(event));
    }
    const N: usize = 6;
    for t in 0..N {
        let mut b = buffer(rgba_frame(t), t);
        b.get_mut().unwrap().set_offset(t as u64);
        assert_eq!(h.push(b), Ok(gst::FlowSuccess::Ok));
    }
    assert!(h.push_event(gst::event::Eos::new()));
    let expected = reference_mattes(N);
    for (t, expected) in expected.iter().enumerate() {
        let b = h.pull_until_eos().unwrap().expect("a buffer before EOS");
        assert_eq!(b.pts(), Some(gst::ClockTime::from_mseconds(40 * t as u64)));
        assert_eq!(b.duration(), Some(gst::ClockTime::from_mseconds(40)));
        assert_eq!(b.offset(), t as u64);
        assert_eq!(&meta_mattes(&b), expected, "frame {t}");
    }
    assert!(
        h.pull_until_eos().unwrap().is_none(),
        "EOS right after the last buffer"
    );
    assert!(h.try_pull().is_none(), "no buffer twice");
}

#[test]
fn a_flush_forgets_the_objects_and_a_seek_back_replays_the_timeline() {
    let e = element(&[("prompts", &timeline("stream-seek.json", TWO_OBJECTS))]);
    let (mut h, _bus) = harness(&e, RGBA_CAPS, None);
    let expected = reference_mattes_of(TWO_OBJECTS, 4);
    let run = |h: &mut gst_check::Harness, frames: std::ops::Range<usize>| -> Vec<_> {
        frames
            .map(|t| meta_mattes(&push_pull(h, t)))
            .collect::<Vec<_>>()
    };
    assert_eq!(run(&mut h, 0..4), expected);
    // Back to the start: the same prompts on the same frames, the same mattes.
    flush(&mut h);
    assert_eq!(run(&mut h, 0..4), expected);
    // Into the middle: the objects are forgotten and the prompts placed before are left out.
    flush(&mut h);
    assert_eq!(run(&mut h, 3..5), [vec![], vec![]]);
    // Prompts from the application are taken again after a flush.
    flush(&mut h);
    for event in mask_events() {
        assert!(h.push_event(event));
    }
    assert_eq!(objects(&push_pull(&mut h, 7)), [1, 2]);
}

#[test]
fn nothing_from_before_a_flush_comes_out_after_it() {
    // Frames and an EOS pushed faster than the model tracks the frames (a seek near the end):
    // when the flush comes the worker is tracking a frame, has taken the next job (a frame to
    // encode, or the EOS) ahead of the queue, and the rest wait.
    let e = element(&[("queue-size", "2")]);
    let (mut h, _bus) = harness(&e, RGBA_CAPS, None);
    for event in mask_events() {
        assert!(h.push_event(event));
    }
    for t in 0..3 {
        assert_eq!(h.push(buffer(rgba_frame(t), t)), Ok(gst::FlowSuccess::Ok));
    }
    assert!(h.push_event(gst::event::Eos::new()));
    flush(&mut h);
    while h.try_pull().is_some() {} // what came out before the flush
    let after = 10..14;
    for t in after.clone() {
        assert_eq!(h.push(buffer(rgba_frame(t), t)), Ok(gst::FlowSuccess::Ok));
    }
    for t in after {
        let b = h
            .pull()
            .expect("every frame pushed after the flush comes out");
        assert_eq!(b.pts(), Some(gst::ClockTime::from_mseconds(40 * t as u64)));
    }
    assert!(h.try_pull().is_none(), "and nothing else");
}

#[test]
fn caps_still_queued_when_a_flush_comes_apply_after_it() {
    // New caps behind frames the model has not reached, then a seek: the caps are sticky and
    // come no more, so the flush must not drop them with the frames.
    let e = element(&[("queue-size", "2")]);
    let (mut h, bus) = harness(&e, RGBA_CAPS, None);
    for t in 0..3 {
        assert_eq!(h.push(buffer(rgba_frame(t), t)), Ok(gst::FlowSuccess::Ok));
    }
    h.set_src_caps_str("video/x-raw,format=RGBA,width=32,height=24,framerate=25/1");
    flush(&mut h);
    while h.try_pull().is_some() {}
    h.push(buffer(vec![128; 32 * 24 * 4], 10)).unwrap();
    let out = h.pull().expect("the frame after the flush comes out");
    assert_eq!(out.size(), 32 * 24 * 4, "in the new caps");
    let errors: Vec<String> = drain(&bus)
        .iter()
        .filter_map(|m| match m.view() {
            gst::MessageView::Error(e) => Some(e.error().to_string()),
            _ => None,
        })
        .collect();
    assert!(errors.is_empty(), "{errors:?}");
}

#[test]
fn a_new_frame_size_restarts_the_objects_and_a_new_format_keeps_them() {
    let e = element(&[]);
    let (mut h, bus) = harness(&e, RGBA_CAPS, None);
    for event in mask_events() {
        assert!(h.push_event(event));
    }
    push_pull(&mut h, 0);
    assert_eq!(objects(&push_pull(&mut h, 1)), [1, 2]);

    h.set_src_caps_str("video/x-raw,format=BGRA,width=64,height=48,framerate=25/1");
    let bgra: Vec<u8> = rgba_frame(2)
        .chunks_exact(4)
        .flat_map(|p| [p[2], p[1], p[0], p[3]])
        .collect();
    h.push(buffer(bgra, 2)).unwrap();
    let out = h.pull().unwrap();
    assert_eq!(objects(&out), [1, 2], "a format change keeps the objects");
    assert_eq!(warnings(&drain(&bus)), 0);

    h.set_src_caps_str("video/x-raw,format=RGBA,width=32,height=24,framerate=25/1");
    h.push(buffer(vec![128; 32 * 24 * 4], 3)).unwrap();
    let out = h.pull().unwrap();
    assert_eq!(out.size(), 32 * 24 * 4);
    assert!(
        objects(&out).is_empty(),
        "a size change restarts the objects"
    );
    let messages = drain(&bus);
    let warning = messages
        .iter()
        .find_map(|m| match m.view() {
            gst::MessageView::Warning(w) => Some(w.error().to_string()),
            _ => None,
        })
        .expect("a warning says why the objects were forgotten");
    assert!(warning.contains("32x24"), "{warning}");
}

#[test]
fn latency_is_upstreams_plus_the_models() {
    let e = element(&[("latency", "5000000")]);
    let (mut h, _bus) = harness(&e, RGBA_CAPS, None);
    h.set_upstream_latency(gst::ClockTime::from_mseconds(10));
    assert_eq!(h.query_latency(), Some(gst::ClockTime::from_mseconds(15)));

    let e = element(&[]);
    let (mut h, bus) = harness(&e, RGBA_CAPS, None);
    h.set_upstream_latency(gst::ClockTime::from_mseconds(10));
    assert_eq!(
        h.query_latency(),
        Some(gst::ClockTime::from_mseconds(10)),
        "nothing measured yet"
    );
    push_pull(&mut h, 0);
    let measured = h.query_latency().unwrap();
    assert!(measured > gst::ClockTime::from_mseconds(10), "{measured}");
    assert!(
        drain(&bus)
            .iter()
            .any(|m| m.type_() == gst::MessageType::Latency),
        "the pipeline is told to ask again"
    );
}

#[test]
fn every_nth_carries_the_last_masks_over_untracked_frames() {
    let e = element(&[("skip-policy", "every-nth"), ("track-every", "2")]);
    let (mut h, _bus) = harness(&e, RGBA_CAPS, None);
    for event in mask_events() {
        assert!(h.push_event(event));
    }
    let out: Vec<gst::Buffer> = (0..4).map(|t| push_pull(&mut h, t)).collect();
    let mut steps: Vec<Step> = object_masks()
        .into_iter()
        .map(|(o, m)| Step::Prompt(mask_prompt(0, o, m)))
        .collect();
    steps.extend([Step::Frame(0), Step::Frame(2)]);
    let tracked = reference_run(steps);
    for (t, b) in out.iter().enumerate() {
        assert_eq!(carried(b), [t % 2 == 1; 2], "frame {t}");
        assert_eq!(meta_mattes(b), tracked[t / 2], "frame {t}");
        assert_eq!(
            meta::read(b).unwrap().0,
            t as u64,
            "the meta names the frame"
        );
    }
}

#[test]
fn realtime_outputs_every_frame_and_carries_masks_while_busy() {
    let e = element(&[("skip-policy", "realtime"), ("queue-size", "8")]);
    let (mut h, _bus) = harness(&e, RGBA_CAPS, None);
    for event in mask_events() {
        assert!(h.push_event(event));
    }
    const N: usize = 8;
    for t in 0..N {
        h.push(buffer(rgba_frame(t), t)).unwrap();
    }
    let out: Vec<gst::Buffer> = (0..N).map(|_| h.pull().unwrap()).collect();
    assert!(h.try_pull().is_none());
    assert_eq!(
        carried(&out[0]),
        [false, false],
        "the first frame finds the model idle"
    );
    for (t, pair) in out.windows(2).enumerate() {
        assert_eq!(
            pair[1].pts(),
            Some(gst::ClockTime::from_mseconds(40 * (t as u64 + 1)))
        );
        if carried(&pair[1])[0] {
            assert_eq!(
                meta_mattes(&pair[1]),
                meta_mattes(&pair[0]),
                "frame {} carries",
                t + 1
            );
        }
    }
}

/// Plays a pipeline with a fakesink named `sink` to EOS: the buffers that reached the sink, or
/// the first error.
fn play_to_eos(pipeline: &gst::Element) -> Result<usize, String> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let sink = pipeline
        .downcast_ref::<gst::Bin>()
        .unwrap()
        .by_name("sink")
        .unwrap();
    let count = std::sync::Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    let handler = sink.connect("handoff", false, move |_| {
        c.fetch_add(1, Ordering::SeqCst);
        None
    });
    let bus = pipeline.bus().unwrap();
    let result = pipeline
        .set_state(gst::State::Playing)
        .map_err(|e| e.to_string())
        .and_then(|_| {
            match bus.timed_pop_filtered(
                gst::ClockTime::from_seconds(60),
                &[gst::MessageType::Eos, gst::MessageType::Error],
            ) {
                Some(m) => match m.view() {
                    gst::MessageView::Error(e) => Err(format!("{} ({:?})", e.error(), e.debug())),
                    _ => Ok(count.load(Ordering::SeqCst)),
                },
                None => Err("no EOS within 60 s".into()),
            }
        });
    pipeline.set_state(gst::State::Null).unwrap();
    sink.disconnect(handler);
    result
}

fn launch(description: &str) -> gst::Element {
    init();
    let dir = common::fixture_dir("t256");
    let model = format!(
        "config=\"{}\" weights=\"{}\" device=cpu",
        dir.join("config.yaml").display(),
        weights_path("t256").display()
    );
    gst::parse::launch(&description.replace("MODEL", &model)).unwrap()
}

#[test]
fn every_output_mode_runs_in_a_pipeline_to_eos() {
    for mode in ["meta", "alpha", "overlay", "mask"] {
        let pipeline = launch(&format!(
            "videotestsrc num-buffers=3 ! video/x-raw,width=64,height=48 ! sam2refiner MODEL output={mode} \
             ! videoconvert ! fakesink name=sink signal-handoffs=true"
        ));
        assert_eq!(play_to_eos(&pipeline), Ok(3), "output={mode}");
    }
}

#[test]
fn a_pipeline_plays_again_after_stopping_and_pausing() {
    let pipeline = launch(
        "videotestsrc num-buffers=2 ! video/x-raw,width=64,height=48 ! sam2refiner MODEL output=alpha \
         ! fakesink name=sink signal-handoffs=true",
    );
    for _ in 0..3 {
        assert_eq!(
            pipeline.set_state(gst::State::Paused),
            Ok(gst::StateChangeSuccess::Async)
        );
        assert_eq!(
            pipeline.set_state(gst::State::Ready),
            Ok(gst::StateChangeSuccess::Success)
        );
    }
    for round in 0..3 {
        assert_eq!(play_to_eos(&pipeline), Ok(2), "round {round}");
    }
}

/// READY->PAUSED with `props`: the error it posts.
fn start_error(props: &[(&str, &str)]) -> String {
    common::element::start_error(element(props))
}

#[test]
fn model_files_that_cannot_load_fail_the_start_naming_the_file() {
    let scratch = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("element");
    std::fs::create_dir_all(&scratch).unwrap();
    let real = std::fs::read(weights_path("t256")).unwrap();
    let truncated = scratch.join("truncated.pt");
    std::fs::write(&truncated, &real[..real.len() / 2]).unwrap();
    let garbage = scratch.join("garbage.safetensors");
    std::fs::write(&garbage, b"not a model at all").unwrap();
    let other_config = weights_path("s192");
    let missing = scratch.join("no-such-file.pt");
    for (path, cause) in [
        (&missing, "no such file"),
        (&truncated, "not a readable PyTorch checkpoint"),
        (&garbage, "not a valid safetensors file"),
        (&other_config, "shape"),
    ] {
        let error = start_error(&[("weights", path.to_str().unwrap())]);
        assert!(error.contains(path.to_str().unwrap()), "{error}");
        assert!(error.contains(cause), "{error} should say {cause:?}");
    }
    let error = start_error(&[("config", "/no/such/config.yaml")]);
    assert!(error.contains("/no/such/config.yaml"), "{error}");
    let error = start_error(&[("config", "sam2.1_hiera_nano_unknown")]);
    assert!(error.contains("sam2.1_hiera_nano_unknown"), "{error}");
    let timeline = timeline(
        "bad-timeline.json",
        r#"{"prompts": [{"frame": 0, "object": 1, "colour": 3}]}"#,
    );
    let error = start_error(&[("prompts", &timeline)]);
    assert!(
        error.contains(&timeline) && error.contains("colour"),
        "{error}"
    );
    // An official config with the weights property unset: only the nano preset has weights built
    // in, and the element says so.
    init();
    let e = gst::ElementFactory::make("sam2refiner")
        .property("device", "cpu")
        .property("config", "sam2.1_hiera_t")
        .build()
        .unwrap();
    let bus = gst::Bus::new();
    e.set_bus(Some(&bus));
    assert!(e.set_state(gst::State::Paused).is_err());
    let m = bus.pop_filtered(&[gst::MessageType::Error]).unwrap();
    let gst::MessageView::Error(err) = m.view() else {
        unreachable!()
    };
    assert!(
        err.error().to_string().contains("no weights given"),
        "{}",
        err.error()
    );
    // Once the files are right, the same element starts; and with nothing set, on the built-in
    // nano model.
    e.set_state(gst::State::Null).unwrap();
    let defaults = gst::ElementFactory::make("sam2refiner")
        .property("device", "cpu")
        .build()
        .unwrap();
    for fine in [element(&[]), defaults] {
        assert_eq!(
            fine.set_state(gst::State::Paused),
            Ok(gst::StateChangeSuccess::Success)
        );
        fine.set_state(gst::State::Null).unwrap();
    }
}

#[test]
fn frame_numbers_follow_whole_nanosecond_timestamps() {
    // At 30 fps frame n starts at floor(n / 30 s) in whole ns (33333333 ns for frame 1): the meta
    // and the timeline still number it n.
    let e = element(&[]);
    let (mut h, _bus) = harness(
        &e,
        "video/x-raw,format=RGBA,width=64,height=48,framerate=30/1",
        None,
    );
    for n in 0..4u64 {
        let mut b = buffer(rgba_frame(n as usize), 0);
        b.get_mut()
            .unwrap()
            .set_pts(gst::ClockTime::from_nseconds(n * 1_000_000_000 / 30));
        h.push(b).unwrap();
        assert_eq!(meta::read(&h.pull().unwrap()).unwrap().0, n);
    }
}
