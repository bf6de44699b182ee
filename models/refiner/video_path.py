"""The video path with the refiner: the official video predictor, its SAM heads with the three modules.

`RefinedVideoPredictor` wraps an official `SAM2VideoPredictor` (built with our tracker's settings) and
replaces its `_forward_sam_heads` by the same steps with the refiner in between: LA on the
memory-conditioned embedding and the high-resolution features, PR on the prompt embeddings, MR on the
kept mask. Its outputs are what `tests/model_parity_refiner.rs` compares the engine's tracker with, and
what the evaluation tracks with. Per frame and object:

- the local features: in `quadrants` mode the frame's four quadrants; in `roi` mode a window on the box
  of the object's refined mask on the previous frame it was seen on (on a prompted frame: the prompt's
  box, else its clicks' box);
- the memory encoder is fed `memory_mask`: the refined mask (`refined`) or SAM 2's own (`sam2`);
- on a prompted frame the prompt's clicks are pinned in the guided filter's input (`pin_clicks`, on by
  default, as in the image path); tracked frames have no clicks to pin;
- the output is the refined mask at the frame's resolution (`frame_logits`: the base upsampled, the
  guided filter applied with the frame; absent objects keep SAM 2's no-object score).
"""

from __future__ import annotations

from types import MethodType

import numpy as np
import torch
import torch.nn.functional as F
from sam2.modeling.sam2_base import NO_OBJ_SCORE

from image_path import CELL, decode, local_features, mask_box, quadrant_origins, roi_origin, stride2_local
from refiner import Refiner, upsample

MEMORY_MASKS = ("refined", "sam2")


def frame_input(frame: np.ndarray, image_size: int) -> torch.Tensor:
    """A frame or crop (HWC uint8) to the model input [3, S, S], as the engine's streaming transform:
    bilinear with antialiasing, ImageNet normalisation."""
    x = torch.from_numpy(frame).permute(2, 0, 1).float() / 255
    x = F.interpolate(x[None], size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True)[0]
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    return (x - mean) / std


