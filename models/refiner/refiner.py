"""The SAM2Refiner modules in PyTorch: localization augment, prompt retargeting, mask refinement.

SAM2Refiner (arXiv 2502.09660) keeps SAM 2 frozen and adds three trained modules for fine-grained masks.
No official code exists and the paper's method section was not available to us (see
`../shared/reference/sam2refiner-and-anchors.md`), so this is our design from its description. This file is
the reference: the candle modules in `src/model/refiner/` compute the same function from the same weights
file, and `make_fixture.py` records its outputs for the parity tests. Every module enters SAM 2 as a residual
that starts at zero, so untrained weights give exactly SAM 2.

Notation: S is the model's `image_size`, G = S / 16 the image embedding's side. SAM 2's image features are
the image embedding (stride 16, 256 channels: what the decoder receives, i.e. with the no-memory embedding or
the memory conditioning already applied) and the two high-resolution levels after the decoder's `conv_s0` and
`conv_s1` (stride 4, 32 channels; stride 8, 64 channels).

- **Localization augment (LA).** The frozen image encoder also runs on crops of the frame at twice the
  detail: in `quadrants` mode the four quadrants, in `roi` mode one half-size window placed on the object.
  Each crop is cut from the original frame (not from the S×S input, which has lost that detail) and
  resized to S×S, so its features form a grid twice as fine as the global one over the crop's region. At
  each level the global cells of that region attend to the local cells around their own 2×2 block: a
  4×4 window (the block and a ring of one cell, masked outside the local grid), with a learned bias per
  window position, single head, `ATTENTION_DIM` wide. The result is added through a per-channel gate that
  starts at zero.
- **Prompt retargeting (PR).** Each prompt token is renewed from the LA-enhanced embedding at its own
  position: a click from a bilinear sample at the click; a box corner from the sample at the corner and the
  mean over a 4×4 grid of samples inside the box. A small MLP of [token, feature] gives the update, through
  a zero-started gate; padding tokens (label -1) are left alone. A mask prompt adds, through its own zero
  gate, a projection of the embedding's average weighted by the prompt's sigmoid to the dense embedding.
- **Mask refinement (MR).** A two-step cascade from the decoder's stride-4 output to stride 2 and stride 1
  (S×S). Stride 2 fuses the mask (as a probability) with the decoder's upscaled embedding (the 32-channel stride-4 map
  the mask tokens read), the LA local features of the stride-4 level (which are at stride 2 of the
  frame, zero where no crop covers, with a coverage channel) and a shallow convolution of the image;
  stride 1 fuses that with a shallow convolution of the image at full size. Each step adds a logit
  correction through a 1×1 convolution that starts at zero, to SAM 2's own S×S logits (the bilinear
  upsampling of its stride-4 logits), so untrained the output is SAM 2's. Beside the cascade, a colour
  guided filter (He, Sun and Tang 2013) of SAM 2's mask: in each window of radius S/8 the mask as an
  affine function of the image's colour (least squares, ridge `GUIDED_EPS`), the coefficients averaged
  over the windows covering each pixel and computed at S, then applied with the frame itself at the
  frame's resolution ("fast guided filter", He and Sun 2015). It moves the mask onto the image's colour
  edges and brings back strands and holes the stride-4 mask never had. It enters through a learned gate
  that starts at zero: output = SAM 2 + gate × (filtered − SAM 2) + the cascade's corrections.
  Clicks are pinned in the filter's input: within S/32 of each click the mask is the click's label
  (`pin_clicks`). The filter fits the mask to the colours around it, and a stride-4 mask that missed a
  click would otherwise teach the filter the wrong colour there: pinned, the user's click is what it
  learns from. This is not trained; a 1 to 10 click evaluation chose the radius (the model card).

The refiner file is a safetensors file of these modules' parameters, with metadata naming the base it was
trained on (its config and a hash of its weights, `base_weights_hash`): the engine refuses it on another base.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Optional
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

ATTENTION_DIM = 32  # LA's query/key/value width at every level
WINDOW = 4  # LA: each global cell reads a WINDOW × WINDOW patch of local cells (its 2×2 block and a ring)
LEVEL_CHANNELS = (32, 64, 256)  # SAM 2's decoder-side features: stride 4 (conv_s0), 8 (conv_s1), 16
CELLS_PER_EMBEDDING_CELL = (4, 2, 1)  # each level's cells per side of one stride-16 cell
UPSCALED_CHANNELS = 32  # the mask decoder's upscaled embedding (transformer_dim / 8)
MR_CHANNELS = (16, 8)  # MR's widths at stride 2 and stride 1
BOX_GRID = 4  # PR: samples per side of the grid averaged inside a box
GUIDED_RADIUS_DIVISOR = 8  # MR's guided filter: window radius S / 8 input pixels (32 for nano)
GUIDED_EPS = 1e-4  # its ridge, for a guide in [0, 1]
GUIDED_CLAMP = 1e-4  # its output is a probability, clamped to [c, 1 - c] before the logit (±9.2)
CLICK_PIN_DIVISOR = 32  # its input is pinned to each click's label within S / 32 input pixels (8 for nano)
FORMAT = "sam2refiner-refiner/1"


# --------------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------------


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of [B, C, H, W], as SAM 2's (eps 1e-6)."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


def window_validity(h: int, w: int) -> torch.Tensor:
    """[WINDOW², h, w]: whether window position (dy, dx) of global cell (i, j) falls on the 2h × 2w local
    grid. The window of (i, j) covers local rows 2i - 1 .. 2i + 2 and columns 2j - 1 .. 2j + 2."""
    ring = (WINDOW - 2) // 2
    d = torch.arange(WINDOW)
    rows = 2 * torch.arange(h)[None, :] + d[:, None] - ring  # [WINDOW, h]
    cols = 2 * torch.arange(w)[None, :] + d[:, None] - ring
    row_ok = (rows >= 0) & (rows < 2 * h)
    col_ok = (cols >= 0) & (cols < 2 * w)
    return (row_ok[:, None, :, None] & col_ok[None, :, None, :]).reshape(WINDOW * WINDOW, h, w)


def windows(local: torch.Tensor) -> torch.Tensor:
    """[B, D, 2h, 2w] -> [B, D, WINDOW², h, w]: for each global cell the local cells of its window (zero
    outside the grid), window positions in row-major order."""
    b, d, h2, w2 = local.shape
    ring = (WINDOW - 2) // 2
    padded = F.pad(local, (ring, ring, ring, ring))
    patches = F.unfold(padded, WINDOW, stride=2)  # [B, D * WINDOW², h * w], (D, dy, dx) order
    return patches.view(b, d, WINDOW * WINDOW, h2 // 2, w2 // 2)


def bilinear_sample(feature: torch.Tensor, xy: torch.Tensor, stride: float) -> torch.Tensor:
    """Samples [B, C, H, W] at points xy [B, N, 2] given in input pixels (cell (i, j) centred at
    ((j + 0.5) * stride, (i + 0.5) * stride)), clamped to the border cells. Returns [B, N, C]."""
    b, c, h, w = feature.shape
    x = (xy[..., 0] / stride - 0.5).clamp(0, w - 1)
    y = (xy[..., 1] / stride - 0.5).clamp(0, h - 1)
    x0 = x.floor().clamp(max=w - 2) if w > 1 else x.floor()
    y0 = y.floor().clamp(max=h - 2) if h > 1 else y.floor()
    fx, fy = x - x0, y - y0
    x0, y0 = x0.long(), y0.long()
    x1, y1 = (x0 + 1).clamp(max=w - 1), (y0 + 1).clamp(max=h - 1)
    flat = feature.flatten(2).transpose(1, 2)  # [B, H*W, C]

    def at(yy, xx):
        return torch.gather(flat, 1, (yy * w + xx)[..., None].expand(-1, -1, c))

    fx, fy = fx[..., None], fy[..., None]
    top = at(y0, x0) * (1 - fx) + at(y0, x1) * fx
    bottom = at(y1, x0) * (1 - fx) + at(y1, x1) * fx
    return top * (1 - fy) + bottom * fy


def upsample(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear, align_corners=False: SAM 2's own upsampling of logits."""
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


