"""The image path with the refiner: the official image predictor's steps with the three modules in between.

`RefinedImagePredictor` wraps the official `SAM2ImagePredictor` (its transforms, features and prompt
encoding) and is what the parity fixtures record and what the evaluation runs. Mode `off` is the official
predictor's output (logits upsampled straight from stride 4 to the frame); `quadrants` and `roi` run LA on
crops of the frame, then PR and MR, whose output is brought to the frame's resolution with the frame
itself (`RefinedMasks.at_frame`: the guided filter applies there).

Two rules for clicks, beyond the paper, both on by default (`pin_clicks`, `click_guard`): the guided
filter's input is pinned to each click's label around it (`refiner.pin_clicks`), and a correction is
refused when it honours fewer of the clicks than the mask it corrects (the click guard). A correction is
clicks with a mask prompt, as the interactive loop sends them: the previous prediction's low-resolution
logits, for the same clicks but the newest (the last). Refined with the pins of those clicks, the mask
prompt is the previous output (up to the mask prompt's clamp at ±32); the decoder's mask, refined with
every pin, is the new one; each is read at every click's pixel of its refined logits at S. When the new
honours fewer, the previous output and mask prompt are returned unchanged.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sam2.sam2_image_predictor import SAM2ImagePredictor

from refiner import LocalFeatures, Refiner, clicks_honoured, is_click

MODES = ("off", "quadrants", "roi")
CELL = 16  # input pixels per image-embedding cell; crops start on this grid so every level lines up


def crop_bounds(origin: tuple[int, int], image_size: int, hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """The frame pixels [y0, y1) × [x0, x1) of the half-size crop whose top-left corner is `origin` (row,
    col) in pixels of the S×S input: input coordinates scaled by (H / S, W / S), floored."""
    (r, c), half, (h, w) = origin, image_size // 2, hw
    return r * h // image_size, (r + half) * h // image_size, c * w // image_size, (c + half) * w // image_size


def quadrant_origins(image_size: int) -> list[tuple[int, int]]:
    """Top-left, top-right, bottom-left, bottom-right."""
    half = image_size // 2
    return [(0, 0), (0, half), (half, 0), (half, half)]


def roi_origin(box: tuple[float, float, float, float], image_size: int) -> tuple[int, int]:
    """ROI mode's half-size window for an object whose box is (x0, y0, x1, y1) in input pixels: centred on
    the box as nearly as the 16-pixel grid allows, inside the input. Returns its top-left (row, col)."""
    half = image_size // 2

    def place(lo: float, hi: float) -> int:
        start = round(((lo + hi) / 2 - half / 2) / CELL) * CELL
        return int(min(max(start, 0), image_size - half))

    return place(box[1], box[3]), place(box[0], box[2])


def encode(model, inputs: torch.Tensor) -> list[torch.Tensor]:
    """[N, 3, S, S] normalised inputs -> the decoder-side features [stride 4, stride 8, stride 16]."""
    out = model.forward_image(inputs)
    return list(out["backbone_fpn"][:2]) + [out["vision_features"]]


def local_features(model, transform, frame: np.ndarray, origins: list[tuple[int, int]]) -> LocalFeatures:
    """The encoder on half-size crops of the frame (HWC uint8), each resized to S×S as a frame is, stitched
    into one grid per level. `origins`: the four quadrants (a 2×2 arrangement) or one ROI."""
    s = model.image_size
    crops = []
    for origin in origins:
        y0, y1, x0, x1 = crop_bounds(origin, s, frame.shape[:2])
        crops.append(transform(np.ascontiguousarray(frame[y0:y1, x0:x1])))
    feats = encode(model, torch.stack(crops))
    rows = sorted({r for r, _ in origins})
    cols = sorted({c for _, c in origins})
    levels = []
    for f in feats:
        grid = [torch.cat([f[origins.index((r, c))] for c in cols], -1) for r in rows]
        levels.append(torch.cat(grid, -2)[None])
    half_cells = s // 2 // CELL
    return LocalFeatures(levels, (rows[0] // CELL, cols[0] // CELL, len(rows) * half_cells, len(cols) * half_cells))


def stride2_local(local: LocalFeatures, image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """LA's stride-4 local features on the frame's stride-2 grid (zero where no crop covers) and the
    coverage map: MR's inputs."""
    r, c, h, w = local.region
    side, f = image_size // 2, CELL // 2
    level = local.levels[0]
    pad = (c * f, side - (c + w) * f, r * f, side - (r + h) * f)
    return F.pad(level, pad), F.pad(torch.ones_like(level[:, :1]), pad)


