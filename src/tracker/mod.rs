//! The streaming tracker: SAM 2 video tracking over endless streams, in constant memory.
//!
//! Frames arrive one at a time ([`Tracker::push_frame`]), prompts for any object at any time
//! ([`Tracker::add_prompt`]). Each object is tracked as by the official per-object video
//! predictor, read causally:
//!
//! - an object's first prompt on frame T makes T an initial conditioning frame (no memory read);
//! - a later prompt on frame T corrects T's tracked output: the prompt, with T's previous mask
//!   logits as a mask prompt, on memory-conditioned features; T becomes a conditioning frame
//!   (the official `add_all_frames_to_correct_as_cond`), and tracking goes on from T + 1;
//! - a prompt for a frame displayed a moment ago applies to that frame if its features are still
//!   held ([`TrackerOptions::feature_history`]), else to the next frame pushed; a prompt for a
//!   frame not pushed yet waits for it.
//!
//! Objects share each frame's image features and plain tracking steps run batched. The memory
//! bank is bounded: the conditioning memories (up to a cap), the last `num_maskmem - 1` plain
//! memories and the last `max_obj_ptrs_in_encoder - 1` pointers per object; the frame count
//! only grows a counter.
//!
//! ```no_run
//! use gstsam2refiner::image::RgbImage;
//! use gstsam2refiner::model::{BuildMode, Sam2Config, load_model};
//! use gstsam2refiner::prompt::Prompt;
//! use gstsam2refiner::tracker::{Tracker, TrackerOptions};
//!
//! # fn main() -> gstsam2refiner::Result<()> {
//! let mut config = Sam2Config::preset("sam2.1_hiera_t")?;
//! config.apply_build_overrides(BuildMode::Video);
//! let device = candle_core::Device::Cpu;
//! let model = load_model(&config, "sam2.1_hiera_tiny.pt".as_ref(), candle_core::DType::F32, &device)?;
//! let mut tracker = Tracker::new(model, TrackerOptions::for_config(&config));
//! for (index, path) in ["f0.png", "f1.png"].iter().enumerate() {
//!     let frame = RgbImage::read_png(path.as_ref())?;
//!     let mut output = tracker.push_frame(index as u64, &frame)?;
//!     if index == 0 {
//!         let click = Prompt { frame: 0, object: 1, points: vec![[320.0, 240.0]], labels: vec![1], bbox: None, mask: None };
//!         tracker.add_prompt(&click)?;
//!         output = tracker.output(0)?;
//!     }
//!     for (object, logits) in tracker.frame_logits(&output)? {
//!         println!("frame {index}, object {object}: {:?}", logits.dims());
//!     }
//! }
//! # Ok(())
//! # }
//! ```

mod frames;
mod memory_bank;
mod options;
mod step;

use std::collections::BTreeMap;

use candle_core::Tensor;

pub use options::{FrameResize, TrackerOptions};

use crate::error::{Error, Result};
use crate::image::RgbImage;
use crate::model::Sam2Base;
use crate::prompt::Prompt;
use frames::{FrameHistory, HeldFrame};
use memory_bank::MemoryBank;

/// A frame as the caller identifies it: an index or a timestamp, increasing.
pub type FrameId = u64;
/// An object as the caller identifies it.
pub type ObjectId = u32;

/// One object's result on one frame.
#[derive(Debug, Clone)]
pub struct ObjectOutput {
    pub object: ObjectId,
    /// Low-resolution mask logits [4h, 4w] (> 0 is the object), after hole filling.
    pub low_res: Tensor,
    /// The object-score logit: below 0, the object is judged absent (its logits are -1024).
    pub object_score: f32,
    /// The predicted IoU of the mask.
    pub iou: f32,
    /// Whether the frame is a conditioning frame of the object (it got a prompt).
    pub conditioning: bool,
}

/// Every tracked object's result on one frame.
#[derive(Debug, Clone)]
pub struct FrameOutput {
    pub frame: FrameId,
    /// (width, height) of the frame.
    pub size: (usize, usize),
    pub objects: Vec<ObjectOutput>,
}

