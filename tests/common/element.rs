//! Helpers of the element tests: the plugin registered once, a harness around `sam2refiner` on
//! the committed fixture model, synthetic frames and the tracker's own results to compare with.

use std::sync::Once;

use gst::prelude::*;
use gst_check::Harness;

use super::*;

pub fn init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        gst::init().unwrap();
        gstsam2refiner::plugin_register_static().unwrap();
    });
}

/// `sam2refiner` on the t256 fixture model, with `props` (as gst-launch strings) set, on the CPU.
pub fn element(props: &[(&str, &str)]) -> gst::Element {
    init();
    let dir = fixture_dir("t256");
    let mut builder = gst::ElementFactory::make("sam2refiner")
        .property(
            "config",
            dir.join("config.yaml").to_str().unwrap().to_owned(),
        )
        .property("weights", weights_path("t256").to_str().unwrap().to_owned())
        .property("device", "cpu");
    for (name, value) in props {
        builder = builder.property_from_str(name, value);
    }
    builder.build().unwrap()
}

/// A harness around the element, with its bus collecting messages, fed `caps`; downstream
/// accepts `sink_caps` when given (set first, so that negotiation sees them).
pub fn harness(element: &gst::Element, caps: &str, sink_caps: Option<&str>) -> (Harness, gst::Bus) {
    let bus = gst::Bus::new();
    element.set_bus(Some(&bus));
    let mut h = Harness::with_element(element, Some("sink"), Some("src"));
    if let Some(s) = sink_caps {
        h.set_sink_caps_str(s);
    }
    h.set_src_caps_str(caps);
    (h, bus)
}

pub const W: usize = 64;
pub const H: usize = 48;

/// Frame t: an RGBA 64x48 gradient with a bright disc moving right.
pub fn rgba_frame(t: usize) -> Vec<u8> {
    let (cx, cy) = (20.0 + 3.0 * t as f32, 24.0);
    let mut data = Vec::with_capacity(W * H * 4);
    for y in 0..H {
        for x in 0..W {
            let inside = (x as f32 - cx).powi(2) + (y as f32 - cy).powi(2) < 100.0;
            let px = if inside {
                [240, 200, 40, 255]
            } else {
                [(x * 4) as u8, (y * 5) as u8, 90, 255]
            };
            data.extend(px);
        }
    }
    data
}

pub fn buffer(data: Vec<u8>, t: usize) -> gst::Buffer {
    let mut b = gst::Buffer::from_mut_slice(data);
    {
        let b = b.get_mut().unwrap();
        b.set_pts(gst::ClockTime::from_mseconds(40 * t as u64));
        b.set_duration(gst::ClockTime::from_mseconds(40));
    }
    b
}

pub const RGBA_CAPS: &str = "video/x-raw,format=RGBA,width=64,height=48,framerate=25/1";

/// Every message now on the bus, in order (the bus is left empty).
pub fn drain(bus: &gst::Bus) -> Vec<gst::Message> {
    std::iter::from_fn(|| bus.pop()).collect()
}

/// The element messages named `name` among `messages`.
pub fn element_messages(messages: &[gst::Message], name: &str) -> Vec<gst::Structure> {
    messages
        .iter()
        .filter_map(|m| match m.view() {
            gst::MessageView::Element(e) => e
                .structure()
                .filter(|s| s.name() == name)
                .map(|s| s.to_owned()),
            _ => None,
        })
        .collect()
}

/// How many warnings are among `messages`.
pub fn warnings(messages: &[gst::Message]) -> usize {
    messages
        .iter()
        .filter(|m| m.type_() == gst::MessageType::Warning)
        .count()
}

/// The tracker the element runs (same config, options and frame path), for comparisons.
pub fn reference_tracker() -> gstsam2refiner::tracker::Tracker {
    use gstsam2refiner::model::BuildMode;
    use gstsam2refiner::tracker::{FrameResize, Tracker, TrackerOptions};
    let mut config = config("t256");
    config.apply_build_overrides(BuildMode::Video);
    let mut options = TrackerOptions::for_config(&config);
    options.frame_resize = FrameResize::Bilinear;
    Tracker::new(model("t256"), options)
}

/// An RGBA frame as the tracker takes it (RGB).
pub fn rgb_image(rgba: &[u8]) -> gstsam2refiner::image::RgbImage {
    gstsam2refiner::image::RgbImage {
        width: W,
        height: H,
        pixels: rgba
            .chunks_exact(4)
            .flat_map(|p| [p[0], p[1], p[2]])
            .collect(),
    }
}

/// A prompt timeline file in the target's scratch space.
pub fn timeline(name: &str, json: &str) -> String {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("element");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, json).unwrap();
    path.to_str().unwrap().to_owned()
}

/// Two objects: a click on the disc on frame 0; on frame 2 a click on the disc again and a box on
/// the left. Random weights give empty masks on tracked frames, so the prompted frames (0, 2) are
/// the ones with content to compare.
pub const TWO_OBJECTS: &str = r#"{"prompts": [{"frame": 0, "object": 1, "points": [[20, 24]], "labels": [1]},
                                             {"frame": 2, "object": 1, "points": [[26, 24]], "labels": [1]},
                                             {"frame": 2, "object": 2, "box": [2, 2, 18, 40]}]}"#;

/// What the reference tracker does, in the element's order.
pub enum Step {
    /// Push test frame t (the tracker's frame id is the count of frames pushed before).
    Frame(usize),
    /// Add a prompt (its `frame` is a tracker frame id).
    Prompt(gstsam2refiner::prompt::Prompt),
}