# --------------------------------------------------------------------------------------------------
# Localization augment
# --------------------------------------------------------------------------------------------------


@dataclass
class LocalFeatures:
    """The encoder's features of the crops, stitched: one [B, C, 2h, 2w] grid per level (stride 4, 8, 16),
    twice as fine as the global grid over the region they cover, `region` = (row, col, height, width) in
    stride-16 cells of the global grid."""

    levels: list[torch.Tensor]
    region: tuple[int, int, int, int]


class LevelAttention(nn.Module):
    """One level's global-to-local window cross-attention, added through a zero-started gate."""

    def __init__(self, channels: int):
        super().__init__()
        self.query_norm = LayerNorm2d(channels)
        self.key_norm = LayerNorm2d(channels)
        self.q_proj = nn.Conv2d(channels, ATTENTION_DIM, 1)
        self.k_proj = nn.Conv2d(channels, ATTENTION_DIM, 1)
        self.v_proj = nn.Conv2d(channels, ATTENTION_DIM, 1)
        self.out_proj = nn.Conv2d(ATTENTION_DIM, channels, 1)
        self.position_bias = nn.Parameter(torch.zeros(WINDOW * WINDOW))
        self.gate = nn.Parameter(torch.zeros(channels))

    def forward(self, global_cells: torch.Tensor, local: torch.Tensor) -> torch.Tensor:
        """global_cells [B, C, h, w], local [B, C, 2h, 2w] -> the gated update [B, C, h, w]."""
        b, _, h, w = global_cells.shape
        q = self.q_proj(self.query_norm(global_cells))  # [B, D, h, w]
        normed = self.key_norm(local)
        k = windows(self.k_proj(normed))  # [B, D, W², h, w]
        v = windows(self.v_proj(normed))
        logits = (q[:, :, None] * k).sum(1) / math.sqrt(ATTENTION_DIM)  # [B, W², h, w]
        logits = logits + self.position_bias[None, :, None, None]
        valid = window_validity(h, w).to(logits.device)
        logits = logits.masked_fill(~valid[None], float("-inf"))
        attention = logits.softmax(1)
        out = (attention[:, None] * v).sum(2)  # [B, D, h, w]
        return self.gate[None, :, None, None] * self.out_proj(out)


