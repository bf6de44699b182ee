#!/usr/bin/env python3
"""Train the nano SAM 2 from scratch on generated scenes, and write its weights (f16 safetensors).

The model is the official `SAM2Base` built from `config.yaml` by the official `sam2` package, trained the
way SAM 2 is (arXiv 2408.00714, §4 and appendix): prompts of clicks, jittered boxes and masks; correction
clicks sampled from the error of the previous prediction, with that prediction fed back as a mask prompt;
multimask outputs supervised on the best of the three; mask loss + dice + IoU prediction + object score;
video clips with the prompt on the first frame, memory carried frame to frame with gradients through it,
and now and then a correction on a later frame, which then becomes a conditioning frame (as our tracker
does). As in SAM's training, each image is encoded once and several of its objects are prompted on it,
each through a first prompt and a correction round: the decoder is cheap next to the encoder.

Departures from SAM 2's recipe, each measured from scratch (see MODEL_CARD.md):

- the mask loss is a plain BCE, not SAM 2's focal loss (×20), which drove every mask to empty;
- the IoU head learns by a cross-entropy on its logits: an L1 on its sigmoid froze every prediction at 0;
- the decoder's prompt cross-attentions start with equal query and key projections (`init_prompt_attention`);
- the learning rate is 2e-4: at 1e-3 (SAM 2's batches are a hundred times ours) the training IoU stayed
  under 0.1 for 900 steps; at 2e-4 it passed 0.38 by step 600;
- no dropout in the memory attention (`no_dropout`): every scene is new, so there is nothing to overfit.

Two phases: images (the prompt path), then clips mixed with images (the memory path). The second phase
is the longer one, so that the memory path learns while the learning rate is still high: when clips came
only in the last 900 steps, under a cosine already near zero, tracking lagged far behind single images.

One seed fixes the scenes, the prompts and the initialisation; on the same thread count, on an idle
machine, the run is repeatable (see MODEL_CARD.md for a contended run that was not, by one f16 ulp).

    /opt/sam2-reference/bin/python models/nano/train.py --seed 0    # writes models/nano/sam2.1_nano.safetensors

`--device cuda` trains on a GPU; scenes and prompts are drawn on the CPU either way.
"""

from __future__ import annotations

import argparse
import math
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

import scenes
from common import (
    CONFIG,
    MIN_OBJECT_PIXELS,
    WEIGHTS,
    add_correction_clicks,
    build_model,
    correction_click,
    jittered_box,
    normalise,
    point_inputs,
    random_pixel,
    scene_seed,
    square_max,
    with_negative_clicks,
)

BCE_WEIGHT, DICE_WEIGHT, IOU_WEIGHT, CLASS_WEIGHT = 1.0, 1.0, 1.0, 1.0


# --------------------------------------------------------------------------------------------------
# Prompts
# --------------------------------------------------------------------------------------------------


def initial_prompt(gt: torch.Tensor, rng: random.Random) -> tuple[list, list]:
    """Points and labels (box corners are labels 2 and 3) for a first prompt on `gt` (H, W)."""
    kind = rng.random()
    if kind < 0.45:
        return [random_pixel(gt, rng)], [1]
    if kind < 0.8:
        # Jitter as SAM 2 trains boxes: noise of 10 % of the side, at most 20 px.
        box = jittered_box(gt, rng, 0.1, 20.0)
        return [(box[0], box[1]), (box[2], box[3])], [2, 3]
    points = [random_pixel(gt, rng) for _ in range(rng.randint(1, 3))]
    return with_negative_clicks(points, dilate(gt, 15) & ~gt, rng)


def dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """`mask` (H, W) grown by `radius` pixels in a square (the 2-D pool this replaced took a fifth of each
    image step)."""
    return square_max(mask.float()[None, None], radius)[0, 0].bool()


