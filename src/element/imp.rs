//! `sam2refiner`'s GObject side: properties, pads, events, queries and state changes. The work
//! happens on the worker thread (`worker.rs`); the source pad's task pushes what it returns.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{LazyLock, Mutex, MutexGuard};

use candle_core::DType;
use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;

use super::prompt_event::{PromptAction, PromptEvent, PromptSpec};
use super::render::{INPUT_FORMATS, output_formats};
use super::worker::{Job, Output, Worker, WorkerSettings};
use super::{OutputMode, RefineMemoryProp, RefineProp, SkipPolicy, timeline};
use crate::device::select_device;
use crate::model::refiner::Refiner;
use crate::model::weights::build_model;
use crate::model::{BuildMode, Sam2Config, nano};
use crate::tracker::{FrameResize, Tracker, TrackerOptions};

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "sam2refiner",
        gst::DebugColorFlags::empty(),
        Some("SAM 2 segmentation and matting"),
    )
});

const DEFAULT_CONFIG: &str = nano::PRESET;
const DEFAULT_DEVICE: &str = "auto";
const DEFAULT_OUTPUT: OutputMode = OutputMode::Meta;
const DEFAULT_SOFTNESS: f64 = 1.0;
const DEFAULT_CLICK_OBJECT: u32 = 1;
const DEFAULT_SKIP_POLICY: SkipPolicy = SkipPolicy::None;
const DEFAULT_TRACK_EVERY: u32 = 2;
const DEFAULT_MAX_OBJECTS: u32 = 16;
const DEFAULT_MAX_CONDITIONING: u32 = 16;
const DEFAULT_FILL_HOLE_AREA: i32 = -1;
const DEFAULT_FEATURE_HISTORY: u32 = 4;
const DEFAULT_QUEUE_SIZE: u32 = 2;
/// Live video is the element's first use: one window per object, two encoder passes a frame.
const DEFAULT_REFINE: RefineProp = RefineProp::Roi;

#[derive(Debug, Clone)]
struct Settings {
    config: String,
    weights: Option<PathBuf>,
    refiner_weights: Option<PathBuf>,
    refine: RefineProp,
    refine_memory: RefineMemoryProp,
    refine_pin_clicks: bool,
    device: String,
    output: OutputMode,
    matte_objects: String,
    edge_softness: f64,
    click_object: u32,
    prompts: Option<PathBuf>,
    skip_policy: SkipPolicy,
    track_every: u32,
    max_objects: u32,
    max_conditioning_memories: u32,
    fill_hole_area: i32,
    non_overlap: bool,
    feature_history: u32,
    queue_size: u32,
    latency: gst::ClockTime,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            config: DEFAULT_CONFIG.into(),
            weights: None,
            refiner_weights: None,
            refine: DEFAULT_REFINE,
            refine_memory: RefineMemoryProp::Sam2,
            refine_pin_clicks: true,
            device: DEFAULT_DEVICE.into(),
            output: DEFAULT_OUTPUT,
            matte_objects: String::new(),
            edge_softness: DEFAULT_SOFTNESS,
            click_object: DEFAULT_CLICK_OBJECT,
            prompts: None,
            skip_policy: DEFAULT_SKIP_POLICY,
            track_every: DEFAULT_TRACK_EVERY,
            max_objects: DEFAULT_MAX_OBJECTS,
            max_conditioning_memories: DEFAULT_MAX_CONDITIONING,
            fill_hole_area: DEFAULT_FILL_HOLE_AREA,
            non_overlap: false,
            feature_history: DEFAULT_FEATURE_HISTORY,
            queue_size: DEFAULT_QUEUE_SIZE,
            latency: gst::ClockTime::ZERO,
        }
    }
}

/// What exists between READY→PAUSED and PAUSED→READY.
struct State {
    worker: Worker,
    /// Frames received since the start of the stream (for the every-nth skip policy).
    frames: u64,
    /// The PTS of the last buffer pushed downstream: the frame a viewer sees, which a click
    /// refers to.
    last_pts: Option<gst::ClockTime>,
    /// A key press asked for a new object on the next click.
    new_object_next: bool,
}

pub struct Sam2Refiner {
    sinkpad: gst::Pad,
    srcpad: gst::Pad,
    settings: Mutex<Settings>,
    state: Mutex<Option<State>>,
    flushing: AtomicBool,
    /// The largest object id any prompt used: a new object from a click takes the next one.
    max_object: AtomicU32,
    /// The outcome of the last push downstream, for the chain function to return.
    last_flow: Mutex<Result<gst::FlowSuccess, gst::FlowError>>,
}

#[glib::object_subclass]
impl ObjectSubclass for Sam2Refiner {
    const NAME: &'static str = "GstSam2Refiner";
    type Type = super::Sam2Refiner;
    type ParentType = gst::Element;