/// The mattes after each `Step::Frame`: per frame, (object, matte).
pub fn reference_run(steps: Vec<Step>) -> Vec<Vec<(u32, Vec<u8>)>> {
    let mut tracker = reference_tracker();
    let mut id = 0u64;
    let mut out = Vec::new();
    for step in steps {
        match step {
            Step::Prompt(p) => {
                tracker.add_prompt(&p).unwrap();
            }
            Step::Frame(t) => {
                let result = tracker.push_frame(id, &rgb_image(&rgba_frame(t))).unwrap();
                out.push(tracker.frame_mattes(&result, 1.0).unwrap());
                id += 1;
            }
        }
    }
    out
}

/// The reference mattes of `prompts` (a timeline by frame index) on frames 0..n: the element
/// applies a frame's timeline prompts before it tracks the frame.
pub fn reference_mattes_of(prompts: &str, n: usize) -> Vec<Vec<(u32, Vec<u8>)>> {
    let prompts = gstsam2refiner::prompt::parse_prompts(prompts).unwrap();
    let mut steps = Vec::new();
    for t in 0..n {
        steps.extend(
            prompts
                .iter()
                .filter(|p| p.frame == t as u64)
                .cloned()
                .map(Step::Prompt),
        );
        steps.push(Step::Frame(t));
    }
    reference_run(steps)
}

/// The mattes a `meta` output buffer carries, as (object, matte).
pub fn meta_mattes(buffer: &gst::Buffer) -> Vec<(u32, Vec<u8>)> {
    let (_, masks) = gstsam2refiner::element::meta::read(buffer).expect("the buffer has the meta");
    masks
        .iter()
        .map(|m| {
            (
                m.object,
                gstsam2refiner::element::meta::gray8_pixels(&m.mask)
                    .unwrap()
                    .2,
            )
        })
        .collect()
}

/// Pushes test frame t and pulls its output.
pub fn push_pull(h: &mut Harness, t: usize) -> gst::Buffer {
    h.push(buffer(rgba_frame(t), t)).unwrap();
    h.pull().unwrap()
}

/// A mask prompt for the reference tracker.
pub fn mask_prompt(frame: u64, object: u32, data: Vec<u8>) -> gstsam2refiner::prompt::Prompt {
    let mask = gstsam2refiner::prompt::PromptMask {
        width: W,
        height: H,
        data,
    };
    gstsam2refiner::prompt::Prompt {
        frame,
        object,
        points: vec![],
        labels: vec![],
        bbox: None,
        mask: Some(mask),
    }
}

/// A click or box prompt for the reference tracker.
pub fn click_prompt(
    frame: u64,
    object: u32,
    points: &[[f32; 2]],
    labels: &[i32],
    bbox: Option<[f32; 4]>,
) -> gstsam2refiner::prompt::Prompt {
    gstsam2refiner::prompt::Prompt {
        frame,
        object,
        points: points.to_vec(),
        labels: labels.to_vec(),
        bbox,
        mask: None,
    }
}

/// Object 1's mask on frame 0: the disc. Object 2's: a band on the left, clear of the disc.
/// With `use_mask_input_as_output_without_sam` a mask prompt is the frame's output, so these
/// mattes have known shapes even with random weights.
pub fn object_masks() -> [(u32, Vec<u8>); 2] {
    let disc = rgba_frame(0)
        .chunks_exact(4)
        .map(|p| if p[0] == 240 { 255 } else { 0 })
        .collect();
    let band = (0..H)
        .flat_map(|y| {
            (0..W).map(move |x| {
                if x < 8 && (4..44).contains(&y) {
                    255
                } else {
                    0
                }
            })
        })
        .collect();
    [(1, disc), (2, band)]
}

/// The prompt events of `object_masks`, for frame 0.
pub fn mask_events() -> Vec<gst::Event> {
    use gstsam2refiner::element::prompt_event::{PromptAction, PromptEvent, PromptSpec};
    object_masks()
        .into_iter()
        .map(|(object, data)| {
            let spec = PromptSpec {
                object,
                mask: Some((W as u32, H as u32, data)),
                ..Default::default()
            };
            PromptEvent::new(PromptAction::Add(spec)).downstream()
        })
        .collect()
}

/// The reference mattes of `object_masks` prompted on frame 0, on frames 0..n.
pub fn reference_mattes(n: usize) -> Vec<Vec<(u32, Vec<u8>)>> {
    let mut steps: Vec<Step> = object_masks()
        .into_iter()
        .map(|(o, m)| Step::Prompt(mask_prompt(0, o, m)))
        .collect();
    steps.extend((0..n).map(Step::Frame));
    reference_run(steps)
}
/// The union of the mattes (what the alpha and mask outputs carry).
pub fn union(mattes: &[(u32, Vec<u8>)]) -> Vec<u8> {
    let mut u = vec![0u8; W * H];
    for (_, m) in mattes {
        for (a, b) in u.iter_mut().zip(m) {
            *a = (*a).max(*b);
        }
    }
    u
}

/// READY->PAUSED of an element that must not start: the error it posts, as "message debug".
pub fn start_error(element: gst::Element) -> String {
    let bus = gst::Bus::new();
    element.set_bus(Some(&bus));
    assert!(
        element.set_state(gst::State::Paused).is_err(),
        "{} must not start",
        element.name()
    );
    let m = bus
        .pop_filtered(&[gst::MessageType::Error])
        .expect("an error message");
    let gst::MessageView::Error(err) = m.view() else {
        unreachable!()
    };
    element.set_state(gst::State::Null).unwrap();
    format!("{} {:?}", err.error(), err.debug())
}