# --------------------------------------------------------------------------------------------------
# Losses (SAM 2's, with a balanced BCE for the focal loss: see the top)
# --------------------------------------------------------------------------------------------------


# For the log: IoU of the kept masks after the first prompt, and after the last correction.
PROGRESS: dict[str, list[float]] = {"first": [], "corrected": [], "clip": []}


def mask_losses(logits, ious, scores, gt, candidates, pixel_weight=None):
    """logits (B, M, H, W), ious (B, M), scores (B, 1), gt (B, H, W) bool, candidates (B, M) bool: the
    masks that compete for each object (SAM's rule: the best of them learns). `pixel_weight` (B, H, W),
    if given, weighs each pixel's BCE (see `other_object_weights`). Returns the mean loss, the index of
    each object's kept mask and that mask's IoU."""
    target = gt[:, None].float().expand_as(logits)
    prob = logits.sigmoid()
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    if pixel_weight is not None:
        bce = bce * pixel_weight[:, None]
    bce = bce.flatten(2).mean(-1)
    inter = (prob * target).flatten(2).sum(-1)
    dice = 1 - (2 * inter + 1) / (prob.flatten(2).sum(-1) + target.flatten(2).sum(-1) + 1)
    per_mask = BCE_WEIGHT * bce + DICE_WEIGHT * dice
    kept = torch.argmin(per_mask.masked_fill(~candidates, float("inf")), dim=1)
    present = (gt.flatten(1).sum(-1) > 0).float()
    with torch.no_grad():
        pred, truth = logits > 0, target.bool()
        union = (pred | truth).flatten(2).sum(-1)
        actual_iou = torch.where(union > 0, (pred & truth).flatten(2).sum(-1) / union.clamp_min(1), 1.0)
    loss_mask = per_mask.gather(1, kept[:, None])[:, 0]
    # Every IoU prediction learns (SAM 2's `supervise_all_iou`): the predictors rank candidates by them.
    # `ious` are logits here (see `iou_logits`): a cross-entropy against the actual IoU has the same
    # optimum as SAM 2's L1 on the sigmoid, without the sigmoid's dead gradient, which from scratch
    # froze every prediction at 0 within a few hundred steps (measured).
    loss_iou = IOU_WEIGHT * F.binary_cross_entropy_with_logits(ious, actual_iou, reduction="none").mean(1)
    loss_class = CLASS_WEIGHT * F.binary_cross_entropy_with_logits(scores[:, 0], present, reduction="none")
    return ((loss_mask + loss_iou) * present + loss_class).mean(), kept, actual_iou.gather(1, kept[:, None])[:, 0]


def other_object_weights(targets: torch.Tensor, others: torch.Tensor, weight: float) -> torch.Tensor | None:
    """Per-pixel BCE weights (B, H, W): `weight` on the pixels of the other objects (`others`, the union
    of every object's visible mask, less the target's own, `targets`), 1 elsewhere; None when `weight`
    is 1 (the plain loss, bit for bit). Why: the masks spill onto the objects next to the target, above
    all onto the ones in front of it (on the held-out stills, false positives on the objects in front
    of a partly hidden target were half its true positives' area), where the plain loss counts those
    pixels no more than any other."""
    if weight == 1.0:
        return None
    return 1.0 + (weight - 1.0) * (others & ~targets).float()


# --------------------------------------------------------------------------------------------------
# Steps
# --------------------------------------------------------------------------------------------------


def backbone(model, images: torch.Tensor):
    out = model.forward_image(normalise(images.to(model.device)))
    _, feats, pos, sizes = model._prepare_backbone_features(out)
    return feats, pos, sizes


def frame_slice(feats, pos, lo, hi):
    return [f[:, lo:hi] for f in feats], [p[:, lo:hi] for p in pos]


