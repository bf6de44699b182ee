//! Every prompt door of `sam2refiner` (the timeline file, the upstream and the serialized
//! downstream event, the action signals, window clicks) gives the tracker's own result for the
//! same prompts on the same frames; bad prompts are refused with a reason and the stream goes on.

mod common;

use common::element::*;
use gst::prelude::*;
use gstsam2refiner::element::prompt_event::{PromptAction, PromptEvent, PromptSpec};

/// The acks posted so far: (source, accepted, outcome or reason).
fn acks(messages: &[gst::Message]) -> Vec<(String, bool, String)> {
    element_messages(messages, "sam2-prompt-ack")
        .iter()
        .map(|s| {
            let text = s
                .get::<String>("outcome")
                .or_else(|_| s.get::<String>("reason"))
                .unwrap();
            (
                s.get::<String>("source").unwrap(),
                s.get::<bool>("accepted").unwrap(),
                text,
            )
        })
        .collect()
}

fn assert_frames(got: &[gst::Buffer], expected: &[Vec<(u32, Vec<u8>)>]) {
    assert_eq!(got.len(), expected.len());
    for (t, (buffer, expected)) in got.iter().zip(expected).enumerate() {
        assert_eq!(&meta_mattes(buffer), expected, "frame {t}");
    }
}

