#!/usr/bin/env python3
"""An experiment on mask refinement alone: a cascade that ends at the frame's resolution, trained on the
frozen base with LA and PR off, scored on held-out objects every few steps.

Why it exists: every run of `train.py` lowered the loss and the IoU together (MODEL_CARD.md). Training MR
alone separates MR's part from LA's and PR's, and it is cheap: the decoder runs without gradients, and
the held-out scores come from cached decoder outputs, so a change to MR or its loss shows its effect on
held-out objects within minutes instead of after a full evaluation. It is not the shipped design: the
engine and the refiner file hold `refiner.MaskRefinement`, and a result found here moves there only
with its candle port and parity fixture.

The cascade here (`FrameMR`) differs from the committed MR in two ways:
- it reads the frame itself at twice the model's size (pixel-unshuffled, so the detail the S×S input has
  lost reaches every level) and outputs logits at that size, where the held-out figures are scored;
- its receptive field comes from residual blocks with dilations 1, 2 and 4 at stride 4 (cheap), with
  light stages at stride 2, 1 and 1/2 after.
`--edge-band R` confines its correction to within R frame pixels of SAM 2's own edge (0: everywhere).

    /opt/sam2-reference/bin/python models/refiner/mr_alone.py --steps 300 --loss-weights 1 1 1 0
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.append(str(HERE.parent / "nano"))  # after this folder: both have a train.py and an evaluate.py

import evaluate as ev  # noqa: E402
import train as tr  # noqa: E402
from common import IMG_MEAN, IMG_STD, bounding_box, to_uint8  # noqa: E402
from image_path import decode, encode, local_features, quadrant_origins  # noqa: E402
from refiner import LEVEL_CHANNELS, UPSCALED_CHANNELS, guided_coefficients, guided_logits, upsample  # noqa: E402

GUIDED_TUNING_SEED = 7 * 10**9 % 2**32  # scenes for choosing the filter's radius, apart from training and evaluation (written 7 * 10**9 when chosen: the same seeds to torch)


def conv3(i: int, o: int, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(i, o, 3, 1, dilation, dilation=dilation)


class Residual(nn.Module):
    def __init__(self, channels: int, dilation: int):
        super().__init__()
        self.a, self.b = conv3(channels, channels, dilation), conv3(channels, channels)

    def forward(self, x):
        return x + self.b(F.gelu(self.a(F.gelu(x))))


class GuidedOnly(nn.Module):
    """SAM 2's probability through the guided filter, with no trained parameters: logits at the frame's
    size. `at_input`: the coefficients computed at S (the frame resized as the model's input is, SAM 2's
    mask at S; `radius` in input pixels) and applied with the frame, as MR does; otherwise everything at
    the frame's resolution (`radius` in frame pixels)."""

    def __init__(self, radius: int, eps: float, at_input: bool):
        super().__init__()
        self.radius, self.eps, self.at_input = radius, eps, at_input

    def forward(self, low, upscaled, frame, local_s2, coverage):
        guide = frame * IMG_STD + IMG_MEAN
        s = 4 * low.shape[-1] if self.at_input else frame.shape[-1]
        small = F.interpolate(guide, size=(s, s), mode="bilinear", align_corners=False, antialias=True) if self.at_input else guide
        a, b = guided_coefficients(small, upsample(low, s).sigmoid(), self.radius, self.eps)
        return guided_logits(a, b, guide)