def run_frame(model, feats, pos, sizes, t, is_init, prompts, masks, output_dict, num_frames, prev_logits=None):
    """One `_track_step` over a batch; returns the current output (for memory) and the SAM outputs."""
    current, sam, _, _ = model._track_step(
        t, is_init, feats, pos, sizes, prompts, masks, output_dict, num_frames, False, prev_logits
    )
    return current, sam


def add_memory(model, current, sam, feats, sizes, from_points):
    _, _, _, low, high, obj_ptr, scores = sam
    current["pred_masks"] = low
    current["obj_ptr"] = obj_ptr
    current["maskmem_features"], current["maskmem_pos_enc"] = model._encode_new_memory(
        feats, sizes, high, scores, from_points
    )


def image_features(model, feats, sizes, owner: torch.Tensor):
    """The decoder's inputs for each prompted object, from the backbone's features of its image: the
    image embedding (with the no-memory embedding added, as the image predictor does) and the two
    high-resolution levels, each indexed by the object's image (`owner`)."""
    maps = [f.permute(1, 2, 0).reshape(f.shape[1], f.shape[2], *s) for f, s in zip(feats, sizes)]
    embedding = maps[-1] + model.no_mem_embed.view(1, -1, 1, 1)
    return embedding[owner], [m[owner] for m in maps[:-1]]


def decode(model, embedding, high_res, prompts, mask_input=None):
    """All four of the decoder's masks (token 0: the single mask; 1-3: the multimask candidates) at full
    size, their predicted IoUs, the object scores, and the low-resolution logits (for a next round)."""
    points = point_inputs(prompts, embedding.device)
    sparse, dense = model.sam_prompt_encoder(
        points=(points["point_coords"], points["point_labels"]), boxes=None, masks=mask_input
    )
    low, ious, _, scores = model.sam_mask_decoder.predict_masks(
        image_embeddings=embedding,
        image_pe=model.sam_prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        repeat_image=False,
        high_res_features=high_res,
    )
    high = F.interpolate(low, size=(model.image_size,) * 2, mode="bilinear", align_corners=False)
    return high, ious, scores, low


def image_step(model, batch_scenes, rng, objects_per_image: int, corrections: int, other_weight: float) -> torch.Tensor:
    """Prompted images, several objects each: the encoder runs once per image and the decoder once per
    object and round (SAM's recipe, which makes the most of each encoder pass). Round 0 is a first
    prompt; the `corrections` rounds after it add a click on the error of the previous mask and feed
    that mask's logits back as the mask prompt, as a user's corrections reach the model."""
    images, gts, occupied, owner = [], [], [], []
    for i, scene in enumerate(batch_scenes):
        image, masks = scene.render(rng.uniform(0, 60))
        images.append(image)
        occupied.append(masks.any(0))
        for k in pick_objects(masks, rng, objects_per_image):
            gts.append(masks[k])
            owner.append(i)
    # Prompts are drawn on the host copy of the truth (`gt_host`), the loss meets the model's on its device.
    gt_host = torch.stack(gts)
    gt = gt_host.to(model.device)
    owner = torch.tensor(owner, device=model.device)
    weight = other_object_weights(gt, torch.stack(occupied).to(model.device)[owner], other_weight)
    feats, _, sizes = backbone(model, torch.stack(images))
    embedding, high_res = image_features(model, feats, sizes, owner)
    prompts = [initial_prompt(g, rng) for g in gt_host]
    # One click is ambiguous: the best of the three candidates learns (SAM's multimask rule); any
    # other prompt trains the single-mask token.
    multimask = torch.tensor([len(labels) == 1 for _, labels in prompts], device=model.device)
    single = torch.tensor([True, False, False, False], device=model.device)
    candidates = torch.where(multimask[:, None], ~single, single)
    high, ious, scores, low = decode(model, embedding, high_res, prompts)
    loss, kept, kept_iou = mask_losses(high, ious, scores, gt, candidates, weight)
    PROGRESS["first"].extend(kept_iou.tolist())
    rows = torch.arange(len(gt))
    for _ in range(corrections):
        pred = (high[rows, kept].detach() > 0).cpu()
        add_correction_clicks(prompts, pred, gt_host, rng)
        previous = low[rows, kept][:, None].detach().clamp(-32, 32)
        high, ious, scores, low = decode(model, embedding, high_res, prompts, previous)
        step_loss, kept, kept_iou = mask_losses(high, ious, scores, gt, single.expand_as(candidates), weight)
        loss = loss + step_loss
    if corrections:
        PROGRESS["corrected"].extend(kept_iou.tolist())
    return loss / (1 + corrections)