class RefinedVideoPredictor:
    def __init__(self, predictor, refiner: Refiner, mode: str, memory_mask: str = "sam2", pin_clicks: bool = True):
        if mode not in ("quadrants", "roi"):
            raise ValueError(f"mode {mode!r}")
        if memory_mask not in MEMORY_MASKS:
            raise ValueError(f"memory_mask {memory_mask!r}")
        self.p, self.refiner, self.mode, self.memory_mask = predictor, refiner, mode, memory_mask
        self.pin_clicks = pin_clicks
        self.frames: list[np.ndarray] = []
        self.refined: dict[tuple[int, int], torch.Tensor] = {}  # (frame, obj) -> [1, 1, S, S]
        self.refined_masks: dict[tuple[int, int], tuple] = {}  # (frame, obj) -> (RefinedMasks, appearing)
        self.roi_box: dict[int, list[float]] = {}  # obj -> input-pixel box for its next window
        self.current: tuple[int, int] | None = None  # (frame, obj) being run
        self.in_mask_as_output = False
        self.prompt_box: list[float] | None = None
        predictor._forward_sam_heads = MethodType(self._forward_sam_heads, predictor)
        official_run = predictor._run_single_frame_inference
        official_encoder = predictor._run_memory_encoder
        official_mask_as_output = predictor._use_mask_as_output

        def run_single(this, inference_state, output_dict, frame_idx, batch_size, *args, **kwargs):
            obj = self._object_of(inference_state, output_dict)
            self.current = (frame_idx, obj)
            return official_run(inference_state, output_dict, frame_idx, batch_size, *args, **kwargs)

        def run_memory_encoder(this, inference_state, frame_idx, batch_size, high_res_masks, *args, **kwargs):
            # The prompted frame's memory, re-encoded before tracking: from the refined mask when asked.
            if self.memory_mask == "refined":
                masks = [self.refined.get((frame_idx, o)) for o in range(high_res_masks.shape[0])]
                if all(m is not None for m in masks):
                    high_res_masks = torch.cat(masks)
            return official_encoder(inference_state, frame_idx, batch_size, high_res_masks, *args, **kwargs)

        def use_mask_as_output(this, *args, **kwargs):
            self.in_mask_as_output = True
            try:
                return official_mask_as_output(*args, **kwargs)
            finally:
                self.in_mask_as_output = False

        predictor._run_single_frame_inference = MethodType(run_single, predictor)
        predictor._run_memory_encoder = MethodType(run_memory_encoder, predictor)
        predictor._use_mask_as_output = MethodType(use_mask_as_output, predictor)

    @staticmethod
    def _object_of(inference_state, output_dict) -> int:
        for idx, d in inference_state["output_dict_per_obj"].items():
            if d is output_dict:
                return idx
        for idx, d in inference_state["temp_output_dict_per_obj"].items():
            if d is output_dict:
                return idx
        return 0

    def local_for(self, frame_idx: int, obj: int):
        s = self.p.image_size
        if self.mode == "quadrants":
            return local_features(self.p, self.transform, self.frames[frame_idx], quadrant_origins(s))
        box = self.roi_box.get(obj, [0.0, 0.0, float(s), float(s)])
        return local_features(self.p, self.transform, self.frames[frame_idx], [roi_origin(box, s)])

    def transform(self, crop: np.ndarray) -> torch.Tensor:
        return frame_input(crop, self.p.image_size)

    def _forward_sam_heads(self, model, backbone_features, point_inputs=None, mask_inputs=None,
                           high_res_features=None, multimask_output=False):
        """`SAM2Base._forward_sam_heads` with LA, PR and MR; the official code's steps, in its order."""
        b = backbone_features.size(0)
        device = backbone_features.device
        s = model.image_size
        if point_inputs is not None:
            coords, labels = point_inputs["point_coords"], point_inputs["point_labels"]
        else:
            coords = torch.zeros(b, 1, 2, device=device)
            labels = -torch.ones(b, 1, dtype=torch.int32, device=device)
        if mask_inputs is not None:
            if mask_inputs.shape[-2:] != model.sam_prompt_encoder.mask_input_size:
                mask_prompt = F.interpolate(mask_inputs.float(), size=model.sam_prompt_encoder.mask_input_size,
                                            align_corners=False, mode="bilinear", antialias=True)
            else:
                mask_prompt = mask_inputs
        else:
            mask_prompt = None
        sparse, dense = model.sam_prompt_encoder(points=(coords, labels), boxes=None, masks=mask_prompt)
        refine = not self.in_mask_as_output
        features = list(high_res_features) + [backbone_features]
        if refine:
            frame_idx, obj = self.current
            if self.mode == "roi" and obj not in self.roi_box:
                self.roi_box[obj] = self.first_box(coords, labels)
            local = self.local_for(frame_idx, obj) if self.refiner.reads_crops() else None
            if local is not None:
                features = self.refiner.localization_augment(features, local)
            sparse, dense = self.refiner.prompt_retargeting(sparse, dense, coords, labels, features[2], mask_prompt, float(CELL))
        (low_multi, ious, sam_tokens, object_score_logits), upscaled = decode(
            model, features, sparse, dense, multimask_output)
        appearing = object_score_logits > 0
        if model.pred_obj_scores:
            low_multi = torch.where(appearing[:, None, None], low_multi, NO_OBJ_SCORE)
        low_multi = low_multi.float()
        high_multi = upsample(low_multi, s)
        sam_output_token = sam_tokens[:, 0]
        if multimask_output:
            best = torch.argmax(ious, dim=-1)
            rows = torch.arange(b, device=device)
            low, high = low_multi[rows, best].unsqueeze(1), high_multi[rows, best].unsqueeze(1)
            if sam_tokens.size(1) > 1:
                sam_output_token = sam_tokens[rows, best]
        else:
            low, high = low_multi, high_multi
        if refine:
            local_s2, coverage = stride2_local(local, s) if local is not None else (None, None)
            image = self.transform(self.frames[frame_idx])[None]
            pins = None
            if self.pin_clicks and point_inputs is not None:
                if b != 1:
                    raise ValueError(f"clicks for a batch of {b} objects: the predictor prompts one at a time")
                pins = (coords[0], labels[0])
            masks = self.refiner.mask_refinement(low, upscaled, image, local_s2, coverage, pins)
            refined = torch.where(appearing[:, :, None, None], masks.logits, NO_OBJ_SCORE)
            self.refined[(frame_idx, obj)] = refined
            self.refined_masks[(frame_idx, obj)] = (masks, appearing)
            box = mask_box(refined[0, 0])
            if box is not None:
                self.roi_box[obj] = box
            if self.memory_mask == "refined":
                high = refined
        obj_ptr = model.obj_ptr_proj(sam_output_token)
        if model.pred_obj_scores:
            lam = object_score_logits.sigmoid() if model.soft_no_obj_ptr else appearing.float()
            if model.fixed_no_obj_ptr:
                obj_ptr = lam * obj_ptr
            obj_ptr = obj_ptr + (1 - lam) * model.no_obj_ptr
        return low_multi, high_multi, ious, low, high, obj_ptr, object_score_logits

    def frame_logits(self, frame_idx: int, obj: int) -> torch.Tensor:
        """The refined output of `obj` on frame `frame_idx` at the frame's resolution [1, 1, H, W]: where
        the guided filter applies with the frame itself (absent objects: SAM 2's no-object score)."""
        masks, appearing = self.refined_masks[(frame_idx, obj)]
        frame = torch.from_numpy(self.frames[frame_idx]).permute(2, 0, 1).float()[None] / 255
        return torch.where(appearing[:, :, None, None], masks.at_frame(frame), NO_OBJ_SCORE)

    def first_box(self, coords, labels) -> list[float]:
        """ROI mode, an object's first prompt: the prompt's box, else its clicks' box, else the whole
        input (input pixels). (The engine also places it on a mask prompt's box; mask prompts do not
        reach the SAM heads here.)"""
        lab = labels[0].tolist()
        c = coords[0]
        if 2 in lab and 3 in lab:
            return [float(c[lab.index(2), 0]), float(c[lab.index(2), 1]), float(c[lab.index(3), 0]), float(c[lab.index(3), 1])]
        real = [i for i, v in enumerate(lab) if v in (0, 1)]
        if real:
            p = c[real]
            return [float(p[:, 0].min()), float(p[:, 1].min()), float(p[:, 0].max()), float(p[:, 1].max())]
        s = float(self.p.image_size)
        return [0.0, 0.0, s, s]