class FrameMR(nn.Module):
    def __init__(self, widths=(32, 16, 8, 4), dilations=(1, 2, 4), edge_band: int = 0):
        super().__init__()
        c4, c2, c1, c0 = widths
        self.edge_band = edge_band
        self.in4 = nn.Conv2d(UPSCALED_CHANNELS + 1 + LEVEL_CHANNELS[0] + 1, c4, 1)
        self.image_s4 = conv3(3 * 64, c4)
        self.body = nn.Sequential(*[Residual(c4, d) for d in dilations])
        self.delta_s4 = nn.Conv2d(c4, 1, 1)
        self.down4 = nn.Conv2d(c4, c2, 1)
        self.image_s2 = conv3(3 * 16, c2)
        self.local_proj = nn.Conv2d(LEVEL_CHANNELS[0] + 1, c2, 1)
        self.fuse_s2 = nn.Sequential(conv3(3 * c2 + 1, c2), nn.GELU(), conv3(c2, c2), nn.GELU())
        self.delta_s2 = nn.Conv2d(c2, 1, 1)
        self.down2 = nn.Conv2d(c2, c1, 1)
        self.image_s1 = conv3(3 * 4, c1)
        self.fuse_s1 = nn.Sequential(conv3(2 * c1 + 1, c1), nn.GELU())
        self.delta_s1 = nn.Conv2d(c1, 1, 1)
        self.down1 = nn.Conv2d(c1, c0, 1)
        self.fuse_s0 = nn.Sequential(conv3(c0 + 4, c0), nn.GELU())
        self.delta_s0 = nn.Conv2d(c0, 1, 1)
        for delta in (self.delta_s4, self.delta_s2, self.delta_s1, self.delta_s0):
            nn.init.zeros_(delta.weight)
            nn.init.zeros_(delta.bias)

    def forward(self, low, upscaled, frame, local_s2, coverage):
        """low [N, 1, S/4, S/4] SAM 2's logits, upscaled [N, 32, S/4, S/4], frame [N, 3, 2S, 2S]
        normalised, local_s2 / coverage as MR's -> logits [N, 1, 2S, 2S]."""
        h4 = low.shape[-1]
        s = 4 * h4
        prob = low.sigmoid()
        local = torch.cat([local_s2, coverage], 1)
        x = self.in4(torch.cat([upscaled, prob, F.avg_pool2d(local, 2)], 1))
        x = F.gelu(self.body(x + self.image_s4(F.pixel_unshuffle(frame, 8))))
        out = low + self.delta_s4(x)
        y = self.fuse_s2(torch.cat([
            upsample(self.down4(x), 2 * h4),
            F.gelu(self.image_s2(F.pixel_unshuffle(frame, 4))),
            self.local_proj(local),
            upsample(prob, 2 * h4),
        ], 1))
        out = upsample(out, 2 * h4) + self.delta_s2(y)
        p1 = upsample(prob, s)
        z = self.fuse_s1(torch.cat([upsample(self.down2(y), s), F.gelu(self.image_s1(F.pixel_unshuffle(frame, 2))), p1], 1))
        out = upsample(out, s) + self.delta_s1(z)
        w = self.fuse_s0(torch.cat([upsample(self.down1(z), 2 * s), frame, upsample(p1, 2 * s)], 1))
        out = upsample(out, 2 * s) + self.delta_s0(w)
        if self.edge_band:
            sam = upsample(low, 2 * s)
            band = tr.edge_band((sam > 0)[:, 0], self.edge_band)[:, None].float()
            out = sam + band * (out - sam)
        return out


def base_decode(model, features, prompts, mask_input, multimask: bool):
    """SAM 2's decoder for one prompt per row of `features`: logits, IoUs, upscaled embedding."""
    points = tr.point_inputs(prompts, model.device)
    sparse, dense = model.sam_prompt_encoder(
        points=(points["point_coords"], points["point_labels"]), boxes=None, masks=mask_input
    )
    (low, iou, _, _), upscaled = decode(model, features, sparse, dense, multimask)
    return low, iou, upscaled