class LocalizationAugment(nn.Module):
    def __init__(self):
        super().__init__()
        self.levels = nn.ModuleList(LevelAttention(c) for c in LEVEL_CHANNELS)

    def is_silent(self) -> bool:
        """Every level's gate is zero: the module returns its input (the engine's `is_silent`)."""
        return all(not bool(level.gate.any()) for level in self.levels)

    def forward(self, features: list[torch.Tensor], local: LocalFeatures) -> list[torch.Tensor]:
        """features: [stride-4, stride-8, stride-16 embedding] of the global image; returns them enhanced
        over `local.region` (unchanged elsewhere)."""
        r, c, h, w = local.region
        out = []
        for level, (feature, local_level) in enumerate(zip(features, local.levels)):
            f = CELLS_PER_EMBEDDING_CELL[level]
            rows, cols = slice(r * f, (r + h) * f), slice(c * f, (c + w) * f)
            update = self.levels[level](feature[:, :, rows, cols], local_level)
            padded = F.pad(update, (c * f, feature.shape[3] - (c + w) * f, r * f, feature.shape[2] - (r + h) * f))
            out.append(feature + padded)
        return out


# --------------------------------------------------------------------------------------------------
# Prompt retargeting
# --------------------------------------------------------------------------------------------------


class PromptRetargeting(nn.Module):
    def __init__(self, dim: int = 256):
        super().__init__()
        self.token_norm = nn.LayerNorm(dim)
        self.feature_norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(2 * dim, dim), nn.ReLU(), nn.Linear(dim, dim))
        self.gate = nn.Parameter(torch.zeros(dim))
        self.mask_proj = nn.Linear(dim, dim)
        self.mask_gate = nn.Parameter(torch.zeros(dim))

    def prompt_features(self, embedding: torch.Tensor, coords: torch.Tensor, labels: torch.Tensor, stride: float):
        """[B, N, C]: each token's feature. Clicks: the sample at the click. Box corners (labels 2, 3): the
        mean of the sample at the corner and the box's pooled feature."""
        at_points = bilinear_sample(embedding, coords, stride)
        is_corner = (labels == 2) | (labels == 3)
        if not bool(is_corner.any()):
            return at_points
        # The box of each prompt: its label-2 and label-3 points (at most one box per prompt).
        first = torch.where(labels == 2, 1, 0).argmax(1)
        second = torch.where(labels == 3, 1, 0).argmax(1)
        rows = torch.arange(coords.shape[0], device=coords.device)
        lo, hi = coords[rows, first], coords[rows, second]  # [B, 2]
        t = (torch.arange(BOX_GRID, device=coords.device, dtype=coords.dtype) + 0.5) / BOX_GRID
        xs = lo[:, None, 0] + t[None] * (hi[:, None, 0] - lo[:, None, 0])  # [B, G]
        ys = lo[:, None, 1] + t[None] * (hi[:, None, 1] - lo[:, None, 1])
        grid = torch.stack([xs[:, None, :].expand(-1, BOX_GRID, -1), ys[:, :, None].expand(-1, -1, BOX_GRID)], -1)
        pooled = bilinear_sample(embedding, grid.reshape(-1, BOX_GRID * BOX_GRID, 2), stride).mean(1)  # [B, C]
        return torch.where(is_corner[..., None], 0.5 * (at_points + pooled[:, None]), at_points)

    def forward(self, sparse, dense, coords, labels, embedding, mask_input, stride: float):
        """Renewed (sparse [B, N, C], dense [B, C, G, G]). coords [B, N, 2] in input pixels, labels [B, N];
        `embedding` the LA-enhanced image embedding [B, C, G, G]; `mask_input` the mask prompt's
        low-resolution logits [B, 1, 4G, 4G] or None."""
        if sparse.shape[1] > coords.shape[1]:
            # The prompt encoder appends a padding point (label -1) to clicks without a box.
            extra = sparse.shape[1] - coords.shape[1]
            coords = F.pad(coords, (0, 0, 0, extra))
            labels = F.pad(labels, (0, extra), value=-1)
        if sparse.shape[1] > 0:
            feature = self.prompt_features(embedding, coords, labels, stride)
            update = self.mlp(torch.cat([self.token_norm(sparse), self.feature_norm(feature)], -1))
            real = (labels >= 0)[..., None].to(sparse.dtype)
            sparse = sparse + real * self.gate * update
        if mask_input is not None:
            weight = F.avg_pool2d(mask_input, 4).sigmoid()  # [B, 1, G, G]
            mean = (weight * embedding).flatten(2).sum(-1) / (weight.flatten(2).sum(-1) + 1e-6)  # [B, C]
            dense = dense + (self.mask_gate * self.mask_proj(mean))[..., None, None]
        return sparse, dense


