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
//! A stream that has its next frame at hand can encode it while the tracker tracks this one:
//! [`Tracker::encoder`] makes a [`FrameEncoder`] for any thread, and [`Tracker::push_encoded`]
//! tracks what it made (the element and the CLI do this).
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

mod encoder;
mod frames;
mod memory_bank;
mod options;
mod step;

use std::collections::BTreeMap;
use std::sync::Arc;

use candle_core::Tensor;

pub use encoder::{EncodedFrame, FrameEncoder};
pub use options::{FrameResize, TrackerOptions};

use crate::error::{Error, Result};
use crate::image::RgbImage;
use crate::model::refiner::{LocalFeatures, RefineMode, RefineStep, RefinedMasks, Refiner, crops};
use crate::model::transforms::{rgb_to_unit, soft_matte};
use crate::model::{FrameFeatures, Sam2Base};
use crate::prompt::Prompt;
use frames::{FrameForRefiner, FrameHistory, HeldFrame};
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
    /// With a refiner: the refined mask (the output; `low_res` stays SAM 2's): its logits at S
    /// (`logits`, [1, 1, S, S]) and, with the frame, at the frame's resolution.
    pub refined: Option<RefinedMasks>,
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
    /// ROI mode: the box (x0, y0, x1, y1, input pixels) its next window is placed on: its last
    /// refined mask's, or its prompt's.
    roi_box: Option<[f32; 4]>,
}

pub struct Tracker {
    /// Shared with the tracker's [`FrameEncoder`]s.
    model: Arc<Sam2Base>,
    options: TrackerOptions,
    frames: FrameHistory,
    objects: BTreeMap<ObjectId, ObjectTrack>,
    /// Prompts waiting for a frame: (frame id, or None for "the next frame"), in arrival order.
    pending: Vec<(Option<FrameId>, Prompt)>,
    /// Internal index of the next frame (0 after a reset): temporal distances are counted in it.
    next_index: i64,
    /// Refines the masks when `options.refine_mode` is not `Off`.
    refiner: Option<Refiner>,
}

impl Tracker {
    pub fn new(model: Sam2Base, options: TrackerOptions) -> Self {
        let history = options.feature_history.max(1);
        Self {
            model: Arc::new(model),
            options,
            frames: FrameHistory::new(history),
            objects: BTreeMap::new(),
            pending: Vec::new(),
            next_index: 0,
            refiner: None,
        }
    }

    /// Sets or removes the refiner (trained for this tracker's model: see `Refiner::load`); it
    /// refines the masks from the next step on, where `options.refine_mode` says.
    pub fn set_refiner(&mut self, refiner: Option<Refiner>) {
        self.refiner = refiner;
    }

    pub fn refiner(&self) -> Option<&Refiner> {
        self.refiner.as_ref()
    }

    /// Sets where the refiner looks (`Off`: plain SAM 2), from the next step on.
    pub fn set_refine_mode(&mut self, mode: RefineMode) {
        self.options.refine_mode = mode;
    }

    /// Whether steps run the refiner: a refiner is set and the mode is not `Off`.
    pub fn refining(&self) -> bool {
        self.refiner.is_some() && self.options.refine_mode != RefineMode::Off
    }

    /// Refining with a refiner that reads the crops' features (their encoder passes run).
    fn reads_crops(&self) -> bool {
        self.refining() && self.refiner.as_ref().is_some_and(Refiner::reads_crops)
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
        // Checked before the encoder runs, so that a frame refused costs nothing (push_encoded
        // checks it again, as it must for frames encoded elsewhere).
        self.check_frame(frame, (image.width, image.height))?;
        let encoded = self.encoder().encode(image)?;
        self.push_encoded(frame, encoded)
    }

    /// What [`Tracker::push_frame`] does before tracking, for a caller to run elsewhere: a stream
    /// can encode its next frame while this tracker tracks the current one (`rayon::join`), and
    /// then push it with [`Tracker::push_encoded`]. Made for the tracker as it is now: set the
    /// refiner first.
    pub fn encoder(&self) -> FrameEncoder {
        FrameEncoder {
            model: self.model.clone(),
            resize: self.options.frame_resize,
            keep_frame: self.refining(),
        }
    }