#[test]
fn timeline_by_frame_and_by_time() {
    let expected = reference_mattes_of(TWO_OBJECTS, 4);
    assert!(
        expected[2]
            .iter()
            .any(|(o, m)| *o == 2 && m.iter().any(|&v| v > 127)),
        "object 2 shows on frame 2"
    );
    // The same prompts placed by stream time: frame 2 starts at 80 ms.
    let by_time = TWO_OBJECTS.replace(r#""frame": 2"#, r#""time": 0.08"#);
    for (name, json) in [
        ("by-frame.json", TWO_OBJECTS.to_owned()),
        ("by-time.json", by_time),
    ] {
        let path = timeline(name, &json);
        let e = element(&[("prompts", &path)]);
        let (mut h, bus) = harness(&e, RGBA_CAPS, None);
        let out: Vec<gst::Buffer> = (0..4).map(|t| push_pull(&mut h, t)).collect();
        assert_frames(&out, &expected);
        let acks = acks(&drain(&bus));
        assert_eq!(acks.len(), 3, "{name}: {acks:?}");
        assert!(
            acks.iter()
                .all(|(source, ok, _)| source == "timeline" && *ok),
            "{name}: {acks:?}"
        );
    }
}

#[test]
fn events_upstream_and_downstream() {
    let [(_, disc), (_, band)] = object_masks();
    let add = |object, mask: &Vec<u8>, pts| {
        PromptEvent::new(PromptAction::Add(PromptSpec {
            object,
            mask: Some((W as u32, H as u32, mask.clone())),
            pts,
            ..Default::default()
        }))
    };
    let e = element(&[]);
    let (mut h, bus) = harness(&e, RGBA_CAPS, None);
    let mut out = vec![push_pull(&mut h, 0)];
    // From the application, upstream: it applies to the next frame.
    assert!(h.push_upstream_event(add(1, &disc, None).upstream()));
    out.push(push_pull(&mut h, 1));
    // Serialized downstream, in order with the buffers.
    assert!(h.push_event(add(2, &band, None).downstream()));
    out.push(push_pull(&mut h, 2));
    // Made on a displayed frame (frame 1, at 40 ms): it corrects that frame's memory.
    assert!(
        h.push_upstream_event(add(2, &disc, Some(gst::ClockTime::from_mseconds(40))).upstream())
    );
    out.push(push_pull(&mut h, 3));
    let expected = reference_run(vec![
        Step::Frame(0),
        Step::Prompt(mask_prompt(1, 1, disc.clone())),
        Step::Frame(1),
        Step::Prompt(mask_prompt(2, 2, band)),
        Step::Frame(2),
        Step::Prompt(mask_prompt(1, 2, disc)),
        Step::Frame(3),
    ]);
    assert_frames(&out, &expected);
    let outcomes: Vec<String> = acks(&drain(&bus))
        .into_iter()
        .map(|(s, ok, o)| format!("{s} {ok} {o}"))
        .collect();
    assert_eq!(
        outcomes,
        [
            "event true queued",
            "event true queued",
            "event true applied"
        ]
    );
}

#[test]
fn action_signals() {
    let e = element(&[]);
    let (mut h, bus) = harness(&e, RGBA_CAPS, None);
    assert!(e.emit_by_name::<bool>("add-point", &[&1u32, &20.0f64, &24.0f64, &true]));
    assert!(e.emit_by_name::<bool>("add-box", &[&2u32, &2.0f64, &2.0f64, &18.0f64, &40.0f64]));
    let mut out = vec![push_pull(&mut h, 0)];
    assert!(e.emit_by_name::<bool>("prompt", &[&"sam2-prompt, object=(uint)3, points=<(double)0.5, (double)0.25>, labels=<1>, normalized=true"]));
    out.push(push_pull(&mut h, 1));
    assert!(e.emit_by_name::<bool>("remove-object", &[&2u32]));
    out.push(push_pull(&mut h, 2));
    let expected = reference_run(vec![
        Step::Prompt(click_prompt(0, 1, &[[20.0, 24.0]], &[1], None)),
        Step::Prompt(click_prompt(0, 2, &[], &[], Some([2.0, 2.0, 18.0, 40.0]))),
        Step::Frame(0),
        Step::Prompt(click_prompt(1, 3, &[[32.0, 12.0]], &[1], None)),
        Step::Frame(1),
    ]);
    assert_frames(&out[..2], &expected);
    let objects: Vec<u32> = meta_mattes(&out[2]).iter().map(|m| m.0).collect();
    assert_eq!(objects, [1, 3], "object 2 was removed");
    assert!(e.emit_by_name::<bool>("reset", &[]));
    assert!(
        meta_mattes(&push_pull(&mut h, 3)).is_empty(),
        "reset forgets every object"
    );
    let sources: Vec<String> = acks(&drain(&bus))
        .into_iter()
        .map(|(s, ok, o)| format!("{s} {ok} {o}"))
        .collect();
    assert_eq!(
        sources,
        [
            "click true queued",
            "signal true queued",
            "signal true queued",
            "signal true removed",
            "signal true reset"
        ]
    );
}

#[test]
fn window_clicks() {
    let e = element(&[]);
    let (mut h, bus) = harness(&e, RGBA_CAPS, None);
    let click = |button, x, y, shift: bool| {
        let modifier = if shift {
            gst_video::NavigationModifierType::SHIFT_MASK
        } else {
            gst_video::NavigationModifierType::empty()
        };
        gst_video::NavigationEvent::mouse_button_press_builder(button, x, y)
            .modifier_state(modifier)
            .build()
    };
    let mut out = vec![push_pull(&mut h, 0)];
    // Clicks refer to the frame on display (frame 0) and add up for the object on that frame.
    assert!(h.push_upstream_event(click(1, 20.0, 24.0, false)));
    assert!(h.push_upstream_event(click(3, 40.0, 10.0, false)));
    // Shift+click starts object 2; the key 'n' then a click starts object 3.
    assert!(h.push_upstream_event(click(1, 5.0, 20.0, true)));
    assert_eq!(e.property::<u32>("click-object"), 2);
    assert!(h.push_upstream_event(gst_video::NavigationEvent::new_key_press("n").build()));
    assert!(h.push_upstream_event(click(1, 60.0, 40.0, false)));
    assert_eq!(e.property::<u32>("click-object"), 3);
    out.push(push_pull(&mut h, 1));
    let expected = reference_run(vec![
        Step::Frame(0),
        Step::Prompt(click_prompt(0, 1, &[[20.0, 24.0]], &[1], None)),
        Step::Prompt(click_prompt(
            0,
            1,
            &[[20.0, 24.0], [40.0, 10.0]],
            &[1, 0],
            None,
        )),
        Step::Prompt(click_prompt(0, 2, &[[5.0, 20.0]], &[1], None)),
        Step::Prompt(click_prompt(0, 3, &[[60.0, 40.0]], &[1], None)),
        Step::Frame(1),
    ]);
    assert_frames(&out, &expected);
    let acks = acks(&drain(&bus));
    assert_eq!(acks.len(), 4, "{acks:?}");
    assert!(
        acks.iter()
            .all(|(s, ok, o)| s == "click" && *ok && o == "applied"),
        "{acks:?}"
    );
}

#[test]
fn bad_prompts_are_refused_and_the_stream_goes_on() {
    let e = element(&[("max-objects", "1")]);
    let (mut h, bus) = harness(&e, RGBA_CAPS, None);
    push_pull(&mut h, 0);
    let bad_event = gst::event::CustomUpstream::new(
        gst::Structure::builder("sam2-prompt")
            .field("object", 1u32)
            .field("box", gst::Array::new([1.0f64, 2.0, 3.0]))
            .build(),
    );
    assert!(!h.push_upstream_event(bad_event));
    assert!(!e.emit_by_name::<bool>("prompt", &[&"sam2-prompt, object=(uint)1, colour=red"]));
    assert!(!e.emit_by_name::<bool>("prompt", &[&"not a structure ("]));
    // Well-formed but wrong for this stream: refused by the worker, so the signal returns true.
    assert!(e.emit_by_name::<bool>("add-point", &[&1u32, &640.0f64, &24.0f64, &true]));
    assert!(e.emit_by_name::<bool>("add-point", &[&1u32, &20.0f64, &24.0f64, &true]));
    assert!(e.emit_by_name::<bool>("add-point", &[&2u32, &30.0f64, &24.0f64, &true]));
    let out = push_pull(&mut h, 1);
    assert_eq!(
        meta_mattes(&out).iter().map(|m| m.0).collect::<Vec<_>>(),
        [1]
    );
    let messages = drain(&bus);
    let acks = acks(&messages);
    let expected = [
        (false, "box"),
        (false, "colour"),
        (false, "not a structure"),
        (false, "outside"),
        (true, "queued"),
        (false, "max-objects"),
    ];
    assert_eq!(acks.len(), expected.len(), "{acks:?}");
    for ((_, ok, text), (want_ok, want_text)) in acks.iter().zip(expected) {
        assert_eq!(*ok, want_ok, "{text}");
        assert!(
            text.contains(want_text),
            "{text:?} should say {want_text:?}"
        );
    }
    assert_eq!(warnings(&messages), 5, "each refusal is also a warning");
}

#[test]
fn prompts_before_the_element_runs_are_refused() {
    let e = element(&[]);
    let bus = gst::Bus::new();
    e.set_bus(Some(&bus));
    assert!(!e.emit_by_name::<bool>("add-point", &[&1u32, &20.0f64, &24.0f64, &true]));
    let acks = acks(&drain(&bus));
    assert_eq!(acks.len(), 1);
    assert!(!acks[0].1 && acks[0].2.contains("not running"), "{acks:?}");
}

#[test]
fn prompts_before_the_first_caps_wait_for_the_first_frame() {
    let e = element(&[]);
    let bus = gst::Bus::new();
    e.set_bus(Some(&bus));
    let mut h = gst_check::Harness::with_element(&e, Some("sink"), Some("src"));
    h.play();
    // Running, but no caps yet: the frame size is unknown.
    assert!(e.emit_by_name::<bool>("add-point", &[&1u32, &20.0f64, &24.0f64, &true]));
    h.set_src_caps_str(RGBA_CAPS);
    let out = push_pull(&mut h, 0);
    let expected = reference_run(vec![
        Step::Prompt(click_prompt(0, 1, &[[20.0, 24.0]], &[1], None)),
        Step::Frame(0),
    ]);
    assert_frames(&[out], &expected);
    let acks = acks(&drain(&bus));
    assert_eq!(acks.len(), 1, "{acks:?}");
    assert!(acks[0].1, "{acks:?}");
}
