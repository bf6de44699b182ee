//! What a tracker can be asked to do differently, with the official video predictor's
//! behaviour as the default.

use candle_core::DType;

use crate::model::Sam2Config;
use crate::model::refiner::{MemoryMask, RefineMode};

/// How frames are brought to the model's input size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameResize {
    /// PIL's bicubic resize in 8-bit fixed point, on the host, as the official video loader
    /// (`load_video_frames`): bit-exact parity with the official predictor.
    Pil,
    /// Bilinear with antialiasing on the device, as the official image predictor: no host work
    /// per pixel, for live streams.
    Bilinear,
}

#[derive(Debug, Clone)]
pub struct TrackerOptions {
    /// Conditioning memories (prompted frames) kept per object. Past the cap, the first one and
    /// the most recent ones are kept: the oldest of the others is forgotten.
    pub max_conditioning_memories: usize,
    /// Frames whose image features are kept, so that a prompt for a frame displayed a moment ago
    /// applies to that frame. A prompt for an older frame applies to the next frame pushed.
    pub feature_history: usize,
    /// Fill background holes of up to this many low-res pixels in each output mask (0: off).
    /// The video builder's default is 8.
    pub fill_hole_area: usize,
    /// Keep only the highest-scoring object at each pixel of the output masks (off, as official).
    pub non_overlap_masks: bool,
    /// A corrected frame becomes a conditioning frame (the official
    /// `add_all_frames_to_correct_as_cond`; on here, off in the official predictor's defaults).
    pub corrections_become_conditioning: bool,
    /// Forget an object's plain-tracking memories within `num_maskmem` frames of a prompt
    /// (the official `clear_non_cond_mem_around_input`).
    pub clear_memories_around_prompts: bool,
    /// How the spatial memories are stored: bf16, as the official predictor (half the memory,
    /// and bit-exact parity), or the model's dtype.
    pub memory_dtype: DType,
    pub frame_resize: FrameResize,
    /// Where the refiner's localization augment looks, when the tracker has a refiner
    /// (`Tracker::set_refiner`); `Off` tracks with plain SAM 2.
    pub refine_mode: RefineMode,
    /// What the memory encoder of a refined step is fed.
    pub memory_mask: MemoryMask,
    /// On a prompted frame, pin each click's label in the refiner's guided filter input around
    /// it (as the image path does): a click the stride-4 mask missed is not filtered away.
    pub pin_clicks: bool,
}

impl TrackerOptions {
    /// The official video predictor's behaviour for this config (fields the config sets win).
    pub fn for_config(config: &Sam2Config) -> Self {
        Self {
            max_conditioning_memories: 16,
            feature_history: 4,
            fill_hole_area: config.fill_hole_area.unwrap_or(8),
            non_overlap_masks: config.non_overlap_masks.unwrap_or(false),
            corrections_become_conditioning: config
                .add_all_frames_to_correct_as_cond
                .unwrap_or(true),
            clear_memories_around_prompts: config.clear_non_cond_mem_around_input.unwrap_or(false),
            memory_dtype: DType::BF16,
            frame_resize: FrameResize::Pil,
            refine_mode: RefineMode::Off,
            memory_mask: MemoryMask::default(),
            pin_clicks: true,
        }
    }
}
