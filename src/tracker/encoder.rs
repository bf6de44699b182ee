//! A frame's way to the tracker, split from the tracking itself: bringing the frame to the model's
//! input and through the image encoder needs the model and nothing of the tracker's state, so a
//! stream can encode its next frame while the tracker tracks this one.
//!
//! The two overlap well on few cores: each is a chain of small operations, and one alone leaves
//! the cores idle between them (nano, 256², on two cores: encoder plus step 52 ms one after the
//! other, 37 ms side by side; the README's "Speed").

use std::sync::Arc;

use super::FrameResize;
use super::frames::FrameForRefiner;
use super::step;
use crate::error::Result;
use crate::image::RgbImage;
use crate::model::{FrameFeatures, Sam2Base};

/// A frame through the image encoder, for [`Tracker::push_encoded`](super::Tracker::push_encoded).
pub struct EncodedFrame {
    /// (width, height) of the frame.
    pub(super) size: (usize, usize),
    pub(super) features: FrameFeatures,
    /// The frame itself, kept when the tracker that made the encoder refines.
    pub(super) refine: Option<FrameForRefiner>,
}

/// Encodes frames for one tracker ([`Tracker::encoder`](super::Tracker::encoder)), on any thread.
#[derive(Clone)]
pub struct FrameEncoder {
    pub(super) model: Arc<Sam2Base>,
    pub(super) resize: FrameResize,
    /// The refiner cuts its crops from the frame itself: keep it beside the features.
    pub(super) keep_frame: bool,
}

impl FrameEncoder {
    /// The frame (8-bit RGB) at the model's input, through the image encoder.
    pub fn encode(&self, image: &RgbImage) -> Result<EncodedFrame> {
        let input = step::frame_input(&self.model, image, self.resize)?;
        let refine = if self.keep_frame {
            Some(FrameForRefiner {
                rgb: image.to_tensor(self.model.device())?,
                input: input.clone(),
                quadrants: None,
            })
        } else {
            None
        };
        Ok(EncodedFrame {
            size: (image.width, image.height),
            features: self.model.forward_image(&input)?,
            refine,
        })
    }
}
