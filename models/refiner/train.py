#!/usr/bin/env python3
"""Train the refiner (localization augment, prompt retargeting, mask refinement) on a frozen SAM 2.

The base stays frozen: its encoder runs without gradients on the frame and on the crops, and gradients
flow only through the decoder (frozen weights, but LA and PR change its inputs) into the refiner's modules.
By default the base is our nano model; `--base-config` and `--base-weights` take any official SAM 2 config
and checkpoint (see MODEL_CARD.md for training a refiner for one on a GPU).

Data: generated fine-structure scenes (`fine_scenes.py`) rendered at twice the model's input size, so the
quadrants are crops at the input size itself, with anti-aliased ground truth; or HQSeg-44K
(`--hqseg ROOT`), mixed in at `--hqseg-share`. Each step draws frames, encodes each frame, its four
quadrants (half the steps) or one window on each object (the other half: ROI mode), and prompts a few
objects per frame as SAM 2 trains: a click, a jittered box, or several clicks; then a correction round
(a click on the refined mask's larger error, with the previous low-resolution logits as the mask prompt).
With one click, the best of SAM 2's three candidates (by its own loss) is the one refined and supervised.

Loss on the refined S×S logits against the soft ground truth at S: BCE + dice + a boundary term (the BCE
over a band of ±3 pixels around the true edge, where fine structure lives).

    /opt/sam2-reference/bin/python models/refiner/train.py --seed 0   # writes models/refiner/sam2.1_nano.refiner.safetensors
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

HERE = Path(__file__).resolve().parent
sys.path.append(str(HERE.parent / "nano"))  # after this folder: both have a train.py and an evaluate.py

import fine_scenes  # noqa: E402
from common import (  # noqa: E402
    CONFIG,
    WEIGHTS,
    add_correction_clicks,
    bounding_box,
    jittered_box,
    normalise,
    point_inputs,
    random_pixel,
    scene_seed,
    square_max,
    with_negative_clicks,
)
from image_path import CELL, decode, encode, quadrant_origins, roi_origin  # noqa: E402
from refiner import LocalFeatures, Refiner, load_refiner, save_refiner, upsample  # noqa: E402

OUT = HERE / "sam2.1_nano.refiner.safetensors"
BOUNDARY_RADIUS = 3  # pixels at S either side of the true edge
LOSS_WEIGHTS = {"bce": 1.0, "dice": 1.0, "boundary": 1.0, "lovasz": 0.0}  # `--loss-weights` sets them


# --------------------------------------------------------------------------------------------------
# The frozen base
# --------------------------------------------------------------------------------------------------


def load_base(config: Path, weights: Path, device: str):
    """The official `SAM2Base` from a config and its weights, frozen, and the state dict (for the refiner
    file's base hash). Checkpoints: `.pt` (official, state under "model") or `.safetensors`."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(config)
    OmegaConf.resolve(cfg)
    model = instantiate(cfg.model, _recursive_=True)
    if weights.suffix == ".safetensors":
        state = load_file(str(weights))
    else:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        state = state.get("model", state)
    state = {k: v.float() for k, v in state.items()}
    model.load_state_dict(state, strict=True)
    model.eval().requires_grad_(False)
    return model.to(device), state


# --------------------------------------------------------------------------------------------------
# Prompts (input pixels of the S×S model input)
# --------------------------------------------------------------------------------------------------


def first_prompt(gt: torch.Tensor, rng: random.Random) -> tuple[list, list]:
    """A click (inside, away from the edge where the object is thick enough), a jittered box, or 2 to 6
    clicks with some negative ones just outside."""
    kind = rng.random()
    inner = -square_max(-gt.float()[None, None], 2)[0, 0] > 0
    source = inner if inner.any() else gt
    if kind < 0.4:
        return [random_pixel(source, rng)], [1]
    if kind < 0.75:
        box = jittered_box(gt, rng, 0.08, 10.0)
        return [(box[0], box[1]), (box[2], box[3])], [2, 3]
    points = [random_pixel(source, rng) for _ in range(rng.randint(2, 4))]
    return with_negative_clicks(points, (square_max(gt.float()[None, None], 4)[0, 0] > 0) & ~gt, rng)


# --------------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------------


def edge_band(gt: torch.Tensor, radius: int = BOUNDARY_RADIUS) -> torch.Tensor:
    """[N, H, W] bool: within `radius` pixels (a square) of the edge of the binary mask."""
    x = gt.float()[:, None]
    grown = square_max(x, radius)
    shrunk = -square_max(-x, radius)
    return (grown - shrunk)[:, 0] > 0


def lovasz_hinge(logits: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """[N]: the Lovász hinge (Berman et al. 2018) of each mask, a convex surrogate of 1 - IoU of the
    thresholded mask: it scores the hard mask, where BCE and dice score probabilities."""
    out = []
    for x, y in zip(logits.flatten(1), gt.flatten(1).float()):
        signs = 2 * y - 1
        errors = 1 - x * signs
        errors_sorted, order = torch.sort(errors, descending=True)
        y_sorted = y[order]
        total = y_sorted.sum()
        intersection = total - y_sorted.cumsum(0)
        union = total + (1 - y_sorted).cumsum(0)
        jaccard = 1 - intersection / union
        grad = torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])
        out.append(torch.dot(F.relu(errors_sorted), grad))
    return torch.stack(out)