def big_objects(masks: torch.Tensor) -> list[int]:
    """The objects big enough to prompt, back to front (the order scenes draw them in)."""
    areas = masks.flatten(1).sum(-1)
    return [i for i in range(len(masks)) if areas[i] >= MIN_OBJECT_PIXELS]


def pick_objects(masks: torch.Tensor, rng: random.Random, count: int) -> list[int]:
    """Up to `count` distinct objects big enough to prompt (the biggest alone if none is)."""
    big = big_objects(masks)
    if not big:
        return [int(torch.argmax(masks.flatten(1).sum(-1)))]
    rng.shuffle(big)
    return big[:count]


def clip_target(masks: torch.Tensor, rng: random.Random, backmost_share: float) -> int:
    """A clip's target: in `backmost_share` of clips the backmost object big enough to prompt, as the
    evaluation picks its target (there with a higher floor, `evaluate.MIN_TARGET_PIXELS`): every other
    object then passes in front of it, so its occlusions are trained as often as they are scored. In
    the other clips any object big enough."""
    if backmost_share > 0 and rng.random() < backmost_share:
        big = big_objects(masks)
        if big:
            return big[0]
    return pick_objects(masks, rng, 1)[0]


def sam_losses(sam, gt, pixel_weight) -> torch.Tensor:
    """The loss of a tracking step's outputs: its masks (one, or three candidates) compete."""
    logits, ious, scores = sam[1], sam[2], sam[6]
    candidates = torch.ones_like(ious, dtype=torch.bool)
    loss, _, kept_iou = mask_losses(logits, ious, scores, gt, candidates, pixel_weight)
    PROGRESS["clip"].extend(kept_iou.tolist())
    return loss


