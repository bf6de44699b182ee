//! One object's memory bank: what the official predictor's per-object `output_dict` holds,
//! bounded, and the official choice of which memories and pointers a frame reads
//! (`_prepare_memory_conditioned_features`, `select_closest_cond_frames`).
//!
//! Frames are the tracker's internal indices (0, 1, 2, ... since the last reset), so temporal
//! slots and pointer distances are as if the video were endless: the pointer window never
//! shrinks for a short stream.

use std::collections::BTreeMap;

use candle_core::Tensor;

use crate::model::refiner::RefinedMasks;
use crate::model::{MemoryRef, ObjectMemory, PointerRef, Sam2Config};

/// What a frame's step left for the frames after it (`compact_current_out`).
#[derive(Debug, Clone)]
pub(crate) struct StoredOutput {
    /// Low-res mask logits [1, 1, 4h, 4w], after hole filling (the official `pred_masks`).
    pub low_res: Tensor,
    /// [1, C]
    pub obj_ptr: Tensor,
    pub object_score: f32,
    pub iou: f32,
    /// `maskmem_features` [1, Cm, h, w] in the storage dtype; dropped once no frame can read it.
    pub memory: Option<Tensor>,
    /// With a refiner: the refined mask (logits [1, 1, S, S] and what brings it to the frame's
    /// resolution); dropped once the frame is not held.
    pub refined: Option<RefinedMasks>,
}

#[derive(Debug, Default)]
pub(crate) struct MemoryBank {
    /// Conditioning frames, in the order they were added (the official dict order).
    cond: Vec<(i64, StoredOutput)>,
    /// Plain tracking frames.
    non_cond: BTreeMap<i64, StoredOutput>,
}

impl MemoryBank {
    pub fn is_empty(&self) -> bool {
        self.cond.is_empty()
    }

    pub fn is_conditioning(&self, t: i64) -> bool {
        self.cond.iter().any(|(f, _)| *f == t)
    }

    /// Bytes held by the stored tensors.
    pub fn bytes(&self) -> usize {
        let of = |o: &StoredOutput| {
            [Some(&o.low_res), Some(&o.obj_ptr), o.memory.as_ref()]
                .into_iter()
                .flatten()
                .map(|t| t.elem_count() * t.dtype().size_in_bytes())
                .sum::<usize>()
                + o.refined.as_ref().map_or(0, RefinedMasks::bytes)
        };
        self.cond.iter().map(|(_, o)| of(o)).sum::<usize>()
            + self.non_cond.values().map(of).sum::<usize>()
    }

    /// The output stored for frame `t` (a conditioning one first).
    pub fn output_at(&self, t: i64) -> Option<&StoredOutput> {
        self.cond
            .iter()
            .find(|(f, _)| *f == t)
            .map(|(_, o)| o)
            .or_else(|| self.non_cond.get(&t))
    }

    pub fn insert_non_cond(&mut self, t: i64, out: StoredOutput) {
        self.non_cond.insert(t, out);
    }

    /// Stores a conditioning frame (in place if `t` already is one), and forgets a plain
    /// tracking output of the same frame, as the official preflight does.
    pub fn insert_cond(&mut self, t: i64, out: StoredOutput) {
        self.non_cond.remove(&t);
        match self.cond.iter_mut().find(|(f, _)| *f == t) {
            Some(slot) => slot.1 = out,
            None => self.cond.push((t, out)),
        }
    }

    /// `_clear_non_cond_mem_around_input`: plain memories within `radius` frames of `t` go.
    pub fn clear_non_cond_around(&mut self, t: i64, radius: i64) {
        self.non_cond.retain(|f, _| (*f - t).abs() > radius);
    }

    /// Drops what no frame after `t` can read, and conditioning frames past `cap` (keeping the
    /// first and the most recent): memory stays constant however long the stream.
    pub fn prune(&mut self, t: i64, config: &Sam2Config, cap: usize) {
        let stride = config.memory_temporal_stride_for_eval as i64;
        // The oldest plain memory frame t + 1 reads is ((t - 1) // r) * r - (num_maskmem - 3) * r.
        let oldest_memory = t + 1 - config.num_maskmem as i64 * stride;
        let oldest_pointer = t + 1 - (config.max_obj_ptrs_in_encoder as i64 - 1);
        self.non_cond
            .retain(|f, _| *f >= oldest_pointer.min(oldest_memory));
        for (f, out) in self.non_cond.iter_mut() {
            if *f < oldest_memory {
                out.memory = None;
            }
        }
        while self.cond.len() > cap.max(2) {
            self.cond.remove(1);
        }
    }

