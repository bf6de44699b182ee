//! The last few frames' image features, for prompts that arrive just after their frame.

use std::collections::VecDeque;

use candle_core::Tensor;

use crate::model::FrameFeatures;
use crate::model::refiner::LocalFeatures;

pub(crate) struct HeldFrame {
    pub id: u64,
    /// The tracker's internal frame index.
    pub index: i64,
    /// (width, height)
    pub size: (usize, usize),
    pub features: FrameFeatures,
    /// What the refiner reads of the frame, when the tracker refines.
    pub refine: Option<FrameForRefiner>,
}

/// The frame as the refiner needs it: crops are cut from the image itself.
pub(crate) struct FrameForRefiner {
    /// u8 [H, W, 3] on the model's device.
    pub rgb: Tensor,
    /// The model input [1, 3, S, S].
    pub input: Tensor,
    /// In quadrant mode, the quadrants' features (computed once, for every object).
    pub quadrants: Option<LocalFeatures>,
}

pub(crate) struct FrameHistory {
    capacity: usize,
    frames: VecDeque<HeldFrame>,
}

impl FrameHistory {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            frames: VecDeque::new(),
        }
    }

    pub fn push(&mut self, frame: HeldFrame) {
        if self.frames.len() == self.capacity {
            self.frames.pop_front();
        }
        self.frames.push_back(frame);
    }

    pub fn clear(&mut self) {
        self.frames.clear();
    }

    pub fn latest(&self) -> Option<&HeldFrame> {
        self.frames.back()
    }

    pub fn get(&self, id: u64) -> Option<&HeldFrame> {
        self.frames.iter().find(|f| f.id == id)
    }

    /// The newest held frame whose id is at most `id` (timestamps need not match exactly).
    pub fn at_or_before(&self, id: u64) -> Option<&HeldFrame> {
        self.frames.iter().rev().find(|f| f.id <= id)
    }

    pub fn by_index(&self, index: i64) -> Option<&HeldFrame> {
        self.frames.iter().find(|f| f.index == index)
    }

    pub fn by_index_mut(&mut self, index: i64) -> Option<&mut HeldFrame> {
        self.frames.iter_mut().find(|f| f.index == index)
    }

    /// Bytes held by the features (the position encodings are shared constants).
    pub fn bytes(&self) -> usize {
        let of = |t: &Tensor| t.elem_count() * t.dtype().size_in_bytes();
        self.frames
            .iter()
            .map(|f| {
                let refine = f.refine.as_ref().map_or(0, |r| {
                    of(&r.rgb)
                        + of(&r.input)
                        + r.quadrants
                            .as_ref()
                            .map_or(0, |q| q.levels.iter().map(of).sum())
                });
                f.features.backbone_fpn.iter().map(of).sum::<usize>() + refine
            })
            .sum()
    }
}