    fn with_class(klass: &Self::Class) -> Self {
        let sinkpad = gst::Pad::builder_from_template(&klass.pad_template("sink").unwrap())
            .chain_function(|pad, parent, buffer| {
                Sam2Refiner::catch_panic_pad_function(
                    parent,
                    || Err(gst::FlowError::Error),
                    |this| this.sink_chain(pad, buffer),
                )
            })
            .event_function(|pad, parent, event| {
                Sam2Refiner::catch_panic_pad_function(
                    parent,
                    || false,
                    |this| this.sink_event(pad, event),
                )
            })
            .query_function(|pad, parent, query| {
                Sam2Refiner::catch_panic_pad_function(
                    parent,
                    || false,
                    |this| this.sink_query(pad, query),
                )
            })
            .build();
        let srcpad = gst::Pad::builder_from_template(&klass.pad_template("src").unwrap())
            .event_function(|pad, parent, event| {
                Sam2Refiner::catch_panic_pad_function(
                    parent,
                    || false,
                    |this| this.src_event(pad, event),
                )
            })
            .query_function(|pad, parent, query| {
                Sam2Refiner::catch_panic_pad_function(
                    parent,
                    || false,
                    |this| this.src_query(pad, query),
                )
            })
            .build();
        Self {
            sinkpad,
            srcpad,
            settings: Mutex::new(Settings::default()),
            state: Mutex::new(None),
            flushing: AtomicBool::new(true),
            max_object: AtomicU32::new(0),
            last_flow: Mutex::new(Ok(gst::FlowSuccess::Ok)),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ObjectImpl for Sam2Refiner {
    fn properties() -> &'static [glib::ParamSpec] {
        static PROPERTIES: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
            vec![
                glib::ParamSpecString::builder("config")
                    .nick("Config")
                    .blurb("SAM 2 config: an official Hydra YAML file, or a preset: sam2.1_nano (ours, weights built in), sam2.1_hiera_t, sam2.1_hiera_s, sam2.1_hiera_b+, sam2.1_hiera_l, sam2_hiera_t, ...")
                    .default_value(Some(DEFAULT_CONFIG))
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("weights")
                    .nick("Weights")
                    .blurb("Model weights: an official .pt checkpoint or a .safetensors file with the same keys; unset: the built-in weights of sam2.1_nano (the only config that has them)")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("refiner-weights")
                    .nick("Refiner weights")
                    .blurb("SAM2Refiner modules (a .safetensors refiner file) trained for this model's weights: masks come out refined where `refine` says; unset: plain SAM 2. A file trained for other weights is refused")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("refine", DEFAULT_REFINE)
                    .nick("Refine")
                    .blurb("Where the refiner looks, when refiner-weights is set: off (plain SAM 2), quadrants (the frame's four quadrants: five encoder passes a frame), roi (one window on each object: two passes a frame for one object). A refiner whose modules read no crops (the shipped nano one: only its guided filter is live) costs no extra encoder pass in either mode")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("refine-memory", RefineMemoryProp::Sam2)
                    .nick("Refine memory")
                    .blurb("What the tracker remembers of a refined frame: sam2 (SAM 2's own mask, the memory path unchanged; the default, which tracks better on our held-out clips) or refined (the refined mask)")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoolean::builder("refine-pin-clicks")
                    .nick("Refine pin clicks")
                    .blurb("On a prompted frame, hold each click's label in the refiner's guided filter around the click (within 1/32 of the model's input size), so that the refined matte keeps a click the model's coarse mask missed; off: the filter sees SAM 2's mask alone")
                    .default_value(true)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("device")
                    .nick("Device")
                    .blurb("Where the model runs: auto (the first GPU if this build has CUDA and one answers, else the CPU), cpu, cuda or cuda:N")
                    .default_value(Some(DEFAULT_DEVICE))
                    .mutable_ready()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("output", DEFAULT_OUTPUT)
                    .nick("Output")
                    .blurb("What comes out: meta (frames unchanged, Sam2MaskMeta per buffer), alpha (RGBA/BGRA/ARGB/ABGR/AYUV with the matte as alpha), overlay (preview), mask (GRAY8 matte)")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("matte-objects")
                    .nick("Matte objects")
                    .blurb("Comma-separated object ids whose mattes make the alpha and mask outputs (empty: every object)")
                    .default_value(Some(""))
                    .mutable_playing()
                    .build(),
                glib::ParamSpecDouble::builder("edge-softness")
                    .nick("Edge softness")
                    .blurb("Matte softness: alpha = sigmoid(logit / softness); larger is softer, 0 is a hard cut-out")
                    .minimum(0.0)
                    .maximum(100.0)
                    .default_value(DEFAULT_SOFTNESS)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("click-object")
                    .nick("Click object")
                    .blurb("The object window clicks prompt (left button: positive point, right button: negative point; Shift+click, or the key 'n' before a click, starts a new object and sets this property to its id)")
                    .default_value(DEFAULT_CLICK_OBJECT)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecString::builder("prompts")
                    .nick("Prompt timeline")
                    .blurb("A JSON timeline of prompts (the CLI's schema; each with \"frame\": a frame number, or \"time\": a stream time in seconds; after a seek, the entries before the new position are left out until a seek goes back before them)")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("skip-policy", DEFAULT_SKIP_POLICY)
                    .nick("Skip policy")
                    .blurb("When inference is slower than the stream: none (track every frame; upstream waits), every-nth (track one frame in track-every), realtime (frames arriving while the model is busy are not tracked); untracked frames carry the last masks, marked as carried in the meta")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("track-every")
                    .nick("Track every")
                    .blurb("With skip-policy=every-nth: track one frame in this many")
                    .minimum(1)
                    .default_value(DEFAULT_TRACK_EVERY)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("max-objects")
                    .nick("Max objects")
                    .blurb("The most objects tracked at once; a prompt for one more is rejected")
                    .minimum(1)
                    .default_value(DEFAULT_MAX_OBJECTS)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("max-conditioning-memories")
                    .nick("Max conditioning memories")
                    .blurb("Prompted frames each object remembers; past the cap the first and the most recent are kept")
                    .minimum(2)
                    .default_value(DEFAULT_MAX_CONDITIONING)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecInt::builder("fill-hole-area")
                    .nick("Fill hole area")
                    .blurb("Fill background holes of up to this many low-resolution pixels in each mask (0: off; -1: the config's, else 8 as the official video predictor)")
                    .minimum(-1)
                    .default_value(DEFAULT_FILL_HOLE_AREA)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoolean::builder("non-overlap")
                    .nick("Non-overlapping masks")
                    .blurb("Give each pixel to the highest-scoring object only")
                    .default_value(false)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("feature-history")
                    .nick("Feature history")
                    .blurb("Frames whose features are kept so that a prompt made on a displayed frame applies to it (older: to the next frame)")
                    .minimum(1)
                    .maximum(64)
                    .default_value(DEFAULT_FEATURE_HISTORY)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("queue-size")
                    .nick("Queue size")
                    .blurb("Frames waiting for the model before upstream blocks (besides the one being tracked and the next one, which the model encodes meanwhile)")
                    .minimum(1)
                    .maximum(64)
                    .default_value(DEFAULT_QUEUE_SIZE)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt64::builder("latency")
                    .nick("Latency")
                    .blurb("Processing latency reported to the pipeline, in ns (0: the longest frame processing time measured so far, updated as it grows)")
                    .default_value(0)
                    .mutable_ready()
                    .build(),
            ]
        });
        PROPERTIES.as_ref()
    }

