#!/usr/bin/env python3
"""Record parity fixtures from the official SAM 2 (`sam2` 1.1.0) for the Rust port.

For every case in `CASES` this script

1. builds a small `SAM2Base` from an official config plus shrinking overrides (as `build_sam2` does),
2. overwrites every parameter and buffer with seeded random values at a sane scale,
3. calibrates the object-score head so that the object score changes sign along the tracking clip,
4. draws a synthetic image and a synthetic clip,
5. runs the official code on them (the image predictor, the memory encoder, the memory attention, and
   `SAM2Base.track_step` over a scripted multi-object schedule), and
6. writes `tests/fixtures/<case>/`: config, weights, inputs and the recorded outputs.

The file formats are specified in `README.md` next to this script. Everything is deterministic: fixed
seeds, a single CPU thread, and inputs re-read from the PNG files that are written, so that the Rust side
reads exactly what the reference saw.

Run from the repository root with the reference interpreter:

    /opt/sam2-reference/bin/python tests/reference/make_fixtures.py [--case t256] [--full]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

# Importing `sam2` initialises hydra's config module (see sam2/__init__.py).
import sam2
from hydra.utils import instantiate
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file
from torchvision.transforms import Normalize, ToTensor

from sam2.modeling.backbones.hieradet import Hiera
from sam2.modeling.memory_encoder import CXBlock
from sam2.modeling.position_encoding import PositionEmbeddingRandom
from sam2.modeling.sam2_base import SAM2Base
from sam2.modeling.sam2_utils import LayerNorm2d, get_1d_sine_pe, select_closest_cond_frames
from sam2.sam2_image_predictor import SAM2ImagePredictor

# SAM2Transforms still uses torch.jit.script; the deprecation warning is noise here.
warnings.filterwarnings("ignore", message=r"`torch.jit.script` is deprecated", category=FutureWarning)

SAM2_ROOT = Path(sam2.__file__).parent
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"

# What `build_sam2(..., apply_postprocessing=True)` adds to every official config.
POSTPROCESSING = {
    "sam_mask_decoder_extra_args": {
        "dynamic_multimask_via_stability": True,
        "dynamic_multimask_stability_delta": 0.05,
        "dynamic_multimask_stability_thresh": 0.98,
    }
}

NUM_FRAMES = 32  # `num_frames` passed to every track_step (the video length the model is told)
CLIP_LEN = 10  # frames actually drawn and tracked

# Minimum distance of every discrete decision of the reference from its threshold, so that a faithful
# port with float32 rounding differences takes the same branches (see `DecisionProbe`).
MIN_OBJ_SCORE_MARGIN = 0.05  # |object_score_logits| on every SAM-decoder call of the tracking clip
MIN_IOU_GAP = 1e-3  # best minus second-best predicted IoU, wherever an argmax picks a mask
LOGIT_TOLERANCE = 1e-3  # mask logits this close to +-stability_delta may count either way


# --------------------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------------------


@dataclass
class Case:
    name: str
    config: str  # official YAML, relative to the sam2 package
    image_size: int
    overrides: dict  # merged into the config's `model:` subtree
    weights_file: str  # "weights.pt" (torch.save({"model": sd})) or "weights.safetensors"
    image_wh: tuple  # size of image.png (width, height); differs from image_size on purpose
    # Seeds the weights, the image and the clip. Picked among those for which the object-score
    # calibration succeeds, every decision has its margin, and the stability test goes both ways.
    seed: int


CASES = {
    # SAM 2.1 flags (signed, projected temporal encoding of object pointers; no-object spatial
    # embedding). 200x150 is upsampled to 256. Hiera pads its windows at stages 3 and 4
    # (16x16 tokens in 14x14 windows, 8x8 in 7x7).
    "t256": Case(
        name="t256",
        config="configs/sam2.1/sam2.1_hiera_t.yaml",
        image_size=256,
        overrides={
            "image_encoder": {
                "trunk": {
                    "embed_dim": 16,
                    "num_heads": 1,
                    "stages": [1, 2, 3, 2],
                    "global_att_blocks": [4, 7],
                    "window_spec": [8, 4, 14, 7],
                    "window_pos_embed_bkg_spatial_size": [7, 7],
                },
                "neck": {
                    "d_model": 32,
                    "backbone_channel_list": [128, 64, 32, 16],
                    # Not in the brief: the official 256 must follow d_model (the sine encoding
                    # is added to d_model-channel features in the memory attention).
                    "position_encoding": {"num_pos_feats": 32},
                },
            },
            "memory_attention": {
                "d_model": 32,
                "num_layers": 2,
                "layer": {
                    "d_model": 32,
                    "dim_feedforward": 64,
                    "self_attention": {"embedding_dim": 32},
                    "cross_attention": {"embedding_dim": 32, "kv_in_dim": 16},
                },
            },
            "memory_encoder": {
                "out_dim": 16,
                "in_dim": 32,
                "mask_downsampler": {"embed_dim": 32},
                "fuser": {"layer": {"dim": 32}},
                "position_encoding": {"num_pos_feats": 16},
            },
        },
        weights_file="weights.pt",
        image_wh=(200, 150),
        seed=152,
    ),
    # SAM 2.0 flags (no temporal encoding of object pointers, no no-object spatial embedding).
    # 260x230 is downsampled to 192, so the antialiased resize matters. Hiera pads at stages 3 and 4
    # (12x12 tokens in 7x7 windows, 6x6 in 4x4).
    "s192": Case(
        name="s192",
        config="configs/sam2/sam2_hiera_s.yaml",
        image_size=192,
        overrides={
            "image_encoder": {
                "trunk": {
                    "embed_dim": 24,
                    "num_heads": 2,
                    "stages": [2, 1, 3, 1],
                    "global_att_blocks": [5],
                    "window_spec": [4, 4, 7, 4],
                    "window_pos_embed_bkg_spatial_size": [6, 6],
                },
                "neck": {
                    "d_model": 32,
                    "backbone_channel_list": [192, 96, 48, 24],
                    "position_encoding": {"num_pos_feats": 32},  # follows d_model (see t256)
                },
            },
            "memory_attention": {
                "d_model": 32,
                "num_layers": 2,
                "layer": {
                    "d_model": 32,
                    "dim_feedforward": 64,
                    "self_attention": {"embedding_dim": 32},
                    "cross_attention": {"embedding_dim": 32, "kv_in_dim": 8},
                },
            },
            "memory_encoder": {
                "out_dim": 8,
                "in_dim": 32,
                "mask_downsampler": {"embed_dim": 32},
                "fuser": {"layer": {"dim": 32}},
                "position_encoding": {"num_pos_feats": 8},
            },
        },
        weights_file="weights.safetensors",
        image_wh=(260, 230),
        seed=127,
    ),
}


# --------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------


def build_model(case: Case):
    """Instantiate the effective config like `build_sam2` does; return (model, effective `model:` cfg)."""
    cfg = OmegaConf.load(SAM2_ROOT / case.config)
    model_cfg = OmegaConf.merge(cfg.model, case.overrides, {"image_size": case.image_size}, POSTPROCESSING)
    # RoPE tables are built for the stride-16 grid; the official configs hard-code 64x64 (1024 px).
    e = case.image_size // 16
    for attn in ("self_attention", "cross_attention"):
        model_cfg.memory_attention.layer[attn].feat_sizes = [e, e]
    OmegaConf.resolve(model_cfg)
    model = instantiate(model_cfg, _recursive_=True).eval()
    assert isinstance(model, SAM2Base)
    return model, model_cfg


def randomize_weights(model: SAM2Base, gen: torch.Generator) -> int:
    """Overwrite every parameter and buffer with seeded random values at a sane scale.

    Official initialisations leave many paths silent (CXBlock gamma = 1e-6, zero embeddings, unit
    LayerNorms); a port could get them wrong and still match. Here weights keep activations at unit
    scale, and every tensor is distinct, so every path contributes to the outputs.
    """
    touched = set()

    def fill(t: torch.Tensor, values: torch.Tensor) -> None:
        t.copy_(values.reshape(t.shape))
        touched.add(t.data_ptr())

    def normal(t, std, mean=0.0):
        fill(t, torch.randn(t.shape, generator=gen) * std + mean)

    def uniform(t, lo, hi):
        fill(t, lo + (hi - lo) * torch.rand(t.shape, generator=gen))

    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            w = module.weight
            if isinstance(module, nn.Linear):
                fan_in = w.shape[1]
            elif isinstance(module, nn.Conv2d):
                fan_in = w.shape[1] * w.shape[2] * w.shape[3]  # in_channels / groups * kh * kw
            else:
                # A transposed conv output pixel sums in_channels * (k / stride)^2 input terms.
                k = w.shape[2] * w.shape[3]
                fan_in = w.shape[0] * k // (module.stride[0] * module.stride[1])
            normal(w, 1.0 / math.sqrt(fan_in))  # variance 1 / fan_in
            if module.bias is not None:
                normal(module.bias, 0.05)
        elif isinstance(module, (nn.LayerNorm, LayerNorm2d)):
            normal(module.weight, 0.1, mean=1.0)
            normal(module.bias, 0.05)
        elif isinstance(module, nn.Embedding):
            normal(module.weight, 0.5)
        elif isinstance(module, CXBlock):
            uniform(module.gamma, 0.5, 1.0)  # layer scale; 1e-6 at init would hide the fuser
        elif isinstance(module, PositionEmbeddingRandom):
            normal(module.positional_encoding_gaussian_matrix, 1.0)
        elif isinstance(module, Hiera):
            normal(module.pos_embed, 0.5)
            normal(module.pos_embed_window, 0.5)
        elif isinstance(module, SAM2Base):
            for name in ("maskmem_tpos_enc", "no_mem_embed", "no_mem_pos_enc", "no_obj_ptr", "no_obj_embed_spatial"):
                t = getattr(module, name, None)
                if t is not None:
                    normal(t, 0.5)

    # Every tensor of the state dict must have been drawn, and none may be constant.
    for key, t in model.state_dict().items():
        assert t.data_ptr() in touched, f"not randomised: {key}"
        assert t.numel() == 1 or t.min() < t.max(), f"constant tensor: {key}"
    return len(model.state_dict())


# Gains applied on top of the unit-scale draw, where unit scale would silence a path of the
# tracker. Each was checked by `check_memory_sensitivity` and the decision margins.
GAINS = {
    # Cross-attention to the memory: with unit-scale q/k the attention over 7 * E^2 + pointer tokens
    # is nearly uniform, so it averages the memories away and no single memory matters.
    "memory_attention.cross_attn.qk": 2.0,
    # Object pointers come out of a 3-layer MLP at ~1/5 of the scale of the spatial memory tokens;
    # among ~1800 tokens they would get no attention at all.
    "obj_ptr_proj.out": 5.0,
    # The object score varies by ~0.1 across frames; scaled, its sign can be set with a margin.
    "pred_obj_score_head.out": 10.0,
    # Mask logits: unit-scale ones put ~5% of the pixels within the +-0.05 band of the stability
    # test, so the single-mask output would always fall back to the best multimask one.
    "output_hypernetworks_mlps.out": 5.0,
}


def apply_gains(model: SAM2Base) -> None:
    g = GAINS["memory_attention.cross_attn.qk"]
    for layer in model.memory_attention.layers:
        layer.cross_attn_image.q_proj.weight.mul_(g)
        layer.cross_attn_image.k_proj.weight.mul_(g)
    last = model.obj_ptr_proj.layers[-1] if hasattr(model.obj_ptr_proj, "layers") else model.obj_ptr_proj
    last.weight.mul_(GAINS["obj_ptr_proj.out"])
    last.bias.mul_(GAINS["obj_ptr_proj.out"])
    obj_score_head_out(model).weight.mul_(GAINS["pred_obj_score_head.out"])
    for mlp in model.sam_mask_decoder.output_hypernetworks_mlps:
        mlp.layers[-1].weight.mul_(GAINS["output_hypernetworks_mlps.out"])
        mlp.layers[-1].bias.mul_(GAINS["output_hypernetworks_mlps.out"])


def obj_score_head_out(model: SAM2Base) -> nn.Linear:
    """The last layer of the object-score head."""
    head = model.sam_mask_decoder.pred_obj_score_head
    return head.layers[-1] if hasattr(head, "layers") else head


def save_weights(model: SAM2Base, path: Path) -> None:
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    if path.suffix == ".pt":
        torch.save({"model": state}, path)  # the layout of the official checkpoints
        loaded = torch.load(path, map_location="cpu", weights_only=True)["model"]
    else:
        save_file(state, path)
        loaded = load_file(path)
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)


def check_written_model(out_dir: Path, case: Case, rec: "Recorder") -> None:
    """The files alone define the model: config.yaml and the weights rebuild it bit for bit."""
    cfg = OmegaConf.load(out_dir / "config.yaml")
    model = instantiate(cfg.model, _recursive_=True).eval()
    path = out_dir / case.weights_file
    state = torch.load(path, map_location="cpu", weights_only=True)["model"] if path.suffix == ".pt" else load_file(path)
    model.load_state_dict(state, strict=True)  # as build_sam2's _load_checkpoint does
    fpn = model.forward_image(rec.tensors["preprocess/image"])["backbone_fpn"]
    assert all(torch.equal(f, rec.tensors[f"backbone/fpn/{i}"]) for i, f in enumerate(fpn))


# --------------------------------------------------------------------------------------------------
# Synthetic inputs
# --------------------------------------------------------------------------------------------------


def background_coefficients(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0.5, 1.5, size=(3, 4))


def textured_background(h: int, w: int, phase: float, coef: np.ndarray) -> np.ndarray:
    """A smooth colour field: gradients, low-frequency waves and a soft checkerboard ([h, w, 3] in 0..1).

    Smooth on purpose, so that the PNG files stay small; `phase` pans it, `coef` [3, 4] varies it.
    """
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    y, x = y / max(h, w), x / max(h, w)
    img = np.empty((h, w, 3))
    for c in range(3):
        img[..., c] = (
            0.45
            + 0.15 * coef[c, 0] * (x - 0.5)
            + 0.10 * coef[c, 1] * (y - 0.5)
            + 0.08 * np.sin(2 * math.pi * (coef[c, 2] * 2.0 * x + 1.5 * y + phase))
            + 0.06 * np.cos(2 * math.pi * (coef[c, 3] * 1.5 * y - 0.7 * x))
        )
    checker = ((np.floor(x * 8 + phase) + np.floor(y * 8)) % 2) * 2 - 1
    return img + 0.04 * checker[..., None]


def disk_mask(h, w, cx, cy, r):
    y, x = np.mgrid[0:h, 0:w] + 0.5
    return (x - cx) ** 2 + (y - cy) ** 2 <= r**2


def ellipse_mask(h, w, cx, cy, rx, ry, angle):
    y, x = np.mgrid[0:h, 0:w] + 0.5
    c, s = math.cos(angle), math.sin(angle)
    u, v = (x - cx) * c + (y - cy) * s, -(x - cx) * s + (y - cy) * c
    return (u / rx) ** 2 + (v / ry) ** 2 <= 1.0


def rect_mask(h, w, cx, cy, half_w, half_h, angle):
    y, x = np.mgrid[0:h, 0:w] + 0.5
    c, s = math.cos(angle), math.sin(angle)
    u, v = (x - cx) * c + (y - cy) * s, -(x - cx) * s + (y - cy) * c
    return (np.abs(u) <= half_w) & (np.abs(v) <= half_h)


def triangle_mask(h, w, pts):
    y, x = np.mgrid[0:h, 0:w] + 0.5
    inside = np.ones((h, w), bool)
    for (x0, y0), (x1, y1) in zip(pts, pts[1:] + pts[:1]):
        inside &= (x1 - x0) * (y - y0) - (y1 - y0) * (x - x0) >= 0
    return inside


def paint(img, mask, color, shade=0.0):
    """Paint `mask` with `color`, darkened towards the bottom of the image by `shade`."""
    ys = np.linspace(0.0, 1.0, img.shape[0])[:, None, None]
    shaded = np.broadcast_to(np.asarray(color)[None, None, :] * (1.0 - shade * ys), img.shape)
    img[mask] = shaded[mask]


def to_uint8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)


def bbox(mask: np.ndarray):
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


def make_image(w: int, h: int, rng: np.random.Generator):
    """The still image and its prompts (pixel coordinates of the image; all on frame 0)."""
    img = textured_background(h, w, phase=0.3, coef=background_coefficients(rng))
    u = min(w, h)
    disk = disk_mask(h, w, 0.25 * w, 0.32 * h, 0.13 * u)
    rect = rect_mask(h, w, 0.68 * w, 0.30 * h, 0.20 * u, 0.09 * u, math.radians(25))
    tri = triangle_mask(h, w, [(0.12 * w, 0.92 * h), (0.30 * w, 0.55 * h), (0.48 * w, 0.92 * h)])
    ell = ellipse_mask(h, w, 0.74 * w, 0.72 * h, 0.17 * u, 0.10 * u, math.radians(-20))
    paint(img, tri, (0.95, 0.80, 0.20), shade=0.3)
    paint(img, ell, (0.20, 0.70, 0.35), shade=0.2)
    paint(img, rect, (0.15, 0.30, 0.85), shade=0.3)
    paint(img, disk, (0.90, 0.25, 0.20), shade=0.4)

    def pt(x, y):
        return [float(round(x)), float(round(y))]

    c, s = math.cos(math.radians(25)), math.sin(math.radians(25))
    rc = (0.68 * w, 0.30 * h)
    along = 0.12 * u
    ell_box = bbox(ell)
    prompts = [
        # one positive click: multimask output, the CLI keeps the best of 3
        {"frame": 0, "object": 1, "points": [pt(0.25 * w, 0.32 * h)], "labels": [1]},
        # two positive clicks along the bar, one negative below it
        {
            "frame": 0,
            "object": 2,
            "points": [
                pt(rc[0] - along * c, rc[1] - along * s),
                pt(rc[0] + along * c, rc[1] + along * s),
                pt(0.60 * w, 0.52 * h),
            ],
            "labels": [1, 1, 0],
        },
        # a box alone
        {"frame": 0, "object": 3, "points": [], "labels": [], "box": bbox(tri)},
        # a box with a negative click in its corner and a positive one at the centre
        {
            "frame": 0,
            "object": 4,
            "points": [pt(ell_box[0] + 3, ell_box[1] + 3), pt(0.74 * w, 0.72 * h)],
            "labels": [0, 1],
            "box": ell_box,
        },
    ]
    return to_uint8(img), prompts


@dataclass
class Clip:
    frames: list  # [S, S, 3] uint8 per frame
    disk: list  # per frame: (cx, cy, r) of object 1 (a disk)
    rect_masks: list  # per frame: mask of object 2 (a rotating bar)
    ellipse_masks: list  # per frame: mask of object 3 (a rotating ellipse)


def make_clip(size: int, rng: np.random.Generator) -> Clip:
    """A clip of CLIP_LEN frames: a sliding disk, a rotating bar and a drifting ellipse on a panning background."""
    frames, disks, rects, ells = [], [], [], []
    coef = background_coefficients(rng)
    for t in range(CLIP_LEN):
        a = t / (CLIP_LEN - 1)
        img = textured_background(size, size, phase=0.15 * t, coef=coef)
        disk = (size * (0.22 + 0.50 * a), size * (0.28 + 0.12 * a), size * 0.11)
        rect = rect_mask(size, size, size * (0.66 - 0.06 * a), size * 0.72, size * 0.15, size * 0.07, math.radians(10 + 50 * a))
        ell = ellipse_mask(
            size, size, size * (0.28 + 0.05 * a), size * (0.62 + 0.18 * a), size * 0.12, size * 0.08, math.radians(30 * a)
        )
        paint(img, ell, (0.25, 0.75, 0.30), shade=0.3)
        paint(img, rect, (0.20, 0.35, 0.90), shade=0.3)
        paint(img, disk_mask(size, size, *disk), (0.90, 0.30, 0.20), shade=0.4)
        frames.append(to_uint8(img))
        disks.append(disk)
        rects.append(rect)
        ells.append(ell)
    return Clip(frames, disks, rects, ells)


def synthetic_mask_logits(size: int) -> torch.Tensor:
    """A smooth high-resolution logit map (two blobs) for the memory-encoder stage fixture."""
    y, x = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    r1 = torch.sqrt((x - 0.35 * size) ** 2 + (y - 0.40 * size) ** 2) / size
    r2 = torch.sqrt((x - 0.70 * size) ** 2 + ((y - 0.65 * size) * 1.6) ** 2) / size
    logits = torch.maximum(30.0 * (0.20 - r1), 25.0 * (0.15 - r2)) + 2.0 * torch.sin(x / 9.0) * torch.cos(y / 13.0)
    return logits[None, None].float()


# --------------------------------------------------------------------------------------------------
# Recording helpers
# --------------------------------------------------------------------------------------------------


class Recorder:
    """Collects the tensors of expected.safetensors (float32 unless given as int64)."""

    def __init__(self):
        self.tensors: dict[str, torch.Tensor] = {}

    def __setitem__(self, key: str, value) -> None:
        assert key not in self.tensors, f"recorded twice: {key}"
        t = torch.as_tensor(value).detach()
        if t.dtype != torch.int64:
            t = t.to(torch.float32)
        self.tensors[key] = t.contiguous().clone()

    def save(self, path: Path, metadata: dict) -> None:
        save_file(self.tensors, path, metadata=metadata)


class DecisionProbe:
    """Watches the discrete decisions of the SAM mask decoder and how close they were to flipping.

    A port computes the same function only up to float32 rounding, so every branch the reference takes
    (object present or not, which of 3 masks is best, stability fallback or not) must be taken with a
    margin. The probe logs each decoder call, labelled with `self.label`, and `check()` asserts the margins.
    """

    def __init__(self, model: SAM2Base):
        self.decoder = model.sam_mask_decoder
        self.label = ""
        self.calls: list[dict] = []
        self._hook = self.decoder.register_forward_hook(self._after_forward, with_kwargs=True)
        original = self.decoder._dynamic_multimask_via_stability

        def dynamic_multimask(all_mask_logits, all_iou_scores):
            self._stability(all_mask_logits, all_iou_scores)
            return original(all_mask_logits, all_iou_scores)

        # Shadow the bound method on the instance; `MaskDecoder.forward` calls it through `self`.
        self.decoder._dynamic_multimask_via_stability = dynamic_multimask
        self._pending_stability = None

    def _stability(self, all_mask_logits, all_iou_scores):
        dec = self.decoder
        logits = all_mask_logits[:, 0].flatten(1)
        d, tol = dec.dynamic_multimask_stability_delta, LOGIT_TOLERANCE
        score = dec._get_stability_scores(all_mask_logits[:, 0:1])[0, 0].item()
        stable = score >= dec.dynamic_multimask_stability_thresh
        # Worst case: every logit within `tol` of a threshold falls on the other side.
        lo_i, hi_i = (logits > d + tol).sum().item(), (logits > d - tol).sum().item()
        lo_u, hi_u = (logits > -d + tol).sum().item(), (logits > -d - tol).sum().item()
        extremes = [lo_i / hi_u if hi_u else 1.0, hi_i / lo_u if lo_u else 1.0]
        robust = all((s >= dec.dynamic_multimask_stability_thresh) == stable for s in extremes)
        self._pending_stability = {
            "stability": score,
            "fallback": not stable,
            "robust": robust,
            "iou_gap": iou_gap(all_iou_scores[0, 1:]) if not stable else None,
        }

    def _after_forward(self, module, args, kwargs, output):
        _, iou_pred, _, object_score_logits = output
        call = {"label": self.label, "object_score": object_score_logits.item(), "multimask": kwargs["multimask_output"]}
        if kwargs["multimask_output"]:
            call["iou_gap"] = iou_gap(iou_pred[0])
        elif self._pending_stability is not None:
            call.update(self._pending_stability)
        self._pending_stability = None
        self.calls.append(call)

    def check(self, check_object_score: bool) -> None:
        for c in self.calls:
            if c.get("iou_gap") is not None:
                assert c["iou_gap"] >= MIN_IOU_GAP, f"{c['label']}: best masks too close: {c}"
            if "robust" in c:
                assert c["robust"], f"{c['label']}: stability too close to its threshold: {c}"
            if check_object_score:
                assert abs(c["object_score"]) >= MIN_OBJ_SCORE_MARGIN, f"{c['label']}: object score near 0: {c}"

    def remove(self):
        self._hook.remove()
        del self.decoder._dynamic_multimask_via_stability


def iou_gap(ious: torch.Tensor) -> float:
    top = torch.topk(ious.flatten(), 2).values
    return (top[0] - top[1]).item()


def read_rgb(path: Path) -> np.ndarray:
    return np.array(Image.open(path).convert("RGB"))


def to_input(image: np.ndarray) -> torch.Tensor:
    """An S x S frame as the model takes it: ToTensor then ImageNet normalisation ([1, 3, S, S])."""
    t = ToTensor()(image)
    return Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])(t)[None]


# --------------------------------------------------------------------------------------------------
# Image path: SAM2ImagePredictor
# --------------------------------------------------------------------------------------------------


def record_image_path(model: SAM2Base, image: np.ndarray, prompts: list, rec: Recorder, probe: DecisionProbe, full: bool) -> None:
    s = model.image_size
    predictor = SAM2ImagePredictor(model)
    predictor._bb_feat_sizes = [(s // 4, s // 4), (s // 8, s // 8), (s // 16, s // 16)]  # hard-coded for 1024
    predictor.set_image(image)

    # The stages of the image encoder, on the same preprocessed image.
    x = predictor._transforms(image)[None]
    rec["preprocess/image"] = x
    trunk = model.image_encoder.trunk(x)
    for i, f in enumerate(trunk):
        rec[f"trunk/{i}"] = f
    features, pos = model.image_encoder.neck(trunk)
    scalp = model.image_encoder.scalp
    if scalp > 0:
        features, pos = features[:-scalp], pos[:-scalp]
    for i, (f, p) in enumerate(zip(features, pos)):
        rec[f"neck/features/{i}"] = f
        # The sine tables are fixed functions of the size: the smallest level checks them
        # (the others only in --full, to keep the fixtures small).
        if full or i == len(pos) - 1:
            rec[f"neck/pos/{i}"] = p
    for i, f in enumerate(model.forward_image(x)["backbone_fpn"]):
        rec[f"backbone/fpn/{i}"] = f

    low_res_best = {}
    for p in prompts:
        oid = p["object"]
        points = np.array(p["points"], np.float32) if p["points"] else None
        labels = np.array(p["labels"], np.int32) if p["points"] else None
        box = np.array(p["box"], np.float32) if "box" in p else None
        multimask = len(p["points"]) == 1 and box is None
        probe.label = f"image obj{oid}"
        masks, iou, low_res = predictor.predict(points, labels, box, multimask_output=multimask, return_logits=True)
        best = int(np.argmax(iou)) if multimask else 0
        rec[f"image/obj{oid}/masks"] = torch.from_numpy(masks)
        rec[f"image/obj{oid}/iou"] = torch.from_numpy(iou)
        rec[f"image/obj{oid}/low_res"] = torch.from_numpy(low_res)
        if full:  # = masks[best], what `sam2refiner image` writes
            rec[f"image/obj{oid}"] = torch.from_numpy(masks[best])
        low_res_best[oid] = low_res[best]

    # A mask prompt: the points of object 2 with object 1's best low-res logits.
    p2 = next(p for p in prompts if p["object"] == 2)
    mask_input = low_res_best[1][None]  # [1, 4E, 4E]
    points, labels = np.array(p2["points"], np.float32), np.array(p2["labels"], np.int32)
    probe.label = "image mask_prompt"
    masks, iou, low_res = predictor.predict(points, labels, None, mask_input, multimask_output=False, return_logits=True)
    rec["mask_prompt/input"] = torch.from_numpy(mask_input)[None]
    rec["mask_prompt/points"] = torch.from_numpy(points)[None]
    rec["mask_prompt/labels"] = torch.from_numpy(labels)[None]
    rec["mask_prompt/masks"] = torch.from_numpy(masks)
    rec["mask_prompt/iou"] = torch.from_numpy(iou)
    rec["mask_prompt/low_res"] = torch.from_numpy(low_res)


def record_memory_encoder(model: SAM2Base, rec: Recorder) -> None:
    """memenc/*: the memory encoder alone, on the image's vision feature and a synthetic mask."""
    pix_feat = rec.tensors["backbone/fpn/2"]  # [1, C, E, E], without no_mem_embed
    # The scaled sigmoid of SAM2Base._encode_new_memory (sigmoid, * 20, - 10).
    mask = torch.sigmoid(synthetic_mask_logits(model.image_size))
    mask = mask * model.sigmoid_scale_for_mem_enc + model.sigmoid_bias_for_mem_enc
    out = model.memory_encoder(pix_feat, mask, skip_mask_sigmoid=True)
    rec["memenc/pix_feat"] = pix_feat
    rec["memenc/mask"] = mask
    rec["memenc/features"] = out["vision_features"]
    rec["memenc/pos"] = out["vision_pos_enc"][-1]


# --------------------------------------------------------------------------------------------------
# Tracking: SAM2Base.track_step on the clip
# --------------------------------------------------------------------------------------------------


@dataclass
class StepSpec:
    """One call of track_step."""

    object: int
    frame: int
    is_init_cond_frame: bool
    stored_as: str  # "cond" | "non_cond" | "discarded" (output not added to the memory bank)
    points: list | None = None  # image_size pixels, box corners first
    labels: list | None = None
    mask: np.ndarray | None = None  # binary [S, S]
    prev_logits_from: int | None = None  # feed the pred_masks of this (earlier) step as prev_sam_mask_logits


def make_schedule(clip: Clip) -> list[StepSpec]:
    """Object 1 by clicks with a correction on frame 6, object 2 by a box, object 3 by a mask."""

    def pt(x, y):
        return [float(round(x)), float(round(y))]

    steps = []
    # Object 1: a click on frame 0, tracked to frame 9; on frame 6 the plain tracking result is
    # discarded and corrected with a positive and a negative click (it becomes a conditioning frame,
    # as with add_all_frames_to_correct_as_cond=True).
    cx, cy, r = clip.disk[0]
    steps.append(StepSpec(1, 0, True, "cond", [pt(cx, cy)], [1]))
    for t in range(1, CLIP_LEN):
        if t == 6:
            steps.append(StepSpec(1, 6, False, "discarded"))
            cx, cy, r = clip.disk[6]
            correction = [pt(cx + 0.3 * r, cy - 0.2 * r), pt(cx - 1.6 * r, cy + 1.2 * r)]
            steps.append(StepSpec(1, 6, False, "cond", correction, [1, 0], prev_logits_from=len(steps) - 1))
        else:
            steps.append(StepSpec(1, t, False, "non_cond"))
    # Object 2: a box on frame 3 (corner labels 2 and 3), tracked to frame 9.
    steps.append(StepSpec(2, 3, True, "cond", [bbox(clip.rect_masks[3])[:2], bbox(clip.rect_masks[3])[2:]], [2, 3]))
    steps.extend(StepSpec(2, t, False, "non_cond") for t in range(4, CLIP_LEN))
    # Object 3: a mask on frame 2 (the mask itself is the output; the decoder only makes the object
    # pointer), tracked to frame 9.
    steps.append(StepSpec(3, 2, True, "cond", mask=clip.ellipse_masks[2]))
    steps.extend(StepSpec(3, t, False, "non_cond") for t in range(3, CLIP_LEN))
    return steps


def select_memory(model: SAM2Base, frame_idx: int, bank: dict, step_of: dict, num_frames: int):
    """Which stored outputs `_prepare_memory_conditioned_features` reads, in its concatenation order.

    A transcription of its selection logic for forward tracking in eval mode. Returns
    ([(step, t_pos)], [(step, distance)]) with the step ids of the stored outputs; `run_tracking`
    checks the result against the tensors the memory attention actually received.
    """
    cond, non_cond = bank["cond_frame_outputs"], bank["non_cond_frame_outputs"]
    selected, unselected = select_closest_cond_frames(frame_idx, cond, model.max_cond_frames_in_attn)

    # Spatial memories: selected conditioning frames (t_pos 0), then the last num_maskmem - 1 frames.
    memories = [(step_of["cond", t], 0) for t in selected]
    stride = model.memory_temporal_stride_for_eval
    for t_pos in range(1, model.num_maskmem):
        t_rel = model.num_maskmem - t_pos
        prev = frame_idx - 1 if t_rel == 1 else ((frame_idx - 2) // stride) * stride - (t_rel - 2) * stride
        if prev in non_cond:
            memories.append((step_of["non_cond", prev], t_pos))
        elif prev in unselected:  # an unselected conditioning frame counts as a recent one
            memories.append((step_of["cond", prev], t_pos))

    # Object pointers: selected conditioning frames (only past ones in eval), then recent frames.
    pointers = []
    max_ptrs = min(num_frames, model.max_obj_ptrs_in_encoder)
    past_cond = [t for t in selected if t <= frame_idx] if model.only_obj_ptrs_in_the_past_for_eval else list(selected)
    for t in past_cond:
        distance = frame_idx - t if model.use_signed_tpos_enc_to_obj_ptrs else abs(frame_idx - t)
        pointers.append((step_of["cond", t], distance))
    for t_diff in range(1, max_ptrs):
        t = frame_idx - t_diff
        if t < 0 or t >= num_frames:
            break
        if t in non_cond:
            pointers.append((step_of["non_cond", t], t_diff))
        elif t in unselected:
            pointers.append((step_of["cond", t], t_diff))
    return memories, pointers


def rebuild_memory(model: SAM2Base, outputs: dict, memories, pointers, num_frames: int):
    """Concatenate recorded step outputs into the memory attention's (memory, memory_pos, num_obj_ptr_tokens).

    This is what a consumer of track.json does; it must reproduce the captured inputs exactly.
    """
    C, M, n = model.hidden_dim, model.mem_dim, model.num_maskmem
    mem, pos = [], []
    for step, t_pos in memories:
        mem.append(outputs[step]["maskmem_features"].flatten(2).permute(2, 0, 1))
        pos.append(outputs[step]["maskmem_pos_enc"][-1].flatten(2).permute(2, 0, 1) + model.maskmem_tpos_enc[n - t_pos - 1])
    num_ptr_tokens = 0
    if pointers:
        ptrs = torch.stack([outputs[step]["obj_ptr"] for step, _ in pointers])  # [P, 1, C]
        if model.add_tpos_enc_to_obj_ptrs:
            t_diff_max = min(num_frames, model.max_obj_ptrs_in_encoder) - 1
            dim = C if model.proj_tpos_enc_in_obj_ptrs else M
            ppos = get_1d_sine_pe(torch.tensor([d for _, d in pointers]) / t_diff_max, dim=dim)
            ppos = model.obj_ptr_tpos_proj(ppos).unsqueeze(1).expand(-1, 1, M)
        else:
            ppos = ptrs.new_zeros(len(pointers), 1, M)
        if M < C:  # each C-dim pointer becomes C / M tokens of dimension M
            ptrs = ptrs.reshape(-1, 1, C // M, M).permute(0, 2, 1, 3).flatten(0, 1)
            ppos = ppos.repeat_interleave(C // M, dim=0)
        mem.append(ptrs)
        pos.append(ppos)
        num_ptr_tokens = ptrs.shape[0]
    return torch.cat(mem), torch.cat(pos), num_ptr_tokens


@dataclass
class TrackResult:
    steps: list = field(default_factory=list)  # track.json entries
    outputs: dict = field(default_factory=dict)  # step -> track_step output dict
    inputs: dict = field(default_factory=dict)  # step -> {"mask_input", "prev_logits"} tensors
    captured: dict = field(default_factory=dict)  # step -> memory attention kwargs and output
    decoder_scores: dict = field(default_factory=dict)  # step -> object score of its (last) SAM decoder call


def run_tracking(model: SAM2Base, frame_inputs: list, schedule: list[StepSpec], probe: DecisionProbe) -> TrackResult:
    """Run the schedule through track_step, one object at a time, with one memory bank per object."""
    feats = []  # per frame: (vision_feats, vision_pos_embeds, feat_sizes)
    for x in frame_inputs:
        _, vision_feats, vision_pos, feat_sizes = model._prepare_backbone_features(model.forward_image(x))
        feats.append((vision_feats, vision_pos, feat_sizes))

    captured = {}

    def capture(module, args, kwargs, output):
        captured.update(kwargs, output=output)

    hook = model.memory_attention.register_forward_hook(capture, with_kwargs=True)
    res = TrackResult()
    probe.calls.clear()
    banks, step_of = {}, {}
    try:
        for s, spec in enumerate(schedule):
            bank = banks.setdefault(spec.object, {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}})
            obj_step_of = step_of.setdefault(spec.object, {})
            point_inputs = None
            if spec.points is not None:
                point_inputs = {
                    "point_coords": torch.tensor([spec.points], dtype=torch.float32),
                    "point_labels": torch.tensor([spec.labels], dtype=torch.int32),
                }
            mask_inputs = None if spec.mask is None else torch.from_numpy(spec.mask.astype(np.float32))[None, None]
            prev_logits = None
            if spec.prev_logits_from is not None:
                # As SAM2VideoPredictor.add_new_points_or_box does with the earlier output.
                prev_logits = torch.clamp(res.outputs[spec.prev_logits_from]["pred_masks"], -32.0, 32.0)

            mask_is_output = mask_inputs is not None and model.use_mask_input_as_output_without_sam
            uses_memory = not spec.is_init_cond_frame and not mask_is_output
            memories, pointers = select_memory(model, spec.frame, bank, obj_step_of, NUM_FRAMES) if uses_memory else ([], [])

            vision_feats, vision_pos, feat_sizes = feats[spec.frame]
            captured.clear()
            probe.label = f"track step {s} (object {spec.object}, frame {spec.frame})"
            out = model.track_step(
                frame_idx=spec.frame,
                is_init_cond_frame=spec.is_init_cond_frame,
                current_vision_feats=vision_feats,
                current_vision_pos_embeds=vision_pos,
                feat_sizes=feat_sizes,
                point_inputs=point_inputs,
                mask_inputs=mask_inputs,
                output_dict=bank,
                num_frames=NUM_FRAMES,
                run_mem_encoder=True,
                prev_sam_mask_logits=prev_logits,
            )

            # The memory attention ran exactly when expected, on exactly the selected memories.
            assert bool(captured) == uses_memory, f"step {s}: memory attention ran={bool(captured)}"
            num_ptr_tokens = 0
            if uses_memory:
                memory, memory_pos, num_ptr_tokens = rebuild_memory(model, res.outputs, memories, pointers, NUM_FRAMES)
                assert torch.equal(memory, captured["memory"]), f"step {s}: memory differs from track.json's selection"
                assert torch.equal(memory_pos, captured["memory_pos"]), f"step {s}: memory_pos differs"
                assert num_ptr_tokens == captured["num_obj_ptr_tokens"]
                keys = ("curr", "curr_pos", "memory", "memory_pos", "num_obj_ptr_tokens", "output")
                res.captured[s] = {k: captured[k] for k in keys}

            if spec.stored_as != "discarded":
                bank[f"{spec.stored_as}_frame_outputs"][spec.frame] = out
                obj_step_of[spec.stored_as, spec.frame] = s
            res.outputs[s] = out
            res.decoder_scores[s] = probe.calls[-1]["object_score"]
            res.inputs[s] = {"mask_input": mask_inputs, "prev_logits": prev_logits}
            res.steps.append(
                {
                    "step": s,
                    "object": spec.object,
                    "frame": spec.frame,
                    "is_init_cond_frame": spec.is_init_cond_frame,
                    "num_frames": NUM_FRAMES,
                    "t_diff_max": min(NUM_FRAMES, model.max_obj_ptrs_in_encoder) - 1,
                    "run_mem_encoder": True,
                    "stored_as": spec.stored_as,
                    "points": spec.points,
                    "labels": spec.labels,
                    "mask_input": mask_inputs is not None,
                    "prev_logits": prev_logits is not None,
                    "memories": [{"step": st, "t_pos": tp} for st, tp in memories],
                    "pointers": [{"step": st, "distance": d} for st, d in pointers],
                    "num_obj_ptr_tokens": num_ptr_tokens,
                }
            )
    finally:
        hook.remove()
    return res


def tracked_scores(res: TrackResult) -> list[float]:
    """Object scores of the plain tracking steps (no prompt, memory-conditioned)."""
    return [res.decoder_scores[st["step"]] for st in res.steps if st["points"] is None and not st["mask_input"]]


def prompted_scores(res: TrackResult) -> list[float]:
    """Decoder object scores of the prompted steps (clicks, box, or mask)."""
    return [res.decoder_scores[st["step"]] for st in res.steps if st["points"] is not None or st["mask_input"]]


def calibrate_object_score(model: SAM2Base, frame_inputs, schedule, probe: DecisionProbe) -> float:
    """Shift the object-score head's last bias so that the score changes sign along the clip.

    Wanted: about half of the plain tracking steps (at least a quarter either way) with a negative
    score, every prompted step with a positive one (an object starts where it is prompted), and every
    score at least 2 * MIN_OBJ_SCORE_MARGIN away from 0. With random weights the score has an arbitrary
    offset; the bias cuts the sorted tracked scores in the widest gap that satisfies the above. A
    different bias changes which frames count as "object absent", hence later memories and scores, so
    the cut is refined by re-running until it holds.
    """
    bias = obj_score_head_out(model).bias
    margin = 2 * MIN_OBJ_SCORE_MARGIN
    for _ in range(8):
        res = run_tracking(model, frame_inputs, schedule, probe)
        tracked, prompted = sorted(tracked_scores(res)), prompted_scores(res)
        n, quarter = len(tracked), len(tracked) // 4
        negative = sum(v < 0 for v in tracked)
        if quarter <= negative <= n - quarter and min(prompted) >= margin and min(map(abs, tracked)) >= margin:
            return bias.item()
        # Cut k puts tracked[:k] below 0; prompted scores must stay above it.
        highest_cut = min(prompted) - 2 * margin
        cuts = [k for k in range(max(quarter, 1), n - quarter + 1) if (tracked[k - 1] + tracked[k]) / 2 < highest_cut]
        if not cuts:
            break
        k = max(cuts, key=lambda k: tracked[k] - tracked[k - 1])
        bias -= (tracked[k - 1] + tracked[k]) / 2
    raise RuntimeError("cannot give the object score both signs with margins; try another case seed")


def check_memory_sensitivity(model: SAM2Base, cap: dict, step: dict, min_effect: float = 0.05) -> dict:
    """Every part of the memory must visibly change the memory attention output (no silenced path).

    On the recorded call, remove each spatial memory, remove the pointers, move the temporal encoding
    of the first memory by one slot, and (with temporal pointer encodings) reverse the pointers' encodings;
    each must change some output value by at least `min_effect`.
    """
    def run(memory, memory_pos, n_ptr):
        return model.memory_attention(
            curr=cap["curr"], curr_pos=cap["curr_pos"], memory=memory, memory_pos=memory_pos, num_obj_ptr_tokens=n_ptr
        )

    memory, memory_pos, n_ptr = cap["memory"], cap["memory_pos"], cap["num_obj_ptr_tokens"]
    output = run(memory, memory_pos, n_ptr)
    assert torch.equal(output, cap["output"])
    hw = cap["curr"][0].shape[0]
    effects = {}
    for i, m in enumerate(step["memories"]):
        keep = torch.ones(memory.shape[0], dtype=torch.bool)
        keep[i * hw : (i + 1) * hw] = False
        effects[f"without memory of step {m['step']}"] = run(memory[keep], memory_pos[keep], n_ptr)
    if n_ptr:
        effects["without pointers"] = run(memory[:-n_ptr], memory_pos[:-n_ptr], 0)
        if model.add_tpos_enc_to_obj_ptrs:
            flipped = memory_pos.clone()
            flipped[-n_ptr:] = memory_pos[-n_ptr:].flip(0)
            effects["pointer encodings reversed"] = run(memory, flipped, n_ptr)
    n, t_pos = model.num_maskmem, step["memories"][0]["t_pos"]
    shifted = memory_pos.clone()
    shifted[:hw] += model.maskmem_tpos_enc[n - t_pos - 2] - model.maskmem_tpos_enc[n - t_pos - 1]
    effects["first memory's t_pos off by one"] = run(memory, shifted, n_ptr)
    effects = {k: (v - output).abs().max().item() for k, v in effects.items()}
    weak = {k: v for k, v in effects.items() if v < min_effect}
    assert not weak, f"memory paths with (almost) no effect on the output: {weak}"
    return effects


# --------------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------------


def make_case(case: Case, full: bool) -> dict:
    out_dir = FIXTURES / case.name
    (out_dir / "frames").mkdir(parents=True, exist_ok=True)
    torch.manual_seed(case.seed)  # nothing below should draw from the global generator; belt and braces
    model, model_cfg = build_model(case)
    num_tensors = randomize_weights(model, torch.Generator().manual_seed(case.seed))
    apply_gains(model)
    (out_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create({"model": model_cfg})))

    # Inputs, written first and read back: the fixtures are defined by the files.
    rng = np.random.default_rng(case.seed)
    image, prompts = make_image(*case.image_wh, rng)
    Image.fromarray(image).save(out_dir / "image.png")
    (out_dir / "prompts.json").write_text(json_dump({"prompts": prompts}) + "\n")
    clip = make_clip(case.image_size, rng)
    for t, frame in enumerate(clip.frames):
        Image.fromarray(frame).save(out_dir / "frames" / f"{t:04}.png")
    image = read_rgb(out_dir / "image.png")
    frame_inputs = [to_input(read_rgb(out_dir / "frames" / f"{t:04}.png")) for t in range(CLIP_LEN)]
    schedule = make_schedule(clip)

    probe = DecisionProbe(model)
    bias = calibrate_object_score(model, frame_inputs, schedule, probe)
    save_weights(model, out_dir / case.weights_file)

    rec = Recorder()
    probe.calls.clear()
    record_image_path(model, image, prompts, rec, probe, full)
    probe.check(check_object_score=False)  # the image predictor ignores the object score
    image_calls = list(probe.calls)
    record_memory_encoder(model, rec)

    res = run_tracking(model, frame_inputs, schedule, probe)
    probe.check(check_object_score=True)
    track_calls = list(probe.calls)
    probe.remove()

    # The clip's frames are S x S: the predictor's transform (with its resize) must be the identity resize.
    if full:
        rec["track/frame0/image"] = frame_inputs[0]
    assert torch.equal(SAM2ImagePredictor(model)._transforms(read_rgb(out_dir / "frames" / "0000.png"))[None], frame_inputs[0])

    for s, out in res.outputs.items():
        key = f"track/step{s}"
        for name in ("mask_input", "prev_logits"):
            if res.inputs[s][name] is not None:
                rec[f"{key}/{name}"] = res.inputs[s][name]
        rec[f"{key}/pred_masks"] = out["pred_masks"]
        rec[f"{key}/obj_ptr"] = out["obj_ptr"]
        rec[f"{key}/object_score_logits"] = out["object_score_logits"]
        rec[f"{key}/maskmem_features"] = out["maskmem_features"]
        # The memory position encoding is the same at every step: step 0 holds it.
        if full or s == 0:
            rec[f"{key}/maskmem_pos_enc"] = out["maskmem_pos_enc"][-1]
        if full:  # redundant with the above, see README
            rec[f"{key}/pred_masks_high_res"] = out["pred_masks_high_res"]
            if s in res.captured:
                rec[f"{key}/memory"] = res.captured[s]["memory"]
                rec[f"{key}/memory_pos"] = res.captured[s]["memory_pos"]

    # memattn/*: the richest memory attention call, the last tracked step of object 1 (frame 9: two
    # conditioning frames, five recent frames, nine pointers).
    memattn_step = max(s for s, st in enumerate(res.steps) if st["object"] == 1 and s in res.captured)
    cap = res.captured[memattn_step]
    sensitivity = check_memory_sensitivity(model, cap, res.steps[memattn_step])
    rec["memattn/curr"] = cap["curr"][0]
    rec["memattn/curr_pos"] = cap["curr_pos"][0]
    rec["memattn/memory"] = cap["memory"]
    rec["memattn/memory_pos"] = cap["memory_pos"]
    rec["memattn/num_obj_ptr_tokens"] = torch.tensor(cap["num_obj_ptr_tokens"], dtype=torch.int64)
    rec["memattn/output"] = cap["output"]

    check_written_model(out_dir, case, rec)
    # One metadata entry only: safetensors writes the metadata map in hash order.
    generator = f"make_fixtures.py {case.name}, sam2 1.1.0, torch {torch.__version__}"
    rec.save(out_dir / "expected.safetensors", metadata={"generator": generator})
    track = {"clip_frames": CLIP_LEN, "frames": "frames/{t:04}.png", "memattn_step": memattn_step, "steps": res.steps}
    (out_dir / "track.json").write_text(json_dump(track) + "\n")

    scores = tracked_scores(res)
    return {
        "case": case.name,
        "files": {p.relative_to(out_dir).as_posix(): p.stat().st_size for p in sorted(out_dir.rglob("*")) if p.is_file()},
        "num_tensors": num_tensors,
        "obj_score_bias": bias,
        "tracked_steps": len(scores),
        "tracked_negative": sum(v < 0 for v in scores),
        "image_calls": image_calls,
        "track_calls": track_calls,
        "memattn_step": memattn_step,
        "sensitivity": sensitivity,
    }


def json_dump(obj, indent: int = 0, width: int = 100) -> str:
    """JSON indented by 2, except that values that fit in `width` columns stay on one line."""
    flat = json.dumps(obj, separators=(", ", ": "))
    if len(flat) + indent <= width or not isinstance(obj, (dict, list)) or not obj:
        return flat
    pad = " " * (indent + 2)
    if isinstance(obj, dict):
        items = [f"{pad}{json.dumps(k)}: {json_dump(v, indent + 2, width)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + " " * indent + "}"
    items = [pad + json_dump(v, indent + 2, width) for v in obj]
    return "[\n" + ",\n".join(items) + "\n" + " " * indent + "]"


def print_summary(summary: dict) -> None:
    total = sum(summary["files"].values())
    print(f"== {summary['case']}: {total / 1e6:.2f} MB")
    for name, size in summary["files"].items():
        if not name.startswith("frames/"):
            print(f"   {name:24} {size / 1e3:9.1f} kB")
    frames = sum(v for k, v in summary["files"].items() if k.startswith("frames/"))
    print(f"   {'frames/*.png':24} {frames / 1e3:9.1f} kB")
    print(f"   weights: all {summary['num_tensors']} tensors of the state dict drawn at random, none constant")
    print(
        f"   object-score bias {summary['obj_score_bias']:+.4f}: "
        f"{summary['tracked_negative']} of {summary['tracked_steps']} plain tracking steps have score < 0"
    )
    for c in summary["image_calls"] + summary["track_calls"]:
        if "stability" in c:
            verdict = "FALLBACK to best multimask" if c["fallback"] else "single mask kept"
            print(f"   {c['label']}: stability {c['stability']:.4f} -> {verdict}")
    calls = summary["image_calls"] + summary["track_calls"]
    mins = {
        "object score |s|": min(abs(c["object_score"]) for c in summary["track_calls"]),
        "IoU argmax gap": min(c["iou_gap"] for c in calls if c.get("iou_gap") is not None),
    }
    effects = ", ".join(f"{k} {v:.2f}" for k, v in summary["sensitivity"].items())
    print(f"   memory attention (step {summary['memattn_step']}), largest output change {effects}")
    print("   smallest margins: " + ", ".join(f"{k} {v:.4f}" for k, v in mins.items()))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--case", choices=sorted(CASES), action="append", help="case(s) to generate (default: all)")
    parser.add_argument("--full", action="store_true", help="also record the redundant per-step tensors (large)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # determinism (and a light footprint)
    torch.use_deterministic_algorithms(True)
    summaries = []
    with torch.no_grad():
        for name in args.case or CASES:
            summaries.append(make_case(CASES[name], args.full))
    for s in summaries:
        print_summary(s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