def clip_step(model, batch_scenes, rng, num_frames, strides, backmost_share, other_weight) -> torch.Tensor:
    """Clips: a prompt on frame 0 (clicks, box or mask), tracking after; sometimes a correction later.
    A clip samples its scene every `stride` time units, one stride drawn from `strides` per clip."""
    stride = rng.choice(strides)
    start = rng.uniform(0, 60)
    frames, gts, others = [], [], []
    for scene in batch_scenes:
        rendered = [scene.render(start + stride * t) for t in range(num_frames)]
        obj = clip_target(rendered[0][1], rng, backmost_share)
        frames.append(torch.stack([image for image, _ in rendered]))
        gts.append(torch.stack([masks[obj] for _, masks in rendered]))
        others.append(torch.stack([masks.any(0) for _, masks in rendered]))
    batch = len(batch_scenes)
    images = torch.stack(frames, 1).flatten(0, 1)  # time-major: frame t of clip b at t * batch + b
    gt_host = torch.stack(gts, 1)  # (T, B, H, W)
    gt = gt_host.to(model.device)
    weights = other_object_weights(gt, torch.stack(others, 1).to(model.device), other_weight)
    frame_weights = [None] * num_frames if weights is None else list(weights)
    feats, pos, sizes = backbone(model, images)
    output_dict = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
    correct_at = rng.randrange(1, num_frames) if rng.random() < 0.3 else None
    loss = 0.0
    for t in range(num_frames):
        f, p = frame_slice(feats, pos, t * batch, (t + 1) * batch)
        if t == 0:
            # A target out of view on frame 0 can only be given as its (empty) mask.
            if rng.random() < 0.25 or any(g.sum() == 0 for g in gt_host[0]):
                masks = gt[0][:, None].float()
                current, sam = run_frame(model, f, p, sizes, 0, True, None, masks, output_dict, num_frames)
                from_points = False
            else:
                prompts = point_inputs([initial_prompt(g, rng) for g in gt_host[0]], model.device)
                current, sam = run_frame(model, f, p, sizes, 0, True, prompts, None, output_dict, num_frames)
                loss = loss + sam_losses(sam, gt[0], frame_weights[0])
                from_points = True
            add_memory(model, current, sam, f, sizes, from_points)
            output_dict["cond_frame_outputs"][0] = current
            continue
        current, sam = run_frame(model, f, p, sizes, t, False, None, None, output_dict, num_frames)
        loss = loss + sam_losses(sam, gt[t], frame_weights[t])
        kind = "non_cond_frame_outputs"
        if t == correct_at:
            pred = (sam[4][:, 0].detach() > 0).cpu()
            clicks = [correction_click(pred[b], gt_host[t, b], rng) for b in range(batch)]
            clicks = [([c[0]], [c[1]]) if c is not None else ([(0.0, 0.0)], [-1]) for c in clicks]
            prev = sam[3].detach().clamp(-32, 32)
            prompts = point_inputs(clicks, model.device)
            current, sam = run_frame(model, f, p, sizes, t, False, prompts, None, output_dict, num_frames, prev)
            loss = loss + sam_losses(sam, gt[t], frame_weights[t])
            kind = "cond_frame_outputs"
            add_memory(model, current, sam, f, sizes, True)
        else:
            add_memory(model, current, sam, f, sizes, False)
        output_dict[kind][t] = current
    return loss / num_frames


# --------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------


def init_prompt_attention(model) -> None:
    """The decoder's cross-attentions between prompt tokens and image start with equal query and key
    projections (orthogonal, no bias). Image and prompt positional encodings come from the same random
    Fourier features, so a click's query then meets the keys of its own position first: the decoder starts
    out looking where the click is. With independent random projections (the default init) it never
    learned to (a probe whose only cue is the click: mask IoU 0.06 after 150 steps, 0.66 with this)."""
    transformer = model.sam_mask_decoder.transformer
    attentions = [transformer.final_attn_token_to_image]
    for layer in transformer.layers:
        attentions += [layer.cross_attn_token_to_image, layer.cross_attn_image_to_token]
    with torch.no_grad():
        for attention in attentions:
            torch.nn.init.orthogonal_(attention.q_proj.weight)
            attention.k_proj.weight.copy_(attention.q_proj.weight)
            attention.q_proj.bias.zero_()
            attention.k_proj.bias.zero_()


def iou_logits(model) -> None:
    """The IoU head returns logits while training (the config's `iou_prediction_use_sigmoid` applies the
    sigmoid at inference; the weights are the same): see `mask_losses`. Ranking by logits is ranking by
    their sigmoid, so the tracking step's choice among candidates is unchanged."""
    model.sam_mask_decoder.iou_prediction_head.sigmoid_output = False


