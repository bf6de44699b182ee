//! The last few frames' image features, for prompts that arrive just after their frame.

use std::collections::VecDeque;

use crate::model::FrameFeatures;

pub(crate) struct HeldFrame {
    pub id: u64,
    /// The tracker's internal frame index.
    pub index: i64,
    /// (width, height)
    pub size: (usize, usize),
    pub features: FrameFeatures,
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

    /// Bytes held by the features (the position encodings are shared constants).
    pub fn bytes(&self) -> usize {
        self.frames
            .iter()
            .flat_map(|f| f.features.backbone_fpn.iter())
            .map(|t| t.elem_count() * t.dtype().size_in_bytes())
            .sum()
    }
}