def refine_losses(logits: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
    """logits [N, S, S], soft truth [N, S, S] in [0, 1] -> [N]."""
    bce = F.binary_cross_entropy_with_logits(logits, soft, reduction="none")
    prob = logits.sigmoid()
    inter = (prob * soft).flatten(1).sum(-1)
    dice = 1 - (2 * inter + 1) / (prob.flatten(1).sum(-1) + soft.flatten(1).sum(-1) + 1)
    band = edge_band(soft > 0.5).float()
    boundary = (bce * band).flatten(1).sum(-1) / band.flatten(1).sum(-1).clamp_min(1)
    w = LOSS_WEIGHTS
    loss = w["bce"] * bce.flatten(1).mean(-1) + w["dice"] * dice + w["boundary"] * boundary
    if w["lovasz"]:
        loss = loss + w["lovasz"] * lovasz_hinge(logits, soft > 0.5)
    return loss


def iou(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    union = (pred | gt).flatten(1).sum(-1)
    return torch.where(union > 0, (pred & gt).flatten(1).sum(-1) / union.clamp_min(1), 1.0)


# --------------------------------------------------------------------------------------------------
# A step
# --------------------------------------------------------------------------------------------------


def stitch(levels_of_crops: list[torch.Tensor], rows: int, cols: int) -> list[torch.Tensor]:
    """[rows*cols, C, h, w] per level (row-major crops) -> [1, C, rows*h, cols*w]."""
    out = []
    for f in levels_of_crops:
        grid = [torch.cat([f[r * cols + c] for c in range(cols)], -1) for r in range(rows)]
        out.append(torch.cat(grid, -2)[None])
    return out


def crops_of(frame: torch.Tensor, origins: list[tuple[int, int]], image_size: int) -> torch.Tensor:
    """Half-size crops of a frame rendered at 2S (so each crop is S×S as cut), normalised."""
    scale = frame.shape[-1] // image_size
    half = image_size // 2
    return torch.stack([normalise(frame[:, r * scale : (r + half) * scale, c * scale : (c + half) * scale]) for r, c in origins])


def stride2_local(local: LocalFeatures, image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    from image_path import stride2_local as place

    return place(local, image_size)


def prompted_objects(alphas: list[torch.Tensor], size: int, rng: random.Random, args, device="cpu") -> list[tuple]:
    """The objects a step prompts: in each frame, up to `args.objects_per_image` of those with at least
    `args.min_pixels` pixels at S, in random order. Each as (frame index, object index, coverage at S,
    ROI origin on its true box: the engine puts it on the previous mask's box)."""
    objects = []
    for i, alpha in enumerate(alphas):
        at_s = F.avg_pool2d(alpha[:, None].to(device), alpha.shape[-1] // size)[:, 0]
        big = [k for k in range(len(alpha)) if (at_s[k] > 0.5).sum() >= args.min_pixels]
        rng.shuffle(big)
        for k in big[: args.objects_per_image]:
            objects.append((i, k, at_s[k], roi_origin(bounding_box(at_s[k] > 0.5), size)))
    return objects


def object_local_features(model, frames: torch.Tensor, owner: list[int], origins: list, quadrants: bool) -> list[LocalFeatures]:
    """Each prompted object's local features, without gradients: the four quadrants of its frame
    `owner[j]`, or one ROI window at `origins[j]`."""
    s = model.image_size
    with torch.no_grad():
        if quadrants:
            per_level = encode(model, torch.cat([crops_of(f, quadrant_origins(s), s) for f in frames]))
            grids = [stitch([lv[4 * i : 4 * i + 4] for lv in per_level], 2, 2) for i in range(len(frames))]
            return [LocalFeatures(grids[i], (0, 0, s // CELL, s // CELL)) for i in owner]
        per_level = encode(model, torch.cat([crops_of(frames[i], [origin], s) for i, origin in zip(owner, origins)]))
    half = s // 2 // CELL
    return [
        LocalFeatures([lv[j : j + 1] for lv in per_level], (r // CELL, c // CELL, half, half))
        for j, (r, c) in enumerate(origins)
    ]


def mr_local_inputs(locals_: list[LocalFeatures], image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """MR's local inputs for a batch of objects: LA's stride-4 local features on the stride-2 grid, and
    their coverage."""
    placed = [stride2_local(loc, image_size) for loc in locals_]
    return torch.cat([a for a, _ in placed]), torch.cat([b for _, b in placed])


def reads_crops(refiner) -> bool:
    """Whether a step needs the crops: the refiner reads them, or could after an update (LA or the
    cascade has a trainable parameter)."""
    mr = refiner.mask_refinement
    readers = list(refiner.localization_augment.parameters()) + [
        p for name, p in mr.named_parameters() if name != "guided_gate"
    ]
    return refiner.reads_crops() or any(p.requires_grad for p in readers)


def step(model, refiner, batch, rng, args) -> tuple[torch.Tensor, dict]:
    """One training step over `batch` (frames [B, 3, 2S, 2S], alphas list of [K, 2S, 2S])."""
    frames, alphas = batch
    device = model.device
    s = model.image_size
    frames = frames.to(device)
    inputs = normalise(F.interpolate(frames, size=(s, s), mode="bilinear", align_corners=False, antialias=True))
    quadrant_step = rng.random() < 0.5
    with torch.no_grad():
        features = encode(model, inputs)
        features[2] = features[2] + model.no_mem_embed.view(1, -1, 1, 1)

    objects = prompted_objects(alphas, s, rng, args, device)
    if not objects:
        return None, {}
    owner = [o[0] for o in objects]
    # The crops' encoder passes are about half of a step: skipped when nothing reads their features,
    # now or after this step's update (a trainable crop reader, even at zero, needs them for its gradient).
    if reads_crops(refiner):
        locals_ = object_local_features(model, frames, owner, [o[3] for o in objects], quadrant_step)
    else:
        locals_ = None
    soft = torch.stack([o[2] if args.targets == "soft" else (o[2] > 0.5).float() for o in objects])
    gt = soft > 0.5
    gt_host = gt.cpu()

    # Global features per object, enhanced by LA with that object's local features.
    if locals_ is None:
        enhanced = [f[torch.tensor(owner, device=device)] for f in features]
        local_s2 = coverage = None
    else:
        enhanced = [refiner.localization_augment([f[o : o + 1] for f in features], loc) for o, loc in zip(owner, locals_)]
        enhanced = [torch.cat([e[level] for e in enhanced]) for level in range(3)]
        local_s2, coverage = mr_local_inputs(locals_, s)
    image_in = inputs[torch.tensor(owner, device=device)]

    prompts = [first_prompt(g, rng) for g in gt_host]
    mask_input, total, stats = None, 0.0, {}
    for round_ in range(1 + args.corrections):
        points = point_inputs(prompts, device)
        coords, labels = points["point_coords"], points["point_labels"]
        sparse, dense = model.sam_prompt_encoder(points=(coords, labels), boxes=None, masks=mask_input)
        sparse, dense = refiner.prompt_retargeting(sparse, dense, coords, labels, enhanced[2], mask_input, stride=float(CELL))
        multimask = round_ == 0 and all(len(lab) == 1 for _, lab in prompts)
        (low, _, _, _), upscaled = decode(model, enhanced, sparse, dense, multimask)
        rows = torch.arange(len(gt), device=device)
        with torch.no_grad():
            plain = upsample(low, s)  # SAM 2's own logits, for the candidate choice and the figures
            per_candidate = torch.stack([refine_losses(plain[:, k], soft) for k in range(low.shape[1])], 1)
            kept = per_candidate.argmin(1)
        chosen = low[rows, kept][:, None]
        refined = refiner.mask_refinement(chosen, upscaled, image_in, local_s2, coverage).logits[:, 0]
        total = total + refine_losses(refined, soft).mean()
        with torch.no_grad():
            stats[f"r{round_}"] = iou(refined > 0, gt).mean().item()
            stats[f"p{round_}"] = iou(plain[rows, kept] > 0, gt).mean().item()
        if round_ < args.corrections:
            add_correction_clicks(prompts, (refined.detach() > 0).cpu(), gt_host, rng)
            mask_input = chosen.detach().clamp(-32, 32)
    return total / (1 + args.corrections), stats


def render_batch(seeds: list[int], size: int, rng: random.Random, hqseg=None, hqseg_share: float = 0.0):
    """Frames [B, 3, size, size] and each frame's object coverages: generated scenes, and with
    `hqseg` (an `HQSegDataset` at `size`) a share of HQSeg-44K images, one object each."""
    frames, alphas = [], []
    for seed in seeds:
        if hqseg is not None and rng.random() < hqseg_share:
            image, alpha = hqseg[rng.randrange(len(hqseg))]
        else:
            image, alpha = fine_scenes.random_fine_scene(seed, size=size, still=True).render(0.0)
        frames.append(image)
        alphas.append(alpha)
    return torch.stack(frames), alphas


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=4, help="frames per step")
    ap.add_argument("--objects-per-image", type=int, default=3)
    ap.add_argument("--corrections", type=int, default=1)
    ap.add_argument("--min-pixels", type=int, default=100, help="objects smaller than this at S are not prompted")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--base-config", type=Path, default=CONFIG, help="the frozen base's config (official YAML)")
    ap.add_argument("--base-weights", type=Path, default=WEIGHTS, help="the frozen base's checkpoint (.pt or .safetensors)")
    ap.add_argument("--base-name", default="sam2.1_nano", help="the base's name, recorded in the refiner file")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--log-every", type=int, default=25)
    ap.add_argument("--targets", choices=("soft", "binary"), default="soft",
                    help="supervise with the anti-aliased coverage, or with coverage > 0.5 (what the figures score)")
    ap.add_argument("--loss-weights", type=float, nargs=4, metavar=("BCE", "DICE", "BOUNDARY", "LOVASZ"),
                    default=[LOSS_WEIGHTS[k] for k in ("bce", "dice", "boundary", "lovasz")])
    ap.add_argument("--hqseg", type=Path, default=None, help="a local HQSeg-44K (its data folder) to mix in")
    ap.add_argument("--hqseg-share", type=float, default=0.5, help="share of frames drawn from --hqseg")
    ap.add_argument("--max-steps", type=int, default=None, help="stop after this many steps of the schedule")
    ap.add_argument("--train", nargs="+", metavar="PREFIX", default=[""],
                    help="train only the parameters whose names start with one of these (the others keep their "
                    "initial values: a module whose gate stays at zero is off); default: all")
    ap.add_argument("--init", type=Path, default=None,
                    help="start from this refiner file's weights (e.g. the shipped one, to train a module on top)")
    args = ap.parse_args()

    LOSS_WEIGHTS.update(zip(("bce", "dice", "boundary", "lovasz"), args.loss_weights))
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    model, base_state = load_base(args.base_config, args.base_weights, args.device)
    refiner = (Refiner() if args.init is None else load_refiner(args.init)).to(args.device).train()
    params = [p for name, p in refiner.named_parameters() if name.startswith(tuple(args.train))]
    for name, p in refiner.named_parameters():
        p.requires_grad_(name.startswith(tuple(args.train)))
    print(f"refiner parameters: {sum(p.numel() for p in refiner.parameters()) / 1e6:.3f} M, "
          f"{sum(p.numel() for p in params)} trained; base {args.base_name}")
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)

    def lr_at(step: int) -> float:
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        return args.lr * 0.5 * (1 + math.cos(math.pi * (step - args.warmup) / max(1, args.steps - args.warmup)))

    hqseg = None
    if args.hqseg is not None:
        from hqseg import HQSegDataset

        hqseg = HQSegDataset(args.hqseg, size=2 * model.image_size)
        print(f"HQSeg-44K: {len(hqseg)} images from {args.hqseg}")
    began, window, counter = time.time(), [], 0
    logged: dict[str, list[float]] = {}
    frame_size = 2 * model.image_size
    for step_index in range(min(args.steps, args.max_steps or args.steps)):
        for group in opt.param_groups:
            group["lr"] = lr_at(step_index)
        seeds = [scene_seed(args.seed, counter + i) for i in range(args.batch)]
        counter += args.batch
        batch = render_batch(seeds, frame_size, rng, hqseg, args.hqseg_share)
        loss, stats = step(model, refiner, batch, rng, args)
        if loss is None:
            continue
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        window.append(loss.item())
        for k, v in stats.items():
            logged.setdefault(k, []).append(v)
        if (step_index + 1) % args.log_every == 0:
            figures = " ".join(f"{k} {sum(v) / len(v):.3f}" for k, v in sorted(logged.items()))
            print(f"step {step_index + 1}/{args.steps} loss {sum(window) / len(window):.3f} IoU {figures} "
                  f"lr {lr_at(step_index):.2e} {time.time() - began:.0f} s", flush=True)
            window, logged = [], {}
    save_refiner(refiner, args.out, args.base_name, base_state, trained="train.py " + " ".join(sys.argv[1:]))
    print(f"trained in {time.time() - began:.0f} s; refiner: {args.out}")


if __name__ == "__main__":
    main()