# --------------------------------------------------------------------------------------------------
# Mask refinement
# --------------------------------------------------------------------------------------------------


def conv3(i: int, o: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(i, o, 3, stride, 1)


def box_mean(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Mean of [N, C, H, W] over the (2r+1)² window around each pixel, clipped at the border: four
    lookups in a summed-area table, so the cost does not grow with the radius."""
    h, w = x.shape[-2:]
    table = F.pad(x, (1, 0, 1, 0)).cumsum(-1).cumsum(-2)
    ys, xs = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
    y0, y1 = (ys - radius).clamp(0, h), (ys + radius + 1).clamp(0, h)
    x0, x1 = (xs - radius).clamp(0, w), (xs + radius + 1).clamp(0, w)
    rows0, rows1 = table[..., y0, :], table[..., y1, :]
    total = rows1[..., x1] - rows0[..., x1] - rows1[..., x0] + rows0[..., x0]
    return total / ((y1 - y0)[:, None] * (x1 - x0)[None, :]).to(x.dtype)


def guided_coefficients(guide: torch.Tensor, p: torch.Tensor, radius: int, eps: float):
    """The colour guided filter's averaged coefficients for p [N, 1, H, W] guided by [N, 3, H, W] in
    [0, 1]: (a [N, 3, H, W], b [N, 1, H, W]) with the filtered p = Σ a·guide + b. Computed in float64:
    the window covariances are differences of window means, and in float32 their rounding is of the
    order of the ridge. The 3×3 systems are solved in closed form (cofactors), as the engine does."""
    guide, p = guide.double(), p.double()
    mean_i, mean_p = box_mean(guide, radius), box_mean(p, radius)
    cov = box_mean(guide * p, radius) - mean_i * mean_p  # [N, 3, H, W]

    def var(i: int, j: int) -> torch.Tensor:
        v = box_mean(guide[:, i : i + 1] * guide[:, j : j + 1], radius) - mean_i[:, i : i + 1] * mean_i[:, j : j + 1]
        return v + eps if i == j else v

    (s00, s01, s02), (s11, s12), s22 = (var(0, 0), var(0, 1), var(0, 2)), (var(1, 1), var(1, 2)), var(2, 2)
    c00, c01, c02 = s11 * s22 - s12 * s12, s02 * s12 - s01 * s22, s01 * s12 - s02 * s11
    c11, c12, c22 = s00 * s22 - s02 * s02, s01 * s02 - s00 * s12, s00 * s11 - s01 * s01
    det = s00 * c00 + s01 * c01 + s02 * c02
    r, g, bl = cov[:, 0:1], cov[:, 1:2], cov[:, 2:3]
    a = torch.cat([c00 * r + c01 * g + c02 * bl, c01 * r + c11 * g + c12 * bl, c02 * r + c12 * g + c22 * bl], 1) / det
    b = mean_p - (a * mean_i).sum(1, keepdim=True)
    return box_mean(a, radius).float(), box_mean(b, radius).float()


def guided_logits(a: torch.Tensor, b: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
    """The filtered mask Σ a·guide + b (coefficients upsampled bilinearly to the guide's size when
    smaller) as clamped logits."""
    size = guide.shape[-2:]
    if a.shape[-2:] != size:
        a = F.interpolate(a, size=size, mode="bilinear", align_corners=False)
        b = F.interpolate(b, size=size, mode="bilinear", align_corners=False)
    q = (a * guide).sum(1, keepdim=True) + b
    return torch.logit(q.clamp(GUIDED_CLAMP, 1 - GUIDED_CLAMP))


def is_click(label) -> bool:
    """Whether a prompt point's label is a click (1 positive, 0 negative), not a box corner (2, 3) or
    padding (-1): the points the click rules read (the engine's `Click::from_points`)."""
    return int(label) in (0, 1)


def pin_clicks(p: torch.Tensor, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """p [N, 1, S, S] with each click's label (1 positive, 0 negative; other labels, box corners and
    padding, are not clicks) written where a pixel's centre is within S / CLICK_PIN_DIVISOR of it, later
    clicks over earlier ones. `coords` [M, 2] in input pixels, `labels` [M]. In float32, as the engine."""
    size = p.shape[-1]
    radius = float(size // CLICK_PIN_DIVISOR)
    centres = torch.arange(size, dtype=torch.float32) + 0.5
    out = p.clone()
    for (x, y), label in zip(coords.float().tolist(), labels.tolist()):
        if is_click(label):
            dx = (centres - torch.tensor(x, dtype=torch.float32)) ** 2
            dy = (centres - torch.tensor(y, dtype=torch.float32)) ** 2
            out[..., dy[:, None] + dx[None, :] <= radius * radius] = float(label)
    return out


def clicks_honoured(logits: torch.Tensor, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """For masks [K, S, S] of logits, how many clicks each honours [K]: a positive click's pixel > 0,
    a negative click's <= 0. A click's pixel is its input coordinates floored, inside the input."""
    size = logits.shape[-1]
    honoured = torch.zeros(logits.shape[0], dtype=torch.int64)
    for (x, y), label in zip(coords.float().tolist(), labels.tolist()):
        if is_click(label):
            col, row = (min(max(int(math.floor(v)), 0), size - 1) for v in (x, y))
            honoured += ((logits[:, row, col] > 0) == bool(label)).long()
    return honoured


def unnormalise(image: torch.Tensor) -> torch.Tensor:
    """The model input [B, 3, S, S] back to [0, 1] colour."""
    mean = torch.tensor([0.485, 0.456, 0.406], device=image.device)[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225], device=image.device)[:, None, None]
    return image * std + mean


@dataclass
class RefinedMasks:
    """MR's output for the decoder's K masks per prompt. `logits` [B, K, S, S] is the refined mask at the
    model's input size (what the memory encoder reads); `at_frame` gives it at a frame's resolution, where
    the guided filter applies with the frame itself."""

    logits: torch.Tensor
    base: torch.Tensor  # [B, K, S, S]: (1 - gate) × SAM 2's logits + the cascade's corrections
    gate: torch.Tensor  # [1]
    coefficients: Optional[tuple[torch.Tensor, torch.Tensor]]  # the guided filter's a [B*K, 3, S, S], b [B*K, 1, S, S]

    def at_frame(self, frame: torch.Tensor) -> torch.Tensor:
        """[B, K, H, W] logits for frames [B, 3, H, W] in [0, 1]: the base upsampled bilinearly, plus
        gate × the guided filter applied with the frame."""
        b, k = self.base.shape[:2]
        size = frame.shape[-2:]
        out = F.interpolate(self.base, size=size, mode="bilinear", align_corners=False)
        if self.coefficients is not None:
            guided = guided_logits(*self.coefficients, frame.repeat_interleave(k, 0))
            out = out + self.gate * guided.reshape(b, k, *size)
        return out


class MaskRefinement(nn.Module):
    def __init__(self):
        super().__init__()
        c2, c1 = MR_CHANNELS
        self.mask_proj = nn.Conv2d(UPSCALED_CHANNELS + 1, c2, 1)
        self.image_s2 = conv3(3, c2, 2)
        self.local_proj = nn.Conv2d(LEVEL_CHANNELS[0] + 1, c2, 1)
        self.fuse_s2 = nn.Sequential(conv3(3 * c2 + 1, c2), nn.GELU(), conv3(c2, c2), nn.GELU())
        self.delta_s2 = nn.Conv2d(c2, 1, 1)
        self.image_s1 = conv3(3, c1)
        self.fuse_s1 = nn.Sequential(conv3(c2 + c1, c1), nn.GELU())
        self.delta_s1 = nn.Conv2d(c1, 1, 1)
        self.guided_gate = nn.Parameter(torch.zeros(1))
        for delta in (self.delta_s2, self.delta_s1):
            nn.init.zeros_(delta.weight)
            nn.init.zeros_(delta.bias)

    def cascade_is_silent(self) -> bool:
        """Both corrections' output layers are zero: the cascade adds nothing (the engine's
        `cascade_is_silent`), and its inputs, the crops' features among them, go unread."""
        return all(not bool(d.weight.any()) and not bool(d.bias.any()) for d in (self.delta_s2, self.delta_s1))

    def forward(self, low_res, upscaled, image, local_s2, coverage, clicks=None) -> RefinedMasks:
        """The refined masks for the decoder's K masks per prompt.

        low_res [B, K, 4G, 4G]: the decoder's logits; upscaled [B, 32, 4G, 4G]: its upscaled embedding;
        image [B, 3, S, S]: the normalised input; local_s2 [B, 32, 8G, 8G]: LA's stitched stride-4 local
        features (zeros where no crop covers); coverage [B, 1, 8G, 8G]: 1 where a crop covers. The last
        two are None when the refiner reads no crops (`Refiner.reads_crops`); the cascade is then silent
        and skipped. `clicks`: (coords [M, 2] in input pixels, labels [M]) pinned in the guided filter's
        input of every mask (`pin_clicks`)."""
        b, k, h4, _ = low_res.shape
        size = image.shape[-1]
        masks = low_res.reshape(b * k, 1, h4, h4)
        sam = upsample(masks, size)  # SAM 2's own full-size logits
        gate = self.guided_gate
        guide = unnormalise(image).repeat_interleave(k, 0)
        p = sam.sigmoid() if clicks is None else pin_clicks(sam.sigmoid(), *clicks)
        coefficients = guided_coefficients(guide, p, size // GUIDED_RADIUS_DIVISOR, GUIDED_EPS)
        if local_s2 is None:
            if not self.cascade_is_silent():
                raise ValueError("a live cascade reads the crops' features: pass local_s2 and coverage")
            base = (1 - gate) * sam
        else:
            delta_s2, delta_s1 = self.cascade(masks, upscaled, image, local_s2, coverage, k, size)
            base = (1 - gate) * sam + delta_s2 + delta_s1
        logits = base + gate * guided_logits(*coefficients, guide)
        shape = (b, k, size, size)
        return RefinedMasks(logits.reshape(shape), base.reshape(shape), gate, coefficients)

    def cascade(self, masks, upscaled, image, local_s2, coverage, k: int, size: int):
        """The cascade's logit corrections at stride 2 (upsampled) and stride 1, each [B*K, 1, S, S], for
        `masks` [B*K, 1, 4G, 4G]."""
        h4 = masks.shape[-1]

        def per_mask(x):  # [B, ...] -> [B*K, ...]
            return x.repeat_interleave(k, 0)

        # The layers read the mask as a probability: logits run to ±30 (and -1024 for an absent
        # object), a scale that would swamp every other input.
        prob = masks.sigmoid()
        image_s2 = F.gelu(self.image_s2(image))
        local = self.local_proj(torch.cat([local_s2, coverage], 1))
        mask = upsample(self.mask_proj(torch.cat([per_mask(upscaled), prob], 1)), 2 * h4)
        x = self.fuse_s2(torch.cat([mask, per_mask(image_s2), per_mask(local), upsample(prob, 2 * h4)], 1))
        delta_s2 = self.delta_s2(x)
        image_s1 = F.gelu(self.image_s1(image))
        y = self.fuse_s1(torch.cat([upsample(x, size), per_mask(image_s1)], 1))
        return upsample(delta_s2, size), self.delta_s1(y)


# --------------------------------------------------------------------------------------------------
# The refiner and its file
# --------------------------------------------------------------------------------------------------


class Refiner(nn.Module):
    def __init__(self):
        super().__init__()
        self.localization_augment = LocalizationAugment()
        self.prompt_retargeting = PromptRetargeting()
        self.mask_refinement = MaskRefinement()

    def reads_crops(self) -> bool:
        """Whether the crops' features are read: LA or MR's cascade is live. A refiner whose only open
        gate is the guided filter's needs no crops, and its callers skip their encoder passes (as the
        engine's `Refiner::reads_crops`)."""
        return not self.localization_augment.is_silent() or not self.mask_refinement.cascade_is_silent()


def base_weights_hash(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the base model's tensors as the engine loads them: for each key in sorted order, the
    key, its shape and its values as little-endian f32. The same model stored in another container or
    dtype-exact conversion hashes the same; any other weights do not."""
    h = hashlib.sha256()
    for key in sorted(state):
        value = state[key].detach().to("cpu", torch.float32).contiguous()
        h.update(key.encode())
        h.update(json.dumps(list(value.shape)).encode())
        h.update(value.numpy().astype("<f4").tobytes())
    return h.hexdigest()


def save_refiner(refiner: Refiner, out: Path, base_config: str, base_state: dict[str, torch.Tensor], **extra):
    """The refiner's parameters (f32) with metadata naming the base they were trained on."""
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in refiner.state_dict().items()}
    metadata = {
        "format": FORMAT,
        "base_config": base_config,
        "base_weights_hash": base_weights_hash(base_state),
        **{k: str(v) for k, v in extra.items()},
    }
    save_file(tensors, str(out), metadata=metadata)


def load_refiner(path: Path) -> Refiner:
    refiner = Refiner()
    refiner.load_state_dict(load_file(str(path)), strict=True)
    return refiner.eval()