    /// Drops the refined logits of frames before `t`: only held frames' outputs are read.
    pub fn drop_refined_before(&mut self, t: i64) {
        let outputs = self.cond.iter_mut().map(|(f, o)| (*f, o));
        for (f, out) in outputs.chain(self.non_cond.iter_mut().map(|(f, o)| (*f, o))) {
            if f < t {
                out.refined = None;
            }
        }
    }

    /// The memories and pointers frame `t` reads, in the official order, with their temporal
    /// slots and distances.
    pub fn select<'a>(
        &'a self,
        t: i64,
        config: &Sam2Config,
        pos_enc: &'a Tensor,
    ) -> ObjectMemory<'a> {
        let num_maskmem = config.num_maskmem as i64;
        let stride = config.memory_temporal_stride_for_eval as i64;
        let (selected, unselected) =
            select_closest_cond_frames(t, &self.cond, config.max_cond_frames_in_attn);
        let lookup = |f: i64| -> Option<&'a StoredOutput> {
            self.non_cond
                .get(&f)
                .or_else(|| unselected.iter().find(|(g, _)| *g == f).map(|(_, o)| *o))
        };
        let mut memories = Vec::new();
        for (_, out) in &selected {
            if let Some(features) = &out.memory {
                memories.push(MemoryRef {
                    features,
                    pos_enc,
                    t_pos: 0,
                });
            }
        }
        for t_pos in 1..num_maskmem {
            let t_rel = num_maskmem - t_pos;
            let prev = if t_rel == 1 {
                t - 1
            } else {
                (t - 2).div_euclid(stride) * stride - (t_rel - 2) * stride
            };
            if let Some(features) = lookup(prev).and_then(|o| o.memory.as_ref()) {
                memories.push(MemoryRef {
                    features,
                    pos_enc,
                    t_pos: t_pos as usize,
                });
            }
        }
        let mut pointers = Vec::new();
        if config.use_obj_ptrs_in_encoder {
            for (f, out) in &selected {
                if config.only_obj_ptrs_in_the_past_for_eval && *f > t {
                    continue;
                }
                let d = t - f;
                pointers.push(PointerRef {
                    pointer: &out.obj_ptr,
                    distance: if config.use_signed_tpos_enc_to_obj_ptrs {
                        d
                    } else {
                        d.abs()
                    },
                });
            }
            for t_diff in 1..config.max_obj_ptrs_in_encoder as i64 {
                let f = t - t_diff;
                if f < 0 {
                    break;
                }
                if let Some(out) = lookup(f) {
                    pointers.push(PointerRef {
                        pointer: &out.obj_ptr,
                        distance: t_diff,
                    });
                }
            }
        }
        ObjectMemory { memories, pointers }
    }
}

type Entry<'a> = (i64, &'a StoredOutput);