    /// As [`Tracker::push_frame`], for a frame its [`FrameEncoder`] has encoded.
    pub fn push_encoded(&mut self, frame: FrameId, encoded: EncodedFrame) -> Result<FrameOutput> {
        let refine = match encoded.refine {
            Some(refine) if self.refining() => Some(refine),
            None if self.refining() => {
                return Err(Error::Image(
                    "the frame was encoded without the frame itself, which the refiner crops: \
                     make the encoder after setting the refiner"
                        .into(),
                ));
            }
            _ => None,
        };
        self.check_frame(frame, encoded.size)?;
        self.push_checked(frame, encoded.features, encoded.size, refine)
    }

    /// As [`Tracker::push_frame`], for a frame already brought to the model's input ([1, 3, S, S],
    /// normalised) on the model's device; `size` is the frame's own (width, height). Without the
    /// frame itself the refiner cannot look at it: while refining, use `push_frame`.
    pub fn push_input(
        &mut self,
        frame: FrameId,
        input: &Tensor,
        size: (usize, usize),
    ) -> Result<FrameOutput> {
        if self.refining() {
            return Err(Error::Image(
                "the refiner crops the frame itself: push frames with push_frame while refining"
                    .into(),
            ));
        }
        self.check_frame(frame, size)?;
        let features = self.model.forward_image(input)?;
        self.push_checked(frame, features, size, None)
    }

    fn push_checked(
        &mut self,
        frame: FrameId,
        features: FrameFeatures,
        size: (usize, usize),
        refine: Option<FrameForRefiner>,
    ) -> Result<FrameOutput> {
        let index = self.next_index;
        self.next_index += 1;
        self.frames.push(HeldFrame {
            id: frame,
            index,
            size,
            features,
            refine,
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
        let oldest_held = index + 1 - self.options.feature_history.max(1) as i64;
        for track in self.objects.values_mut() {
            track.bank.prune(
                index,
                &self.model.config,
                self.options.max_conditioning_memories,
            );
            track.bank.drop_refined_before(oldest_held);
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
        // Refined masks reach the frame's resolution with the frame itself, while it is held.
        let frame = match self
            .frames
            .get(output.frame)
            .and_then(|f| f.refine.as_ref())
        {
            Some(refine) if output.objects.iter().any(|o| o.refined.is_some()) => {
                Some(rgb_to_unit(&refine.rgb)?)
            }
            _ => None,
        };
        step::frame_logits(output, frame.as_ref(), self.options.non_overlap_masks)
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
        let bytes = soft_matte(&stacked, softness)?;
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
        // The matte is monotonic in the logit: the largest logit gives the largest matte.
        let largest = match picked.as_slice() {
            [] => return Ok(None),
            [one] => one.clone(),
            _ => Tensor::stack(&picked, 0)?.max(0)?,
        };
        Ok(Some(soft_matte(&largest, softness)?))
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
        if self.objects.values().any(|t| !t.bank.is_empty()) {
            self.prepare_refiner(index)?;
        }
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
            let locals = self.locals_for(held, ids, |id| self.objects[&id].roi_box)?;
            let refine = self.refine_step(held, locals.as_deref());
            let outputs = step::track(
                &self.model,
                &self.options,
                &held.features,
                &selections,
                refine,
            )?;
            results.extend(ids.iter().copied().zip(outputs));
        }
        for (id, out) in results {
            let roi = self.next_roi_box(&out)?;
            if let Some(track) = self.objects.get_mut(&id) {
                track.roi_box = roi.or(track.roi_box);
                track.bank.insert_non_cond(index, out);
            }
        }
        Ok(())
    }

    /// In quadrant mode, the frame's quadrant features, once (when the refiner reads crops).
    fn prepare_refiner(&mut self, index: i64) -> Result<()> {
        if !self.reads_crops() || self.options.refine_mode != RefineMode::Quadrants {
            return Ok(());
        }
        let s = self.model.config.image_size;
        let model = &self.model;
        let Some(held) = self.frames.by_index_mut(index) else {
            return Ok(());
        };
        if let Some(refine) = held.refine.as_mut()
            && refine.quadrants.is_none()
        {
            refine.quadrants = Some(crops::local_features(
                model,
                &refine.rgb,
                &crops::quadrant_origins(s),
            )?);
        }
        Ok(())
    }

    /// The local features of each object of a step (None when not refining, or when the
    /// refiner reads no crops): the frame's quadrants, or one window per object on its ROI box
    /// (`roi_box` of an object).
    fn locals_for(
        &self,
        held: &HeldFrame,
        ids: &[ObjectId],
        roi_box: impl Fn(ObjectId) -> Option<[f32; 4]>,
    ) -> Result<Option<Vec<LocalFeatures>>> {
        let Some(refine) = held.refine.as_ref().filter(|_| self.reads_crops()) else {
            return Ok(None);
        };
        let s = self.model.config.image_size;
        Ok(Some(match self.options.refine_mode {
            RefineMode::Quadrants => {
                let quadrants = refine.quadrants.as_ref().ok_or_else(|| {
                    Error::Candle(candle_core::Error::Msg(
                        "the frame's quadrants were not encoded".into(),
                    ))
                })?;
                vec![quadrants.clone(); ids.len()]
            }
            RefineMode::Roi => {
                let whole = [0.0, 0.0, s as f32, s as f32];
                let origins: Vec<_> = ids
                    .iter()
                    .map(|&id| crops::roi_origin(roi_box(id).unwrap_or(whole), s))
                    .collect();
                crops::window_features(&self.model, &refine.rgb, &origins)?
            }
            RefineMode::Off => return Ok(None),
        }))
    }

    fn refine_step<'a>(
        &'a self,
        held: &'a HeldFrame,
        locals: Option<&'a [LocalFeatures]>,
    ) -> Option<RefineStep<'a>> {
        let refiner = self.refiner.as_ref().filter(|_| self.refining())?;
        Some(RefineStep {
            refiner,
            locals,
            image: &held.refine.as_ref()?.input,
            memory_mask: self.options.memory_mask,
            pins: &[],
        })
    }