/// What became of a prompt.
#[derive(Debug, Clone)]
pub enum PromptOutcome {
    /// Applied to its frame; the object's new result there.
    Applied(ObjectOutput),
    /// Its frame has not been pushed yet: it applies when it is.
    Queued,
    /// Its frame's features are no longer held: it applies to the next frame pushed.
    Deferred,
}

#[derive(Debug, Default)]
struct ObjectTrack {
    bank: MemoryBank,
}

pub struct Tracker {
    model: Sam2Base,
    options: TrackerOptions,
    frames: FrameHistory,
    objects: BTreeMap<ObjectId, ObjectTrack>,
    /// Prompts waiting for a frame: (frame id, or None for "the next frame"), in arrival order.
    pending: Vec<(Option<FrameId>, Prompt)>,
    /// Internal index of the next frame (0 after a reset): temporal distances are counted in it.
    next_index: i64,
}

impl Tracker {
    pub fn new(model: Sam2Base, options: TrackerOptions) -> Self {
        let history = options.feature_history.max(1);
        Self {
            model,
            options,
            frames: FrameHistory::new(history),
            objects: BTreeMap::new(),
            pending: Vec::new(),
            next_index: 0,
        }
    }

    pub fn model(&self) -> &Sam2Base {
        &self.model
    }

    pub fn options(&self) -> &TrackerOptions {
        &self.options
    }

    /// Forgets every object, frame and pending prompt: the next frame starts a new timeline.
    pub fn reset(&mut self) {
        self.frames.clear();
        self.objects.clear();
        self.pending.clear();
        self.next_index = 0;
    }