def decode(model, features: list[torch.Tensor], sparse, dense, multimask_output: bool):
    """The mask decoder on [stride 4, stride 8, embedding] features, as SAM 2 calls it: its outputs
    (masks, IoUs, tokens, object scores) and its upscaled embedding, which MR starts from (recorded from
    the decoder's last upscaling activation: the official code does not return it)."""
    decoder = model.sam_mask_decoder
    seen: list[torch.Tensor] = []
    handle = decoder.output_upscaling[-1].register_forward_hook(lambda _m, _i, out: seen.append(out))
    try:
        out = decoder(
            image_embeddings=features[2],
            image_pe=model.sam_prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask_output,
            repeat_image=False,
            high_res_features=features[:2],
        )
    finally:
        handle.remove()
    return out, seen[-1]


def mask_box(logits: torch.Tensor) -> list[float] | None:
    """(x0, y0, x1, y1) of the pixels > 0 of [H, W] logits (inclusive), or None."""
    ys, xs = torch.nonzero(logits > 0, as_tuple=True)
    if len(ys) == 0:
        return None
    return [float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())]


class RefinedImagePredictor:
    """`SAM2ImagePredictor` with the refiner. One prompt per call, as the engine's `ImagePredictor`."""

    def __init__(self, model, refiner: Refiner | None, mode: str = "quadrants"):
        if mode not in MODES:
            raise ValueError(f"mode {mode!r}: expected one of {MODES}")
        if mode != "off" and refiner is None:
            raise ValueError(f"mode {mode!r} needs a refiner")
        self.model, self.refiner, self.mode = model, refiner, mode
        self.official = SAM2ImagePredictor(model)
        # The official predictor assumes 1024 px (feature sizes 256, 128, 64): give it the model's.
        self.official._bb_feat_sizes = [(model.image_size // s,) * 2 for s in (4, 8, 16)]
        self.frame: np.ndarray | None = None
        self.pin_clicks = True  # the guided filter's input holds each click's label around it
        self.click_guard = True  # a correction that honours fewer clicks than its mask prompt is refused
        self.kept_mask_prompt: list[bool] = []  # per mask of the last prediction: the guard refused it

    @torch.inference_mode()
    def set_image(self, frame: np.ndarray) -> None:
        self.official.set_image(frame)
        self.frame = frame
        self.input = self.official._transforms(frame)[None]
        self.quadrants = None
        if self.mode == "quadrants" and self.refiner.reads_crops():
            self.quadrants = local_features(self.model, self.official._transforms, frame, quadrant_origins(self.model.image_size))

    @torch.inference_mode()
    def predict(self, points=None, labels=None, box=None, mask_input=None, multimask_output=False, roi_box=None):
        """Logits at the frame's size [K, H, W], predicted IoUs [K], and the stride-4 logits [K, 4G, 4G]
        clamped to ±32 (a mask prompt for a next call). Points and box are in frame pixels, as the
        official predictor takes them. ROI mode's window goes on `roi_box` (frame pixels) when given,
        else as the engine places it (`roi_box_for`)."""
        model, s = self.model, self.model.image_size
        h, w = self.frame.shape[:2]
        scale = torch.tensor([s / w, s / h])
        coords, labs = [], []
        if box is not None:
            coords += [[box[0], box[1]], [box[2], box[3]]]
            labs += [2, 3]
        if points is not None:
            coords += [list(p) for p in points]
            labs += list(labels)
        coords = torch.tensor(coords, dtype=torch.float32).reshape(1, -1, 2) * scale
        labs = torch.tensor(labs, dtype=torch.int32).reshape(1, -1)
        mask = None if mask_input is None else torch.as_tensor(mask_input, dtype=torch.float32).reshape(1, 1, *mask_input.shape[-2:])
        sparse, dense = model.sam_prompt_encoder(points=(coords, labs) if coords.shape[1] else None, boxes=None, masks=mask)
        feats = self.official._features
        features = [f[:1] for f in feats["high_res_feats"]] + [feats["image_embed"][:1]]
        local = None
        if self.mode != "off":
            if self.mode == "quadrants":
                local = self.quadrants
            elif self.refiner.reads_crops():
                if roi_box is None:
                    roi_box = self.roi_box_for(points, labels, box, mask_input, multimask_output)
                local = self.roi_features(roi_box, scale)
            if local is not None:
                features = self.refiner.localization_augment(features, local)
            sparse, dense = self.refiner.prompt_retargeting(
                sparse, dense, coords, labs, features[2], mask, stride=float(CELL)
            )
        (low, iou, _, _), upscaled = decode(model, features, sparse, dense, multimask_output)
        k = low.shape[1]
        self.kept_mask_prompt = [False] * k
        if self.mode == "off":
            full = F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)
            return full[0], iou[0], low[0].clamp(-32, 32)
        clicks = (coords[0], labs[0])
        pins = clicks if self.pin_clicks else None
        local_s2, coverage = stride2_local(local, s) if local is not None else (None, None)
        mr = self.refiner.mask_refinement
        refined = mr(low, upscaled, self.input, local_s2, coverage, pins)
        frame = torch.from_numpy(self.frame).permute(2, 0, 1).float()[None] / 255
        full = refined.at_frame(frame)[0]
        low = low[0].clamp(-32, 32)
        click_at = [is_click(l) for l in labs[0]]
        if self.click_guard and mask is not None and any(click_at):
            newest = max(i for i, c in enumerate(click_at) if c)
            before = [i for i in range(len(click_at)) if i != newest]
            previous = mr(mask, upscaled, self.input, local_s2, coverage, (coords[0][before], labs[0][before]) if pins else None)
            kept = clicks_honoured(refined.logits[0], *clicks) < clicks_honoured(previous.logits[0], *clicks)
            self.kept_mask_prompt = kept.tolist()
            full = torch.where(kept[:, None, None], previous.at_frame(frame)[0], full)
            low = torch.where(kept[:, None, None], mask[0].clamp(-32, 32), low)
        return full, iou[0], low

    def roi_box_for(self, points, labels, box, mask_input, multimask_output):
        """ROI mode's window for a prompt: its box, else the box of the plain SAM 2 mask (the best
        candidate by predicted IoU), else the clicks' box, else the whole frame."""
        if box is not None:
            return list(box)
        plain = RefinedImagePredictor.__new__(RefinedImagePredictor)
        plain.__dict__.update(self.__dict__, mode="off")
        masks, iou, _ = plain.predict(points, labels, None, mask_input, multimask_output)
        box = mask_box(masks[int(torch.argmax(iou))])
        if box is not None:
            return box
        if points is not None and len(points):
            p = np.asarray(points, dtype=np.float32)
            return [float(p[:, 0].min()), float(p[:, 1].min()), float(p[:, 0].max()), float(p[:, 1].max())]
        h, w = self.frame.shape[:2]
        return [0.0, 0.0, float(w), float(h)]

    def roi_features(self, roi_box, scale: torch.Tensor) -> LocalFeatures:
        x0, y0 = (torch.tensor(roi_box[:2], dtype=torch.float32) * scale).tolist()
        x1, y1 = (torch.tensor(roi_box[2:], dtype=torch.float32) * scale).tolist()
        origin = roi_origin((x0, y0, x1, y1), self.model.image_size)
        return local_features(self.model, self.official._transforms, self.frame, [origin])



