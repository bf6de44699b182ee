//! sam2refiner: SAM 2 video object segmentation and matting, in pure Rust (candle).
//!
//! The crate is both a library and the GStreamer plugin `sam2refiner`:
//! - [`model`]: SAM 2 / SAM 2.1, numerically faithful to the official implementation, loading
//!   official checkpoints as they are;
//! - [`tracker`]: the streaming tracker, endless streams in constant memory;
//! - [`element`]: the GStreamer element `sam2refiner` (no GStreamer anywhere else);
//! - [`prompt`]: the prompt schema every door shares; [`image`]: the images the CLI reads.

pub mod device;
pub mod element;
mod error;
pub mod image;
pub mod model;
pub mod prompt;
pub mod tracker;

pub use error::{Error, Result};

use gst::glib;

fn plugin_init(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    device::keep_candle_pool_off_the_cores();
    element::register(plugin)
}

gst::plugin_define!(
    sam2refiner,
    env!("CARGO_PKG_DESCRIPTION"),
    plugin_init,
    concat!(env!("CARGO_PKG_VERSION"), "-", env!("COMMIT_ID")),
    "Apache 2.0",
    env!("CARGO_PKG_NAME"),
    env!("CARGO_PKG_NAME"),
    "Unknown package origin",
    env!("BUILD_REL_DATE")
);