/// `select_closest_cond_frames`: all conditioning frames, or (with a limit) the closest before
/// `t`, the closest at or after it, then the nearest others. Returns (selected, unselected).
fn select_closest_cond_frames(
    t: i64,
    cond: &[(i64, StoredOutput)],
    max_cond_frames: i64,
) -> (Vec<Entry<'_>>, Vec<Entry<'_>>) {
    let all: Vec<Entry> = cond.iter().map(|(f, o)| (*f, o)).collect();
    if max_cond_frames < 0 || all.len() as i64 <= max_cond_frames {
        return (all, Vec::new());
    }
    let mut chosen: Vec<i64> = Vec::new();
    if let Some(before) = all.iter().map(|(f, _)| *f).filter(|f| *f < t).max() {
        chosen.push(before);
    }
    if let Some(after) = all.iter().map(|(f, _)| *f).filter(|f| *f >= t).min() {
        chosen.push(after);
    }
    let mut rest: Vec<i64> = all
        .iter()
        .map(|(f, _)| *f)
        .filter(|f| !chosen.contains(f))
        .collect();
    // Python's `sorted` is stable: ties keep the dict order.
    rest.sort_by_key(|f| (f - t).abs());
    let room = (max_cond_frames as usize).saturating_sub(chosen.len());
    chosen.extend(rest.into_iter().take(room));
    // The official result is a dict built in this order: before, after, then the nearest.
    let selected = chosen
        .iter()
        .filter_map(|c| all.iter().find(|(f, _)| f == c).copied())
        .collect();
    let unselected = all
        .iter()
        .filter(|(f, _)| !chosen.contains(f))
        .copied()
        .collect();
    (selected, unselected)
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device};

    use super::*;

    fn out(tag: f32) -> StoredOutput {
        let t = Tensor::full(tag, (1, 1), &Device::Cpu).unwrap();
        StoredOutput {
            low_res: t.clone(),
            obj_ptr: t.clone(),
            object_score: tag,
            iou: 1.0,
            memory: Some(t),
            refined: None,
        }
    }

    fn config() -> Sam2Config {
        Sam2Config::preset("sam2.1_hiera_t").unwrap()
    }

    /// (slot, tag) of each memory and (distance, tag) of each pointer.
    type Tags = (Vec<(usize, f32)>, Vec<(i64, f32)>);

    fn tags(m: &ObjectMemory) -> Tags {
        let v = |t: &Tensor| {
            t.to_dtype(DType::F32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()[0]
        };
        (
            m.memories
                .iter()
                .map(|r| (r.t_pos, v(r.features)))
                .collect(),
            m.pointers
                .iter()
                .map(|p| (p.distance, v(p.pointer)))
                .collect(),
        )
    }

    #[test]
    fn selection_follows_the_official_slots_and_distances() {
        let config = config();
        let pos = Tensor::zeros((1, 1), DType::F32, &Device::Cpu).unwrap();
        let mut bank = MemoryBank::default();
        bank.insert_cond(0, out(0.0));
        for t in 1..20 {
            bank.insert_non_cond(t, out(t as f32));
        }
        bank.insert_cond(12, out(112.0));
        let (mems, ptrs) = tags(&bank.select(20, &config, &pos));
        // Conditioning frames first (slot 0), then frames 14..19 in slots 1..6.
        assert_eq!(
            mems,
            vec![
                (0, 0.0),
                (0, 112.0),
                (1, 14.0),
                (2, 15.0),
                (3, 16.0),
                (4, 17.0),
                (5, 18.0),
                (6, 19.0)
            ]
        );
        // Pointers: conditioning frames with their signed distance, then frames 19 back to 5
        // (15 of them), skipping frame 12, which is conditioning now.
        assert_eq!(ptrs[..2], [(20, 0.0), (8, 112.0)]);
        let recent: Vec<i64> = ptrs[2..].iter().map(|p| p.0).collect();
        assert_eq!(recent, (1..16).filter(|d| *d != 8).collect::<Vec<_>>());
    }

    #[test]
    fn pruning_keeps_memory_constant() {
        let config = config();
        let mut bank = MemoryBank::default();
        for t in 0..1000 {
            if t % 100 == 0 {
                bank.insert_cond(t, out(t as f32));
            } else {
                bank.insert_non_cond(t, out(t as f32));
            }
            bank.prune(t, &config, 4);
        }
        assert_eq!(bank.cond.len(), 4);
        assert_eq!(bank.cond[0].0, 0, "the first conditioning frame is kept");
        assert_eq!(
            bank.cond.iter().map(|c| c.0).collect::<Vec<_>>(),
            vec![0, 700, 800, 900]
        );
        assert!(bank.non_cond.len() <= 15);
        assert!(
            bank.non_cond
                .values()
                .filter(|o| o.memory.is_some())
                .count()
                <= 7
        );
        // What frame 1000 reads is still there.
        let pos = Tensor::zeros((1, 1), DType::F32, &Device::Cpu).unwrap();
        let (mems, ptrs) = tags(&bank.select(1000, &config, &pos));
        assert_eq!(mems.len(), 4 + 6);
        assert_eq!(ptrs.len(), 4 + 15);
    }

    #[test]
    fn closest_conditioning_frames_when_limited() {
        let cond: Vec<(i64, StoredOutput)> = [0, 10, 20, 30, 40]
            .iter()
            .map(|&f| (f, out(f as f32)))
            .collect();
        let (sel, unsel) = select_closest_cond_frames(22, &cond, 3);
        assert_eq!(
            sel.iter().map(|e| e.0).collect::<Vec<_>>(),
            vec![20, 30, 10]
        );
        assert_eq!(unsel.iter().map(|e| e.0).collect::<Vec<_>>(), vec![0, 40]);
        let (all, none) = select_closest_cond_frames(22, &cond, -1);
        assert_eq!(all.len(), 5);
        assert!(none.is_empty());
    }
}