    fn signals() -> &'static [glib::subclass::Signal] {
        static SIGNALS: LazyLock<Vec<glib::subclass::Signal>> = LazyLock::new(|| {
            let send = |obj: &super::Sam2Refiner,
                        action: PromptAction,
                        source: &'static str|
             -> bool { obj.imp().send_prompt(action, source) };
            vec![
                glib::subclass::Signal::builder("add-point")
                    .action()
                    .param_types([
                        u32::static_type(),
                        f64::static_type(),
                        f64::static_type(),
                        bool::static_type(),
                    ])
                    .return_type::<bool>()
                    .class_handler(move |args| {
                        let obj = args[0].get::<super::Sam2Refiner>().expect("signal arg");
                        let (object, x, y, positive) = (
                            args[1].get::<u32>().expect("signal arg"),
                            args[2].get::<f64>().expect("signal arg"),
                            args[3].get::<f64>().expect("signal arg"),
                            args[4].get::<bool>().expect("signal arg"),
                        );
                        let spec = PromptSpec {
                            object,
                            points: vec![[x as f32, y as f32]],
                            labels: vec![i32::from(positive)],
                            ..Default::default()
                        };
                        Some(send(&obj, PromptAction::Add(spec), "click").to_value())
                    })
                    .build(),
                glib::subclass::Signal::builder("add-box")
                    .action()
                    .param_types([
                        u32::static_type(),
                        f64::static_type(),
                        f64::static_type(),
                        f64::static_type(),
                        f64::static_type(),
                    ])
                    .return_type::<bool>()
                    .class_handler(move |args| {
                        let obj = args[0].get::<super::Sam2Refiner>().expect("signal arg");
                        let object = args[1].get::<u32>().expect("signal arg");
                        let c: Vec<f32> = (2..6)
                            .map(|i| args[i].get::<f64>().expect("signal arg") as f32)
                            .collect();
                        let spec = PromptSpec {
                            object,
                            bbox: Some([c[0], c[1], c[2], c[3]]),
                            ..Default::default()
                        };
                        Some(send(&obj, PromptAction::Add(spec), "signal").to_value())
                    })
                    .build(),
                glib::subclass::Signal::builder("prompt")
                    .action()
                    .param_types([String::static_type()])
                    .return_type::<bool>()
                    .class_handler(move |args| {
                        let obj = args[0].get::<super::Sam2Refiner>().expect("signal arg");
                        let text = args[1].get::<String>().expect("signal arg");
                        let parsed = text
                            .parse::<gst::Structure>()
                            .map_err(|e| format!("not a structure: {e}"))
                            .and_then(|s| PromptEvent::from_structure(&s));
                        Some(
                            match parsed {
                                Ok(p) => send(&obj, p.action, "signal"),
                                Err(reason) => obj.imp().reject("signal", &reason),
                            }
                            .to_value(),
                        )
                    })
                    .build(),
                glib::subclass::Signal::builder("remove-object")
                    .action()
                    .param_types([u32::static_type()])
                    .return_type::<bool>()
                    .class_handler(move |args| {
                        let obj = args[0].get::<super::Sam2Refiner>().expect("signal arg");
                        let object = args[1].get::<u32>().expect("signal arg");
                        Some(send(&obj, PromptAction::Remove { object }, "signal").to_value())
                    })
                    .build(),
                glib::subclass::Signal::builder("clear-object")
                    .action()
                    .param_types([u32::static_type()])
                    .return_type::<bool>()
                    .class_handler(move |args| {
                        let obj = args[0].get::<super::Sam2Refiner>().expect("signal arg");
                        let object = args[1].get::<u32>().expect("signal arg");
                        Some(send(&obj, PromptAction::Clear { object }, "signal").to_value())
                    })
                    .build(),
                glib::subclass::Signal::builder("reset")
                    .action()
                    .return_type::<bool>()
                    .class_handler(move |args| {
                        let obj = args[0].get::<super::Sam2Refiner>().expect("signal arg");
                        Some(send(&obj, PromptAction::Reset, "signal").to_value())
                    })
                    .build(),
            ]
        });
        SIGNALS.as_ref()
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        let mut s = lock(&self.settings);
        let path = |v: &glib::Value| {
            v.get::<Option<String>>()
                .expect("type checked")
                .filter(|p| !p.is_empty())
                .map(PathBuf::from)
        };
        match pspec.name() {
            "config" => {
                s.config = value
                    .get::<Option<String>>()
                    .expect("type checked")
                    .unwrap_or_default()
            }
            "weights" => s.weights = path(value),
            "refiner-weights" => s.refiner_weights = path(value),
            "refine" => s.refine = value.get().expect("type checked"),
            "refine-memory" => s.refine_memory = value.get().expect("type checked"),
            "refine-pin-clicks" => s.refine_pin_clicks = value.get().expect("type checked"),
            "device" => {
                s.device = value
                    .get::<Option<String>>()
                    .expect("type checked")
                    .unwrap_or_else(|| DEFAULT_DEVICE.into())
            }
            "output" => s.output = value.get().expect("type checked"),
            "matte-objects" => {
                s.matte_objects = value
                    .get::<Option<String>>()
                    .expect("type checked")
                    .unwrap_or_default()
            }
            "edge-softness" => s.edge_softness = value.get().expect("type checked"),
            "click-object" => s.click_object = value.get().expect("type checked"),
            "prompts" => s.prompts = path(value),
            "skip-policy" => s.skip_policy = value.get().expect("type checked"),
            "track-every" => s.track_every = value.get().expect("type checked"),
            "max-objects" => s.max_objects = value.get().expect("type checked"),
            "max-conditioning-memories" => {
                s.max_conditioning_memories = value.get().expect("type checked")
            }
            "fill-hole-area" => s.fill_hole_area = value.get().expect("type checked"),
            "non-overlap" => s.non_overlap = value.get().expect("type checked"),
            "feature-history" => s.feature_history = value.get().expect("type checked"),
            "queue-size" => s.queue_size = value.get().expect("type checked"),
            "latency" => {
                s.latency = gst::ClockTime::from_nseconds(value.get().expect("type checked"))
            }
            other => unreachable!("no property {other}"),
        }
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        let s = lock(&self.settings);
        let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
        match pspec.name() {
            "config" => s.config.to_value(),
            "weights" => path(&s.weights).to_value(),
            "refiner-weights" => path(&s.refiner_weights).to_value(),
            "refine" => s.refine.to_value(),
            "refine-memory" => s.refine_memory.to_value(),
            "refine-pin-clicks" => s.refine_pin_clicks.to_value(),
            "device" => s.device.to_value(),
            "output" => s.output.to_value(),
            "matte-objects" => s.matte_objects.to_value(),
            "edge-softness" => s.edge_softness.to_value(),
            "click-object" => s.click_object.to_value(),
            "prompts" => path(&s.prompts).to_value(),
            "skip-policy" => s.skip_policy.to_value(),
            "track-every" => s.track_every.to_value(),
            "max-objects" => s.max_objects.to_value(),
            "max-conditioning-memories" => s.max_conditioning_memories.to_value(),
            "fill-hole-area" => s.fill_hole_area.to_value(),
            "non-overlap" => s.non_overlap.to_value(),
            "feature-history" => s.feature_history.to_value(),
            "queue-size" => s.queue_size.to_value(),
            "latency" => s.latency.nseconds().to_value(),
            other => unreachable!("no property {other}"),
        }
    }

    fn constructed(&self) {
        self.parent_constructed();
        let obj = self.obj();
        obj.add_pad(&self.sinkpad).expect("a new pad");
        obj.add_pad(&self.srcpad).expect("a new pad");
    }
}