def step(model, mr: FrameMR, frames, alphas, rng: random.Random, args) -> tuple[torch.Tensor | None, dict]:
    """As `train.step`, with LA and PR off and the decoder without gradients; the loss is on MR's
    2S logits against the coverage at 2S (binary: what the figures score)."""
    s = model.image_size
    inputs = tr.normalise(F.interpolate(frames, size=(s, s), mode="bilinear", align_corners=False, antialias=True))
    quadrants = rng.random() < 0.5
    objects = tr.prompted_objects(alphas, s, rng, args)
    if not objects:
        return None, {}
    owner = [o[0] for o in objects]
    with torch.no_grad():
        features = encode(model, inputs)
        features[2] = features[2] + model.no_mem_embed.view(1, -1, 1, 1)
        features = [f[owner] for f in features]
    local_s2, coverage = tr.mr_local_inputs(tr.object_local_features(model, frames, owner, [o[3] for o in objects], quadrants), s)
    truth = torch.stack([alphas[i][k] > 0.5 for i, k, _, _ in objects])
    truth_at_s = [o[2] > 0.5 for o in objects]
    target = truth.float()
    frame = tr.normalise(frames)[owner]
    prompts = [tr.first_prompt(g, rng) for g in truth_at_s]
    rows = torch.arange(len(objects))
    mask_input, total, stats = None, 0.0, {}
    for round_ in range(1 + args.corrections):
        multimask = round_ == 0 and all(len(labels) == 1 for _, labels in prompts)
        with torch.no_grad():
            low, _, upscaled = base_decode(model, features, prompts, mask_input, multimask)
            plain = upsample(low, 2 * s)
            per_candidate = torch.stack([tr.refine_losses(plain[:, k], target) for k in range(low.shape[1])], 1)
            chosen = low[rows, per_candidate.argmin(1)][:, None]
        refined = mr(chosen, upscaled, frame, local_s2, coverage)[:, 0]
        total = total + tr.refine_losses(refined, target).mean()
        with torch.no_grad():
            stats[f"r{round_}"] = tr.iou(refined > 0, truth).mean().item()
            stats[f"p{round_}"] = tr.iou(upsample(chosen, 2 * s)[:, 0] > 0, truth).mean().item()
        if round_ < args.corrections:
            at_s = F.avg_pool2d((refined.detach() > 0).float()[:, None], 2)[:, 0] > 0.5
            tr.add_correction_clicks(prompts, at_s, truth_at_s, rng)
            mask_input = chosen.clamp(-32, 32)
    return total / (1 + args.corrections), stats


