//! The GStreamer element `sam2refiner`: raw video frames and prompts in, per-object mattes out
//! (as metadata, in the alpha channel, as a preview overlay, or as a GRAY8 matte stream).
//!
//! The element's documentation is in its properties, signals and pad templates
//! (`gst-inspect-1.0 sam2refiner`) and in the README.

mod imp;
pub mod meta;
pub mod prompt_event;
mod render;
mod timeline;
mod worker;

use gst::glib;
use gst::prelude::*;

glib::wrapper! {
    pub struct Sam2Refiner(ObjectSubclass<imp::Sam2Refiner>) @extends gst::Element, gst::Object;
}

/// What the element outputs.
#[derive(Debug, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstSam2RefinerOutput")]
pub enum OutputMode {
    #[enum_value(
        name = "Meta: frames unchanged, each object's mask as Sam2MaskMeta metadata",
        nick = "meta"
    )]
    Meta = 0,
    #[enum_value(
        name = "Alpha: RGBA-family frames with the objects' soft matte as alpha",
        nick = "alpha"
    )]
    Alpha = 1,
    #[enum_value(
        name = "Overlay: a preview with each object tinted and outlined",
        nick = "overlay"
    )]
    Overlay = 2,
    #[enum_value(
        name = "Mask: a GRAY8 matte stream of the frame's size (full range)",
        nick = "mask"
    )]
    Mask = 3,
}

/// What happens when inference is slower than the stream.
#[derive(Debug, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstSam2RefinerSkipPolicy")]
pub enum SkipPolicy {
    #[enum_value(
        name = "None: every frame is tracked, upstream waits (files, editors)",
        nick = "none"
    )]
    None = 0,
    #[enum_value(
        name = "Every Nth: track one frame in track-every, carry the last masks on the others",
        nick = "every-nth"
    )]
    EveryNth = 1,
    #[enum_value(
        name = "Real time: frames that arrive while the model is busy carry the last masks",
        nick = "realtime"
    )]
    Realtime = 2,
}

/// The `refine` property: where the refiner's localization augment looks.
#[derive(Debug, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstSam2RefinerRefine")]
pub enum RefineProp {
    #[enum_value(name = "Off: plain SAM 2 masks", nick = "off")]
    Off = 0,
    #[enum_value(
        name = "Quadrants: the frame's four quadrants, five encoder passes per frame",
        nick = "quadrants"
    )]
    Quadrants = 1,
    #[enum_value(
        name = "ROI: one window on each object's last mask, two encoder passes per frame for one object",
        nick = "roi"
    )]
    Roi = 2,
}

impl From<RefineProp> for crate::model::refiner::RefineMode {
    fn from(p: RefineProp) -> Self {
        match p {
            RefineProp::Off => Self::Off,
            RefineProp::Quadrants => Self::Quadrants,
            RefineProp::Roi => Self::Roi,
        }
    }
}

/// The `refine-memory` property: the mask the memory encoder is fed when refining.
#[derive(Debug, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstSam2RefinerRefineMemory")]
pub enum RefineMemoryProp {
    #[enum_value(
        name = "Refined: the memory remembers the refined mask",
        nick = "refined"
    )]
    Refined = 0,
    #[enum_value(name = "SAM 2: the memory is fed SAM 2's own mask", nick = "sam2")]
    Sam2 = 1,
}

impl From<RefineMemoryProp> for crate::model::refiner::MemoryMask {
    fn from(p: RefineMemoryProp) -> Self {
        match p {
            RefineMemoryProp::Refined => Self::Refined,
            RefineMemoryProp::Sam2 => Self::Sam2,
        }
    }
}

pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    OutputMode::static_type().mark_as_plugin_api(gst::PluginAPIFlags::empty());
    RefineProp::static_type().mark_as_plugin_api(gst::PluginAPIFlags::empty());
    RefineMemoryProp::static_type().mark_as_plugin_api(gst::PluginAPIFlags::empty());
    SkipPolicy::static_type().mark_as_plugin_api(gst::PluginAPIFlags::empty());
    meta::register();
    gst::Element::register(
        Some(plugin),
        "sam2refiner",
        gst::Rank::NONE,
        Sam2Refiner::static_type(),
    )
}