    /// The objects that have been prompted and not removed, in increasing order, including those
    /// whose only prompts still wait for their frame.
    pub fn objects(&self) -> impl Iterator<Item = ObjectId> + '_ {
        let waiting = self
            .pending
            .iter()
            .map(|(_, p)| p.object)
            .filter(|o| !self.objects.contains_key(o));
        let mut all: Vec<ObjectId> = self.objects.keys().copied().chain(waiting).collect();
        all.sort_unstable();
        all.dedup();
        all.into_iter()
    }

    /// Stops tracking an object and forgets its memory. An unknown object is an error.
    pub fn remove_object(&mut self, object: ObjectId) -> Result<()> {
        let waiting = self.pending.len();
        self.pending.retain(|(_, p)| p.object != object);
        match self.objects.remove(&object) {
            Some(_) => Ok(()),
            None if self.pending.len() < waiting => Ok(()),
            None => Err(Error::Prompt(format!("no object {object} to remove"))),
        }
    }

    /// Forgets an object's prompts and memory; it is tracked again from its next prompt, which
    /// is then a first prompt. An unknown object is an error.
    pub fn clear_prompts(&mut self, object: ObjectId) -> Result<()> {
        let waiting = self.pending.len();
        self.pending.retain(|(_, p)| p.object != object);
        match self.objects.get_mut(&object) {
            Some(track) => {
                track.bank = MemoryBank::default();
                Ok(())
            }
            None if self.pending.len() < waiting => Ok(()),
            None => Err(Error::Prompt(format!("no object {object} to clear"))),
        }
    }

    /// Tracks every object on a new frame (8-bit RGB, any size but the same for all frames since
    /// the last reset), then applies the prompts waiting for it.
    pub fn push_frame(&mut self, frame: FrameId, image: &RgbImage) -> Result<FrameOutput> {
        let size = (image.width, image.height);
        self.check_frame(frame, size)?;
        let input = step::frame_input(&self.model, image, self.options.frame_resize)?;
        self.push_checked(frame, &input, size)
    }

    /// As [`Tracker::push_frame`], for a frame already brought to the model's input ([1, 3, S, S],
    /// normalised) on the model's device; `size` is the frame's own (width, height).
    pub fn push_input(
        &mut self,
        frame: FrameId,
        input: &Tensor,
        size: (usize, usize),
    ) -> Result<FrameOutput> {
        self.check_frame(frame, size)?;
        self.push_checked(frame, input, size)
    }

    fn push_checked(
        &mut self,
        frame: FrameId,
        input: &Tensor,
        size: (usize, usize),
    ) -> Result<FrameOutput> {
        let features = self.model.forward_image(input)?;
        let index = self.next_index;
        self.next_index += 1;
        self.frames.push(HeldFrame {
            id: frame,
            index,
            size,
            features,
        });
        self.track_all(index)?;
        let waiting: Vec<Prompt> = {
            let (now, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending)
                .into_iter()
                .partition(|(f, _)| f.is_none_or(|f| f <= frame));
            self.pending = later;
            now.into_iter().map(|(_, p)| p).collect()
        };
        for prompt in waiting {
            self.apply_prompt(index, &prompt)?;
        }
        for track in self.objects.values_mut() {
            track.bank.prune(
                index,
                &self.model.config,
                self.options.max_conditioning_memories,
            );
        }
        self.output(frame)
    }

    /// Adds a prompt (see the module docs for when and where it applies). The prompt's `frame`
    /// is a frame id; its coordinates are pixels of that frame.
    pub fn add_prompt(&mut self, prompt: &Prompt) -> Result<PromptOutcome> {
        let Some(latest) = self.frames.latest() else {
            self.pending.push((Some(prompt.frame), prompt.clone()));
            return Ok(PromptOutcome::Queued);
        };
        if prompt.frame > latest.id {
            prompt
                .validate(latest.size.0, latest.size.1)
                .map_err(Error::Prompt)?;
            self.pending.push((Some(prompt.frame), prompt.clone()));
            return Ok(PromptOutcome::Queued);
        }
        let Some(held) = self.frames.at_or_before(prompt.frame) else {
            prompt
                .validate(latest.size.0, latest.size.1)
                .map_err(Error::Prompt)?;
            self.pending.push((None, prompt.clone()));
            return Ok(PromptOutcome::Deferred);
        };
        let index = held.index;
        let out = self.apply_prompt(index, prompt)?;
        if let Some(track) = self.objects.get_mut(&prompt.object) {
            let latest = self.next_index - 1;
            track.bank.prune(
                latest,
                &self.model.config,
                self.options.max_conditioning_memories,
            );
        }
        Ok(PromptOutcome::Applied(out))
    }

    /// Every object's result on a frame whose features are still held.
    pub fn output(&self, frame: FrameId) -> Result<FrameOutput> {
        let held = self
            .frames
            .get(frame)
            .ok_or_else(|| Error::Prompt(format!("frame {frame} is not held any more")))?;
        let objects = self
            .objects
            .iter()
            .filter_map(|(id, track)| {
                let out = track.bank.output_at(held.index)?;
                let conditioning = track.bank.is_conditioning(held.index);
                Some(step::object_output(*id, out, conditioning))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(FrameOutput {
            frame,
            size: held.size,
            objects,
        })
    }

    /// Each object's mask logits at the frame's size ([H, W], > 0 is the object), with the
    /// non-overlap constraint across objects when it is on.
    pub fn frame_logits(&self, output: &FrameOutput) -> Result<Vec<(ObjectId, Tensor)>> {
        step::frame_logits(output, self.options.non_overlap_masks)
    }

    /// Each object's soft matte at the frame's size: `round(255 · sigmoid(logit / softness))`
    /// (a hard 0/255 cut-out when `softness` is 0), computed on the device for all objects at
    /// once, one byte a pixel, one download.
    pub fn frame_mattes(
        &self,
        output: &FrameOutput,
        softness: f32,
    ) -> Result<Vec<(ObjectId, Vec<u8>)>> {
        let logits = self.frame_logits(output)?;
        let Some((_, first)) = logits.first() else {
            return Ok(Vec::new());
        };
        let pixels = first.elem_count();
        let stacked = Tensor::stack(&logits.iter().map(|(_, l)| l).collect::<Vec<_>>(), 0)?;
        let bytes = step::soft_matte(&stacked, softness)?;
        Ok(logits
            .iter()
            .zip(bytes.chunks_exact(pixels))
            .map(|((object, _), matte)| (*object, matte.to_vec()))
            .collect())
    }

    /// One matte for the objects `select` picks: at each pixel the largest of their mattes (as
    /// [`frame_mattes`](Self::frame_mattes) computes them), on the device, one download. `None`
    /// when no object is picked.
    pub fn frame_matte_union(
        &self,
        output: &FrameOutput,
        softness: f32,
        select: impl Fn(ObjectId) -> bool,
    ) -> Result<Option<Vec<u8>>> {
        let picked: Vec<Tensor> = self
            .frame_logits(output)?
            .into_iter()
            .filter(|(object, _)| select(*object))
            .map(|(_, logits)| logits)
            .collect();
        if picked.is_empty() {
            return Ok(None);
        }
        // The matte is monotonic in the logit: the largest logit gives the largest matte.
        let largest = Tensor::stack(&picked, 0)?.max(0)?;
        Ok(Some(step::soft_matte(&largest, softness)?))
    }

    fn check_frame(&self, frame: FrameId, (width, height): (usize, usize)) -> Result<()> {
        if width == 0 || height == 0 {
            return Err(Error::Image("empty frame".into()));
        }
        if let Some(latest) = self.frames.latest() {
            if frame <= latest.id {
                return Err(Error::Image(format!(
                    "frame {frame} does not follow frame {}: frame ids must increase",
                    latest.id
                )));
            }
            if latest.size != (width, height) {
                return Err(Error::Image(format!(
                    "frame {frame} is {width}x{height} but the stream is {}x{}: reset the tracker for a new size",
                    latest.size.0, latest.size.1
                )));
            }
        }
        Ok(())
    }

    /// Plain tracking of every object on frame `index`, batched by memory-bank size.
    fn track_all(&mut self, index: i64) -> Result<()> {
        let held = self
            .frames
            .by_index(index)
            .expect("the frame was just pushed");
        let config = &self.model.config;
        let pos_enc = self.model.memory_encoder.pos_enc();
        let mut groups: BTreeMap<(usize, usize), Vec<ObjectId>> = BTreeMap::new();
        for (id, track) in &self.objects {
            if track.bank.is_empty() {
                continue;
            }
            let selection = track.bank.select(index, config, pos_enc);
            groups
                .entry((selection.memories.len(), selection.pointers.len()))
                .or_default()
                .push(*id);
        }
        let mut results = Vec::new();
        for ids in groups.values() {
            let selections: Vec<_> = ids
                .iter()
                .map(|id| self.objects[id].bank.select(index, config, pos_enc))
                .collect();
            let outputs = step::track(&self.model, &self.options, &held.features, &selections)?;
            results.extend(ids.iter().copied().zip(outputs));
        }
        for (id, out) in results {
            if let Some(track) = self.objects.get_mut(&id) {
                track.bank.insert_non_cond(index, out);
            }
        }
        Ok(())
    }

    /// Applies one prompt on held frame `index`: a first prompt or a correction.
    fn apply_prompt(&mut self, index: i64, prompt: &Prompt) -> Result<ObjectOutput> {
        let held = self.frames.by_index(index).expect("a held frame");
        prompt
            .validate(held.size.0, held.size.1)
            .map_err(|reason| {
                Error::Prompt(format!(
                    "object {}, frame {}: {reason}",
                    prompt.object, prompt.frame
                ))
            })?;
        let track = self.objects.entry(prompt.object).or_default();
        let pos_enc = self.model.memory_encoder.pos_enc();
        let previous = track.bank.output_at(index);
        let correction = previous.map(|prev| {
            (
                prev.low_res.clone(),
                track.bank.select(index, &self.model.config, pos_enc),
            )
        });
        let stored = step::prompt(
            &self.model,
            &self.options,
            held,
            prompt,
            correction.as_ref().map(|(l, s)| (l, s)),
        )?;
        let conditioning = correction.is_none() || self.options.corrections_become_conditioning;
        let output = step::object_output(prompt.object, &stored, conditioning)?;
        let config = &self.model.config;
        if conditioning {
            track.bank.insert_cond(index, stored);
        } else {
            track.bank.insert_non_cond(index, stored);
        }
        if self.options.clear_memories_around_prompts {
            let radius = (config.memory_temporal_stride_for_eval * config.num_maskmem) as i64;
            track.bank.clear_non_cond_around(index, radius);
        }
        Ok(output)
    }

    /// Bytes held by the memory banks and frame features (for memory accounting).
    pub fn held_bytes(&self) -> usize {
        let banks: usize = self.objects.values().map(|t| t.bank.bytes()).sum();
        banks + self.frames.bytes()
    }
}