impl GstObjectImpl for Sam2Refiner {}

impl ElementImpl for Sam2Refiner {
    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static METADATA: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
            gst::subclass::ElementMetadata::new(
                "SAM 2 segmentation and matting",
                "Filter/Effect/Video",
                "Segments and tracks objects from clicks, boxes or masks (SAM 2, on the GPU or the CPU) and outputs their mattes: \
                 as Sam2MaskMeta metadata, in the alpha channel, as a preview overlay or as a GRAY8 matte stream. Prompts come from \
                 the sam2-prompt event (upstream from the application, or serialized downstream; fields action, object, points, \
                 labels, box, mask, normalized, pts), window clicks (navigation events), the prompts timeline file, and the action \
                 signals add-point(object, x, y, positive), add-box(object, x0, y0, x1, y1), prompt(\"sam2-prompt, ...\" as a \
                 string), remove-object(object), clear-object(object) and reset(), in input pixels, for the next frame; each \
                 returns whether the prompt reached the model, and each prompt is acknowledged by a sam2-prompt-ack element \
                 message (source, object, accepted, outcome or reason).",
                "sam2refiner developers",
            )
        });
        Some(&*METADATA)
    }

    fn pad_templates() -> &'static [gst::PadTemplate] {
        static TEMPLATES: LazyLock<Vec<gst::PadTemplate>> = LazyLock::new(|| {
            let caps = |formats: &[gst_video::VideoFormat]| {
                gst_video::VideoCapsBuilder::new()
                    .format_list(formats.iter().copied())
                    .build()
            };
            let mut out = Vec::new();
            for mode in [
                OutputMode::Meta,
                OutputMode::Alpha,
                OutputMode::Overlay,
                OutputMode::Mask,
            ] {
                for f in output_formats(mode) {
                    if !out.contains(f) {
                        out.push(*f);
                    }
                }
            }
            vec![
                gst::PadTemplate::new(
                    "sink",
                    gst::PadDirection::Sink,
                    gst::PadPresence::Always,
                    &caps(INPUT_FORMATS),
                )
                .unwrap(),
                gst::PadTemplate::new(
                    "src",
                    gst::PadDirection::Src,
                    gst::PadPresence::Always,
                    &caps(&out),
                )
                .unwrap(),
            ]
        });
        TEMPLATES.as_ref()
    }

    fn change_state(
        &self,
        transition: gst::StateChange,
    ) -> Result<gst::StateChangeSuccess, gst::StateChangeError> {
        if transition == gst::StateChange::ReadyToPaused {
            self.start().map_err(|e| {
                self.post_error_message(e);
                gst::StateChangeError
            })?;
        }
        if transition == gst::StateChange::PausedToReady {
            self.stop_task();
        }
        let success = self.parent_change_state(transition)?;
        // The worker goes only once the pads are inactive: until then, an event that upstream
        // sends while the pipeline winds down still has somewhere to go, and is not an error.
        if transition == gst::StateChange::PausedToReady
            && let Some(state) = lock(&self.state).take()
        {
            state.worker.stop();
        }
        Ok(success)
    }
}