    /// ROI mode: the box of a step's refined mask, where the object's next window goes.
    fn next_roi_box(&self, out: &memory_bank::StoredOutput) -> Result<Option<[f32; 4]>> {
        match (&out.refined, self.options.refine_mode) {
            (Some(refined), RefineMode::Roi) => Ok(crops::positive_box(&refined.logits)?),
            _ => Ok(None),
        }
    }

    /// ROI mode, an object's first prompt: the window goes on its box, else on its clicks, else
    /// on its mask prompt's box (input pixels).
    fn prompt_roi_box(&self, prompt: &Prompt, (w, h): (usize, usize)) -> Option<[f32; 4]> {
        let s = self.model.config.image_size as f32;
        let to_input = |[x0, y0, x1, y1]: [f32; 4]| {
            [
                x0 / w as f32 * s,
                y0 / h as f32 * s,
                x1 / w as f32 * s,
                y1 / h as f32 * s,
            ]
        };
        if let Some(b) = prompt.bbox {
            return Some(to_input(b));
        }
        if let Some(b) = crops::points_box(&prompt.points) {
            return Some(to_input(b));
        }
        let mask = prompt.mask.as_ref()?;
        let (mut x0, mut y0, mut x1, mut y1) = (usize::MAX, usize::MAX, 0, 0);
        for (i, &v) in mask.data.iter().enumerate() {
            if v != 0 {
                let (x, y) = (i % mask.width, i / mask.width);
                (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
            }
        }
        let (sx, sy) = (s / mask.width as f32, s / mask.height as f32);
        let scaled = [
            x0 as f32 * sx,
            y0 as f32 * sy,
            x1 as f32 * sx,
            y1 as f32 * sy,
        ];
        (x0 <= x1).then_some(scaled)
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
        let size = held.size;
        let known_roi = self.objects.get(&prompt.object).and_then(|t| t.roi_box);
        let roi = known_roi.or_else(|| self.prompt_roi_box(prompt, size));
        self.objects.entry(prompt.object).or_default();
        self.prepare_refiner(index)?;
        let held = self.frames.by_index(index).expect("a held frame");
        let locals = self.locals_for(held, &[prompt.object], |_| roi)?;
        let refine = self.refine_step(held, locals.as_deref());
        let track = &self.objects[&prompt.object];
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
            refine,
        )?;
        let conditioning = correction.is_none() || self.options.corrections_become_conditioning;
        drop(correction);
        let roi = self.next_roi_box(&stored)?.or(roi);
        let track = self.objects.get_mut(&prompt.object).expect("just inserted");
        if self.options.refine_mode == RefineMode::Roi {
            track.roi_box = roi;
        }
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