def no_dropout(model) -> None:
    """Train without the memory attention's dropout (the config's 0.1, which only applies in training):
    every scene is new, so there is nothing to overfit, and its random masks took a tenth of a clip step."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if hasattr(module, "dropout_p"):
            module.dropout_p = 0.0


TRUNK_BLOCKS = "image_encoder.trunk.blocks."


def trunk_stages(state: dict) -> list[list[int]]:
    """The Hiera trunk's block indices grouped by stage, read off a state dict: a stage is a run of
    blocks of one width (each stage doubles it)."""
    widths = {}
    for key, value in state.items():
        if key.startswith(TRUNK_BLOCKS) and key.endswith(".norm2.weight"):
            widths[int(key[len(TRUNK_BLOCKS):].split(".")[0])] = value.shape[0]
    stages: list[list[int]] = []
    for index in range(len(widths)):
        if not stages or widths[stages[-1][-1]] != widths[index]:
            stages.append([])
        stages[-1].append(index)
    return stages


def grown_state(model, weights: dict) -> dict:
    """`weights` for `model` when the model's trunk has more blocks in a stage than the weights (a
    deeper config, `--config`). The weights' blocks keep their places within their stages; each added
    block, appended at its stage's end, starts as the identity: its attention's output projection and
    its MLP's last layer are zero, so its two residual branches add nothing and the grown model
    computes what the weights did. Training then opens them (the zero layers get gradients first)."""
    fresh = model.state_dict()
    old, new = trunk_stages(weights), trunk_stages(fresh)
    if len(old) != len(new) or any(len(o) > len(n) for o, n in zip(old, new)):
        raise SystemExit(f"--init's trunk (blocks per stage {[len(o) for o in old]}) does not fit in "
                         f"--config's ({[len(n) for n in new]})")
    renamed = {i: n[j] for o, n in zip(old, new) for j, i in enumerate(o)}
    state = {}
    for key, value in weights.items():
        if key.startswith(TRUNK_BLOCKS):
            index, rest = key[len(TRUNK_BLOCKS):].split(".", 1)
            key = f"{TRUNK_BLOCKS}{renamed[int(index)]}.{rest}"
        state[key] = value
    for index in sorted(set(range(sum(map(len, new)))) - set(renamed.values())):
        mlp_last = max(int(k.split(".")[-2]) for k in fresh if k.startswith(f"{TRUNK_BLOCKS}{index}.mlp.layers."))
        for key, value in fresh.items():
            if key.startswith(f"{TRUNK_BLOCKS}{index}."):
                zero = key.split(".", 4)[4].startswith(("attn.proj.", f"mlp.layers.{mlp_last}."))
                state[key] = torch.zeros_like(value) if zero else value
        print(f"trunk block {index} added, starting as the identity")
    return state


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--image-steps", type=int, default=3000)
    ap.add_argument("--clip-steps", type=int, default=4500, help="steps of the second phase, which mixes in clips")
    ap.add_argument("--clip-share", type=float, default=0.3, help="share of the second phase's steps that are clips")
    ap.add_argument("--image-batch", type=int, default=4, help="images per image step")
    ap.add_argument("--objects-per-image", type=int, default=4, help="objects prompted in each image")
    ap.add_argument("--corrections", type=int, default=1, help="correction rounds after each first prompt")
    ap.add_argument("--clip-batch", type=int, default=2)
    ap.add_argument("--clip-frames", type=int, default=6)
    ap.add_argument(
        "--clip-strides", type=int, nargs="+", default=[1, 1, 2, 3], metavar="STRIDE",
        help="time units between a clip's frames, one drawn per clip from this list (repeat one to weight it); "
        "larger strides reach the long exits and occlusions of the 60-frame evaluation clips in fewer frames",
    )
    ap.add_argument(
        "--clip-backmost", type=float, default=0.0, metavar="SHARE",
        help="share of clips whose target is the backmost object big enough to prompt (the evaluation's "
        "rule for its target, with a lower floor; the others pass in front of it); the other clips' targets "
        "are drawn at random",
    )
    ap.add_argument(
        "--other-object-weight", type=float, default=1.0, metavar="W",
        help="weight of the mask BCE on the pixels of objects other than the target (1: every pixel alike); "
        "above 1 it presses on masks that spill onto the objects next to or in front of the target",
    )
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--device", default="cpu",
        help="torch device to train on (cuda, cuda:1, ...); scenes and prompts are made on the CPU either way, "
        "so the run draws the same scenes and prompts, though a GPU's arithmetic differs in the last bits",
    )
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--out", type=Path, default=WEIGHTS)
    ap.add_argument(
        "--config", type=Path, default=CONFIG,
        help="the model's config (official YAML); with --init, its trunk may have more blocks per stage "
        "than --init's weights, and the added blocks start as the identity",
    )
    ap.add_argument(
        "--init", type=Path, default=None,
        help="start from these weights (a released safetensors) instead of from scratch: a further run of "
        "training, with its own seed, warm-up and schedule, and a fresh optimiser",
    )
    ap.add_argument("--checkpoint", type=Path, default=None, help="resume from (and keep writing) this f32 state")
    ap.add_argument("--max-steps", type=int, default=None, help="stop after this many steps of the schedule")
    ap.add_argument("--export-only", action="store_true", help="write --out from --checkpoint and stop")
    ap.add_argument("--train", nargs="+", metavar="PREFIX", default=[""],
                    help="train only the parameters whose names start with one of these (the others keep the "
                    "values they start from, e.g. --init's); default: all")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    model = build_model(config=args.config).to(args.device)
    init_prompt_attention(model)
    iou_logits(model)
    no_dropout(model)
    if args.init is not None:
        weights = {k: v.to(args.device, torch.float32) for k, v in load_file(str(args.init)).items()}
        model.load_state_dict(grown_state(model, weights))
        print(f"initialised from {args.init}")
    model.train()
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith(tuple(args.train)))
    params = [p for p in model.parameters() if p.requires_grad]
    print(f"parameters: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M, "
          f"{sum(p.numel() for p in params) / 1e6:.3f} M trained")
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.05)
    total = args.image_steps + args.clip_steps
    warmup = args.warmup

    def lr_at(step):
        if step < warmup:
            return args.lr * (step + 1) / warmup
        return args.lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))

    start_step, counter = 0, 0
    if args.checkpoint is not None and args.checkpoint.exists():
        state = torch.load(args.checkpoint, map_location=args.device)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start_step, counter = state["step"], state["counter"]
        rng.setstate(state["rng"])
        torch.set_rng_state(state["torch_rng"])
        print(f"resumed at step {start_step}")
    if args.export_only:
        export(model, args.out)
        return

    began, window = time.time(), []
    for step in range(start_step, min(total, args.max_steps or total)):
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        clip = step >= args.image_steps and rng.random() < args.clip_share
        size = args.clip_batch if clip else args.image_batch
        batch = [scenes.random_scene(scene_seed(args.seed, counter + i), still=not clip) for i in range(size)]
        counter += size
        if clip:
            loss = clip_step(
                model, batch, rng, args.clip_frames, tuple(args.clip_strides), args.clip_backmost, args.other_object_weight
            )
        else:
            loss = image_step(model, batch, rng, args.objects_per_image, args.corrections, args.other_object_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        window.append(loss.item())
        if (step + 1) % args.log_every == 0:
            ious = " ".join(f"{k} {sum(v) / len(v):.3f}" for k, v in PROGRESS.items() if v)
            print(
                f"step {step + 1}/{total} {'clip' if step >= args.image_steps else 'image'} "
                f"loss {sum(window) / len(window):.3f} IoU {ious} lr {lr_at(step):.2e} {time.time() - began:.0f} s",
                flush=True,
            )
            window = []
            for values in PROGRESS.values():
                values.clear()
        if args.checkpoint is not None and (step + 1) % 250 == 0:
            torch.save(
                {"model": model.state_dict(), "opt": opt.state_dict(), "step": step + 1, "counter": counter,
                 "rng": rng.getstate(), "torch_rng": torch.get_rng_state()},
                args.checkpoint,
            )
    export(model, args.out)
    print(f"trained in {time.time() - began:.0f} s; weights: {args.out}")


def export(model, out: Path) -> None:
    """The state dict under the official checkpoint's key names, in f16."""
    tensors = {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(out), metadata={"format": "pt", "model": "sam2refiner nano (SAM 2.1 architecture)"})


if __name__ == "__main__":
    main()