class HeldOut:
    """The first `images` scenes of the evaluation set, each object's SAM 2 outputs for its box and for
    one click (the best of three by predicted IoU) cached, with the quadrants' local features: scoring
    MR on them is one forward per object."""

    def __init__(self, model, images: int, seed_base: int = ev.EVAL_SEED_BASE):
        s = model.image_size
        predictor = ev.RefinedImagePredictor(model, None, "off")
        self.cases = []
        with torch.no_grad():
            for i in range(images):
                image, alpha = ev.fine_scenes.random_fine_scene(seed_base + i, size=2 * s, still=True).render(0.0)
                pixels = to_uint8(image)
                predictor.set_image(pixels)
                local = local_features(model, predictor.official._transforms, pixels, quadrant_origins(s))
                local_s2, coverage = tr.stride2_local(local, s)
                frame = tr.normalise(torch.from_numpy(pixels).permute(2, 0, 1).float() / 255)[None]
                cached = predictor.official._features
                features = [f[:1] for f in cached["high_res_feats"]] + [cached["image_embed"][:1]]
                for a in alpha:
                    truth = a > 0.5
                    if truth.sum() < ev.MIN_PIXELS:
                        continue
                    x0, y0, x1, y1 = bounding_box(truth)
                    box = [(x0 / 2, y0 / 2), (x1 / 2, y1 / 2)]
                    x, y = ev.interior_point(truth)
                    low_box, _, up_box = base_decode(model, features, [(box, [2, 3])], None, False)
                    low_click, ious, up_click = base_decode(model, features, [([(x / 2, y / 2)], [1])], None, True)
                    k = int(ious[0].argmax())
                    self.cases.append({
                        "truth": truth, "frame": frame, "local_s2": local_s2, "coverage": coverage,
                        "box": (low_box[:, :1], up_box), "click": (low_click[:, k : k + 1], up_click),
                    })

    @torch.no_grad()
    def score(self, mr) -> dict[str, tuple[float, float, float, float]]:
        """{prompt: (SAM 2 mIoU, mBIoU, refined mIoU, mBIoU)} in percent, at the frame's resolution;
        `mr` maps (low, upscaled, frame, local_s2, coverage) to logits at any size."""
        out = {}
        for prompt in ("box", "click"):
            plain, refined = [], []
            for case in self.cases:
                low, upscaled = case[prompt]
                size = case["truth"].shape
                plain.append(ev.scores(F.interpolate(low, size=size, mode="bilinear", align_corners=False)[0, 0] > 0, case["truth"]))
                logits = mr(low, upscaled, case["frame"], case["local_s2"], case["coverage"])
                logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
                refined.append(ev.scores(logits[0, 0] > 0, case["truth"]))
            out[prompt] = (ev.mean(plain, 0), ev.mean(plain, 1), ev.mean(refined, 0), ev.mean(refined, 1))
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=4, help="frames per step")
    ap.add_argument("--objects-per-image", type=int, default=3)
    ap.add_argument("--corrections", type=int, default=1)
    ap.add_argument("--min-pixels", type=int, default=100, help="objects smaller than this at S are not prompted")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--edge-band", type=int, default=0, help="confine MR's correction to this many frame pixels of SAM 2's edge")
    ap.add_argument("--loss-weights", type=float, nargs=4, metavar=("BCE", "DICE", "BOUNDARY", "LOVASZ"), default=[1, 1, 1, 0])
    ap.add_argument("--held-out", type=int, default=8, help="evaluation images scored every --score-every steps")
    ap.add_argument("--score-every", type=int, default=50)
    ap.add_argument("--out", type=Path, default=Path("/tmp/mr_alone.pt"))
    ap.add_argument("--guided", nargs=2, metavar=("RADII", "EPSILONS"),
                    help="no training: score the guided filter alone for each radius (frame pixels) and ridge, "
                    "comma-separated, on --held-out evaluation images and on as many training scenes")
    ap.add_argument("--guided-at-input", action="store_true",
                    help="with --guided: the coefficients at the model's input size (radii in input pixels), "
                    "applied with the frame, as MR computes them")
    args = ap.parse_args()

    tr.LOSS_WEIGHTS.update(zip(("bce", "dice", "boundary", "lovasz"), args.loss_weights))
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    model, _ = tr.load_base(tr.CONFIG, tr.WEIGHTS, "cpu")
    if args.guided:
        sets = {"training scenes": HeldOut(model, args.held_out, seed_base=GUIDED_TUNING_SEED), "held-out": HeldOut(model, args.held_out)}
        for radius in map(int, args.guided[0].split(",")):
            for eps in map(float, args.guided[1].split(",")):
                for name, cases in sets.items():
                    figures = "; ".join(f"{k} SAM 2 {a:.1f}/{b:.1f} filtered {c:.1f}/{d:.1f}" for k, (a, b, c, d) in cases.score(GuidedOnly(radius, eps, args.guided_at_input)).items())
                    print(f"radius {radius} eps {eps:g}, {name} ({len(cases.cases)} objects): {figures}", flush=True)
        return
    mr = FrameMR(edge_band=args.edge_band).train()
    held = HeldOut(model, args.held_out)
    print(f"MR alone: {sum(p.numel() for p in mr.parameters())} parameters; {len(held.cases)} held-out objects")

    def report(step_index: int) -> None:
        mr.eval()
        figures = "; ".join(f"{k} SAM 2 {a:.1f}/{b:.1f} refined {c:.1f}/{d:.1f}" for k, (a, b, c, d) in held.score(mr).items())
        print(f"held-out mIoU/mBIoU at step {step_index}: {figures}", flush=True)
        mr.train()

    report(0)
    opt = torch.optim.AdamW(mr.parameters(), lr=args.lr, weight_decay=0.01)
    began, counter, losses, logged = time.time(), 0, [], {}
    for step_index in range(args.steps):
        warm = min(1.0, (step_index + 1) / args.warmup)
        for group in opt.param_groups:
            group["lr"] = args.lr * warm * 0.5 * (1 + math.cos(math.pi * step_index / args.steps))
        seeds = [tr.scene_seed(args.seed, counter + j) for j in range(args.batch)]
        counter += args.batch
        frames, alphas = tr.render_batch(seeds, 2 * model.image_size, rng)
        loss, stats = step(model, mr, frames, alphas, rng, args)
        if loss is None:
            continue
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(mr.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        for k, v in stats.items():
            logged.setdefault(k, []).append(v)
        if (step_index + 1) % 25 == 0:
            ious = " ".join(f"{k} {sum(v) / len(v):.3f}" for k, v in sorted(logged.items()))
            print(f"step {step_index + 1} loss {sum(losses) / len(losses):.3f} IoU {ious} {time.time() - began:.0f} s", flush=True)
            losses, logged = [], {}
        if (step_index + 1) % args.score_every == 0:
            report(step_index + 1)
            torch.save(mr.state_dict(), args.out)


if __name__ == "__main__":
    main()