impl Sam2Refiner {
    /// Loads the model and starts the worker and the source pad's task (READY→PAUSED).
    fn start(&self) -> Result<(), gst::ErrorMessage> {
        let settings = lock(&self.settings).clone();
        let mut config = Sam2Config::load(&settings.config)
            .map_err(|e| gst::error_msg!(gst::LibraryError::Settings, ("{e}")))?;
        config.apply_build_overrides(BuildMode::Video);
        let device = select_device(&settings.device)
            .map_err(|e| gst::error_msg!(gst::LibraryError::Settings, ("{e}")))?;
        let weights = settings.weights.as_deref();
        let open_error = |path: Option<&std::path::Path>, e: crate::Error| {
            let kind = match path {
                Some(path) if path.is_file() => gst::ResourceError::OpenRead,
                _ => gst::ResourceError::NotFound,
            };
            gst::error_msg!(kind, ("{e}"))
        };
        let file =
            nano::weights_for(&settings.config, weights).map_err(|e| open_error(weights, e))?;
        // The refiner is checked against the weights it was trained for before the model is built.
        let refiner = match settings.refiner_weights.as_deref() {
            Some(path) => Some(
                Refiner::load_for_base(path, &settings.config, &file, DType::F32, &device)
                    .map_err(|e| open_error(Some(path), e))?,
            ),
            None => None,
        };
        let model =
            build_model(&config, file, DType::F32, &device).map_err(|e| open_error(weights, e))?;
        let timeline = match &settings.prompts {
            Some(path) => timeline::read(path)
                .map_err(|e| gst::error_msg!(gst::ResourceError::Read, ("{e}")))?,
            None => Vec::new(),
        };
        gst::info!(
            CAT,
            imp = self,
            "model {} from {} on {}",
            settings.config,
            weights.map_or(nano::BUILT_IN_WEIGHTS.into(), |w| w.display().to_string()),
            crate::device::describe(&device)
        );
        let mut options = TrackerOptions::for_config(&config);
        options.frame_resize = FrameResize::Bilinear;
        options.max_conditioning_memories = settings.max_conditioning_memories as usize;
        options.feature_history = settings.feature_history as usize;
        options.non_overlap_masks = settings.non_overlap;
        if settings.fill_hole_area >= 0 {
            options.fill_hole_area = settings.fill_hole_area as usize;
        }
        options.refine_mode = settings.refine.into();
        options.memory_mask = settings.refine_memory.into();
        options.pin_clicks = settings.refine_pin_clicks;
        if let Some(path) = &settings.refiner_weights {
            gst::info!(
                CAT,
                imp = self,
                "refiner {} in {:?} mode",
                path.display(),
                settings.refine
            );
        }
        let matte_objects = settings
            .matte_objects
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<u32>().map_err(|_| {
                    gst::error_msg!(
                        gst::LibraryError::Settings,
                        ("matte-objects: {s:?} is not an object id")
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        for t in &timeline {
            self.max_object
                .fetch_max(t.prompt.object, Ordering::Relaxed);
        }
        let worker = Worker::spawn(
            self.obj().clone().upcast(),
            {
                let mut tracker = Tracker::new(model, options);
                tracker.set_refiner(refiner);
                tracker
            },
            WorkerSettings {
                mode: settings.output,
                matte_objects,
                softness: settings.edge_softness as f32,
                max_objects: settings.max_objects as usize,
                timeline,
            },
            settings.queue_size as usize,
        )
        .map_err(|e| {
            gst::error_msg!(
                gst::CoreError::Thread,
                ("Cannot start the worker thread: {e}")
            )
        })?;
        *lock(&self.state) = Some(State {
            worker,
            frames: 0,
            last_pts: None,
            new_object_next: false,
        });
        *lock(&self.last_flow) = Ok(gst::FlowSuccess::Ok);
        self.flushing.store(false, Ordering::SeqCst);
        self.start_task().map_err(|e| {
            gst::error_msg!(
                gst::CoreError::Thread,
                ("Cannot start the source pad task: {e}")
            )
        })?;
        Ok(())
    }

    /// Stops the source pad's task, dropping what is queued (PAUSED→READY).
    fn stop_task(&self) {
        self.flushing.store(true, Ordering::SeqCst);
        if let Some(state) = lock(&self.state).as_ref() {
            state.worker.discard_queued();
        }
        let _ = self.srcpad.stop_task();
    }

    fn start_task(&self) -> Result<(), glib::BoolError> {
        let outputs = match lock(&self.state).as_ref() {
            Some(state) => state.worker.outputs.clone(),
            None => return Ok(()),
        };
        let weak = self.obj().downgrade();
        self.srcpad.start_task(move || {
            let Some(element) = weak.upgrade() else {
                return;
            };
            let imp = element.imp();
            let output = match outputs.recv() {
                Ok(o) => o,
                Err(_) => {
                    let _ = imp.srcpad.pause_task();
                    return;
                }
            };
            if imp.flushing.load(Ordering::SeqCst) {
                let _ = imp.srcpad.pause_task();
                return;
            }
            imp.push_output(output);
        })
    }

    /// Pushes one result downstream (on the source pad's task).
    fn push_output(&self, output: Output) {
        let flow = match output {
            Output::Wake => return,
            Output::Buffer(buffer) => {
                // Set before the push: a sink may show the frame, and the user click on it,
                // before the push returns.
                if let Some(state) = lock(&self.state).as_mut() {
                    state.last_pts = buffer.pts().or(state.last_pts);
                }
                self.srcpad.push(buffer)
            }
            Output::Event(event) => {
                let eos = event.type_() == gst::EventType::Eos;
                if self.srcpad.push_event(event) {
                    Ok(gst::FlowSuccess::Ok)
                } else if eos {
                    Err(gst::FlowError::Eos)
                } else {
                    Ok(gst::FlowSuccess::Ok)
                }
            }
            Output::Error(message) => {
                self.post_error_message(message);
                Err(gst::FlowError::Error)
            }
        };
        if let Err(e) = flow {
            gst::debug!(CAT, imp = self, "push returned {e:?}");
            if e != gst::FlowError::Flushing {
                *lock(&self.last_flow) = Err(e);
            }
            if !matches!(e, gst::FlowError::Flushing | gst::FlowError::Eos) {
                gst::element_imp_error!(
                    self,
                    gst::StreamError::Failed,
                    ("Streaming stopped: {e:?}")
                );
                let _ = self.srcpad.push_event(gst::event::Eos::new());
            }
            let _ = self.srcpad.pause_task();
        }
    }

    fn sink_chain(
        &self,
        _pad: &gst::Pad,
        buffer: gst::Buffer,
    ) -> Result<gst::FlowSuccess, gst::FlowError> {
        if self.flushing.load(Ordering::SeqCst) {
            return Err(gst::FlowError::Flushing);
        }
        (*lock(&self.last_flow))?;
        let (sender, track) = {
            let mut guard = lock(&self.state);
            let state = guard.as_mut().ok_or(gst::FlowError::Flushing)?;
            let settings = lock(&self.settings);
            let track = match settings.skip_policy {
                SkipPolicy::None => true,
                SkipPolicy::EveryNth => state.frames % settings.track_every.max(1) as u64 == 0,
                SkipPolicy::Realtime => state.worker.frames_in_flight.load(Ordering::SeqCst) == 0,
            };
            state.frames += 1;
            (state.worker.frame_sender(), track)
        };
        // Blocks while the queue is full: upstream waits for the model, never for a lock.
        if !sender.send(buffer, track) {
            return Err(gst::FlowError::Flushing);
        }
        *lock(&self.last_flow)
    }

    fn send(&self, job: Job) -> bool {
        let jobs = match lock(&self.state).as_ref() {
            Some(state) => state.worker.jobs.clone(),
            None => return false,
        };
        jobs.send(job).is_ok()
    }

    /// Sends a prompt to the worker (from an event, a signal or a click).
    fn send_prompt(&self, action: PromptAction, source: &'static str) -> bool {
        if let PromptAction::Add(spec) = &action {
            self.max_object.fetch_max(spec.object, Ordering::Relaxed);
        }
        if lock(&self.state).is_none() {
            return self.reject(
                source,
                "the element is not running (it takes prompts from PAUSED on)",
            );
        }
        self.send(Job::Prompt { action, source })
    }

    /// A prompt that never reached the worker: a warning and a negative ack.
    fn reject(&self, source: &str, reason: &str) -> bool {
        gst::element_imp_warning!(
            self,
            gst::StreamError::Format,
            ("Prompt from {source} rejected: {reason}")
        );
        let s = gst::Structure::builder("sam2-prompt-ack")
            .field("source", source)
            .field("accepted", false)
            .field("reason", reason)
            .build();
        let _ = self
            .obj()
            .post_message(gst::message::Element::builder(s).src(&*self.obj()).build());
        false
    }

    fn sink_event(&self, pad: &gst::Pad, event: gst::Event) -> bool {
        use gst::EventView;
        gst::log!(CAT, obj = pad, "event {event:?}");
        if let Some(parsed) = PromptEvent::parse(&event) {
            return match parsed {
                Ok(p) => self.send_prompt(p.action, "event"),
                Err(reason) => self.reject("event", &reason),
            };
        }
        match event.view() {
            EventView::Caps(c) => {
                let caps = c.caps_owned();
                match self.negotiate(&caps) {
                    Ok(job) => self.send(job),
                    Err(e) => {
                        gst::element_imp_error!(self, gst::CoreError::Negotiation, ("{e}"));
                        false
                    }
                }
            }
            EventView::FlushStart(_) => {
                self.flushing.store(true, Ordering::SeqCst);
                let ok = self.srcpad.push_event(event);
                if let Some(state) = lock(&self.state).as_ref() {
                    state.worker.discard_queued();
                }
                let _ = self.srcpad.pause_task();
                ok
            }
            EventView::FlushStop(_) => {
                if let Some(state) = lock(&self.state).as_ref() {
                    state.worker.discard_queued();
                }
                // The timeline broke (a seek): the worker forgets the objects' memory.
                self.send(Job::Flushed);
                *lock(&self.last_flow) = Ok(gst::FlowSuccess::Ok);
                self.flushing.store(false, Ordering::SeqCst);
                let ok = self.srcpad.push_event(event);
                if let Err(e) = self.start_task() {
                    gst::element_imp_error!(
                        self,
                        gst::CoreError::Thread,
                        ("Cannot restart the source pad task: {e}")
                    );
                }
                ok
            }
            _ if event.is_serialized() => self.send(Job::Event(event)),
            _ => gst::Pad::event_default(pad, Some(&*self.obj()), event),
        }
    }

    /// Input caps -> output caps (negotiated downstream) and the worker's job.
    fn negotiate(&self, caps: &gst::Caps) -> Result<Job, String> {
        let input = gst_video::VideoInfo::from_caps(caps)
            .map_err(|e| format!("Unusable caps {caps}: {e}"))?;
        let mode = lock(&self.settings).output;
        let out_caps = if mode == OutputMode::Meta {
            caps.clone()
        } else {
            let mut wanted = gst_video::VideoCapsBuilder::new()
                .format_list(output_formats(mode).iter().copied())
                .width(input.width() as i32)
                .height(input.height() as i32)
                .framerate(input.fps())
                .pixel_aspect_ratio(input.par())
                .build();
            // The input's own format first when it is an output format: no conversion then.
            if output_formats(mode).contains(&input.format()) {
                let mut own = wanted.copy();
                own.make_mut().set("format", input.format().to_str());
                own.merge(wanted);
                wanted = own;
            }
            let mut peer = self.srcpad.peer_query_caps(Some(&wanted));
            if peer.is_empty() {
                return Err(format!("Downstream accepts none of {wanted}"));
            }
            peer.fixate();
            peer
        };
        let output = gst_video::VideoInfo::from_caps(&out_caps)
            .map_err(|e| format!("Unusable output caps {out_caps}: {e}"))?;
        Ok(Job::Caps {
            input,
            output,
            caps: out_caps,
        })
    }

    fn sink_query(&self, pad: &gst::Pad, query: &mut gst::QueryRef) -> bool {
        if let gst::QueryViewMut::Caps(q) = query.view_mut() {
            let mode = lock(&self.settings).output;
            let template = pad.pad_template_caps();
            let caps = if mode == OutputMode::Meta {
                let peer = self.srcpad.peer_query_caps(q.filter_owned().as_ref());
                peer.intersect(&template)
            } else {
                // Any input format; the size and rate downstream takes.
                let peer = self.srcpad.peer_query_caps(None);
                if peer.is_any() {
                    let caps = match q.filter() {
                        Some(f) => f.intersect_with_mode(&template, gst::CapsIntersectMode::First),
                        None => template,
                    };
                    q.set_result(&caps);
                    return true;
                }
                let mut caps = gst::Caps::new_empty();
                for s in peer.iter() {
                    let mut s = s.to_owned();
                    s.remove_fields(["format", "colorimetry", "chroma-site"]);
                    caps.make_mut().append_structure(s);
                }
                caps.intersect(&template)
            };
            let caps = match q.filter() {
                Some(f) => f.intersect_with_mode(&caps, gst::CapsIntersectMode::First),
                None => caps,
            };
            q.set_result(&caps);
            return true;
        }
        gst::Pad::query_default(pad, Some(&*self.obj()), query)
    }

    fn src_query(&self, pad: &gst::Pad, query: &mut gst::QueryRef) -> bool {
        match query.view_mut() {
            gst::QueryViewMut::Latency(q) => {
                let mut upstream = gst::query::Latency::new();
                if !self.sinkpad.peer_query(&mut upstream) {
                    return false;
                }
                let (live, min, max) = upstream.result();
                let ours = self.latency();
                q.set(live, min + ours, max.map(|m| m + ours));
                true
            }
            gst::QueryViewMut::Caps(q) => {
                let mode = lock(&self.settings).output;
                let template = pad.pad_template_caps();
                let peer = self.sinkpad.peer_query_caps(None);
                let peer = if peer.is_any() {
                    self.sinkpad.pad_template_caps()
                } else {
                    peer
                };
                let mut caps = gst::Caps::new_empty();
                for s in peer.iter() {
                    let mut s = s.to_owned();
                    if mode != OutputMode::Meta {
                        s.set(
                            "format",
                            gst::List::new(output_formats(mode).iter().map(|f| f.to_str())),
                        );
                        s.remove_fields(["colorimetry", "chroma-site"]);
                    }
                    caps.make_mut().append_structure(s);
                }
                let caps = caps.intersect(&template);
                let caps = match q.filter() {
                    Some(f) => f.intersect_with_mode(&caps, gst::CapsIntersectMode::First),
                    None => caps,
                };
                q.set_result(&caps);
                true
            }
            _ => gst::Pad::query_default(pad, Some(&*self.obj()), query),
        }
    }

    /// The processing latency: the configured one, else the longest frame measured so far.
    fn latency(&self) -> gst::ClockTime {
        let configured = lock(&self.settings).latency;
        if configured > gst::ClockTime::ZERO {
            return configured;
        }
        let measured = lock(&self.state)
            .as_ref()
            .map_or(0, |s| s.worker.max_latency.load(Ordering::Relaxed));
        gst::ClockTime::from_nseconds(measured)
    }

    fn src_event(&self, pad: &gst::Pad, event: gst::Event) -> bool {
        if let Some(parsed) = PromptEvent::parse(&event) {
            return match parsed {
                Ok(p) => self.send_prompt(p.action, "event"),
                Err(reason) => self.reject("event", &reason),
            };
        }
        if event.type_() == gst::EventType::Navigation {
            self.navigation(&event);
        }
        gst::Pad::event_default(pad, Some(&*self.obj()), event)
    }

    /// Window clicks: left button a positive point, right button a negative one, for the
    /// click-object; Shift+click or the key 'n' before a click starts a new object.
    fn navigation(&self, event: &gst::Event) {
        use gst_video::NavigationEvent;
        let Ok(nav) = NavigationEvent::parse(event) else {
            return;
        };
        match nav {
            NavigationEvent::KeyPress { key, .. } if key == "n" => {
                if let Some(state) = lock(&self.state).as_mut() {
                    state.new_object_next = true;
                }
            }
            NavigationEvent::MouseButtonPress {
                button,
                x,
                y,
                modifier_state,
            } if button == 1 || button == 3 => {
                let (pts, new_object) = match lock(&self.state).as_mut() {
                    Some(state) => {
                        let shift =
                            modifier_state.contains(gst_video::NavigationModifierType::SHIFT_MASK);
                        let new = std::mem::take(&mut state.new_object_next) || shift;
                        (state.last_pts, new)
                    }
                    None => return,
                };
                let object = if new_object {
                    let id = self.max_object.load(Ordering::Relaxed) + 1;
                    lock(&self.settings).click_object = id;
                    self.obj().notify("click-object");
                    id
                } else {
                    lock(&self.settings).click_object
                };
                let spec = PromptSpec {
                    object,
                    points: vec![[x as f32, y as f32]],
                    labels: vec![i32::from(button == 1)],
                    pts,
                    ..Default::default()
                };
                self.send_prompt(PromptAction::Add(spec), "click");
            }
            _ => {}
        }
    }
}
