#!/usr/bin/env python3
"""Evaluate a refiner against its base on the held-out fine-structure set, and print the model card's table.

The set is fixed by `EVAL_SEED_BASE` (never drawn in training): `--images` still scenes rendered at twice
the model's input size, every object of at least `MIN_PIXELS` visible pixels (coverage above one half)
prompted alone. Each object is prompted three ways, by the base alone (`off`) and with the refiner in
each mode:

- one click at its deepest pixel (three candidates, the best by predicted IoU kept);
- its exact box;
- a click session of 1 to 10 clicks: each next click at the deepest pixel of the larger error of the
  current mask (positive on a miss, negative on a false positive), with the previous low-resolution
  logits as the mask prompt, as the element and the CLI feed corrections.

and on `--clips` moving clips of `--frames` frames, the largest object clicked once at its deepest pixel on
frame 0 and tracked (the official video predictor, with the refiner in its SAM heads for the refined modes;
frames brought to the input as the element does, bilinear; `--memory-mask` chooses what the memory encoder is
fed in the refined modes).

Scores at the frame's resolution against the truth (coverage above one half): IoU, and boundary IoU as
the HQ-SAM evaluation computes it (Cheng et al. 2021: the pixels of each mask within 2 % of the image
diagonal of its outside, the image border counting as outside). Figures are means over objects, in
percent, as the papers print them.

    /opt/sam2-reference/bin/python models/refiner/evaluate.py [--refiner models/refiner/sam2.1_nano.refiner.safetensors]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.append(str(HERE.parent / "nano"))  # after this folder: both have a train.py and an evaluate.py

import fine_scenes  # noqa: E402
from common import CONFIG, WEIGHTS, bounding_box, interior_point, nano_evaluate, to_uint8  # noqa: E402
from image_path import MODES, RefinedImagePredictor  # noqa: E402
from PIL import Image  # noqa: E402
from refiner import load_refiner  # noqa: E402
from video_path import MEMORY_MASKS, RefinedVideoPredictor, frame_input  # noqa: E402
from train import OUT, load_base  # noqa: E402

EVAL_SEED_BASE = 2**31 + 2**30  # held out: training scene seeds stay below 2**31 (`common.scene_seed`)
MIN_PIXELS = 400  # at the frame's resolution (100 at the nano model's input)
BOUNDARY_RATIO = 0.02  # HQ-SAM's `dilation_ratio`
CLICKS = 10


def boundary(mask: torch.Tensor) -> torch.Tensor:
    """The pixels of `mask` [H, W] within d of its outside, d = 2 % of the diagonal (at least 1), the
    image border counting as outside: `mask_to_boundary` of the boundary-IoU code."""
    h, w = mask.shape
    d = max(1, int(round(BOUNDARY_RATIO * float(np.hypot(h, w)))))
    padded = F.pad(mask.float()[None, None], (d, d, d, d), value=0.0)
    side = 2 * d + 1
    eroded = -F.max_pool2d(F.max_pool2d(-padded, (side, 1), 1), (1, side), 1)
    return mask & ~(eroded[0, 0] > 0)


def iou(a: torch.Tensor, b: torch.Tensor) -> float:
    union = (a | b).sum().item()
    return 1.0 if union == 0 else (a & b).sum().item() / union


def scores(pred: torch.Tensor, gt: torch.Tensor) -> tuple[float, float]:
    return iou(pred, gt), iou(boundary(pred), boundary(gt))


def next_click(pred: torch.Tensor, gt: torch.Tensor):
    """The deepest pixel of the larger error: ((x, y), label), or None when the mask is exact."""
    missed, false = gt & ~pred, pred & ~gt
    if missed.sum() == 0 and false.sum() == 0:
        return None
    error, label = (missed, 1) if missed.sum() >= false.sum() else (false, 0)
    return interior_point(error), label


def session(predictor, gt: torch.Tensor) -> list[tuple[float, float]]:
    """(IoU, boundary IoU) after each of 1..CLICKS clicks."""
    x, y = interior_point(gt)
    points, labels = [[x, y]], [1]
    masks, ious, low = predictor.predict(points, labels, None, None, True)
    best = int(torch.argmax(ious))
    pred, prev = masks[best] > 0, low[best][None]
    out = [scores(pred, gt)]
    for _ in range(CLICKS - 1):
        click = next_click(pred, gt)
        if click is not None:
            points.append(list(click[0]))
            labels.append(click[1])
            masks, _, low = predictor.predict(points, labels, None, prev.numpy(), False)
            pred, prev = masks[0] > 0, low[0][None]
        out.append(scores(pred, gt))
    return out


@torch.inference_mode()
def evaluate(model, refiner, modes: list[str], images: int, frame_size: int, pin_clicks=True, click_guard=True) -> dict:
    """{mode: {"click": [(iou, biou)], "box": [...], "session": [[(iou, biou)] * CLICKS]}}."""
    results = {mode: {"click": [], "box": [], "session": []} for mode in modes}
    predictors = {mode: RefinedImagePredictor(model, None if mode == "off" else refiner, mode) for mode in modes}
    for predictor in predictors.values():
        predictor.pin_clicks, predictor.click_guard = pin_clicks, click_guard
    for i in range(images):
        image, alpha = fine_scenes.random_fine_scene(EVAL_SEED_BASE + i, size=frame_size, still=True).render(0.0)
        frame = to_uint8(image)
        objects = [a > 0.5 for a in alpha if (a > 0.5).sum() >= MIN_PIXELS]
        for mode, predictor in predictors.items():
            predictor.set_image(frame)
            for gt in objects:
                x, y = interior_point(gt)
                masks, ious, _ = predictor.predict([[x, y]], [1], None, None, True)
                results[mode]["click"].append(scores(masks[int(torch.argmax(ious))] > 0, gt))
                box = [float(v) for v in bounding_box(gt)]
                masks, _, _ = predictor.predict(None, None, box, None, False)
                results[mode]["box"].append(scores(masks[0] > 0, gt))
                results[mode]["session"].append(session(predictor, gt))
    return results


@torch.inference_mode()
def evaluate_video(refiner, modes: list[str], clips: int, frames: int, frame_size: int, memory_mask: str = "sam2",
                   pin_clicks: bool = True) -> dict:
    """{mode: [per clip (mean IoU, mean boundary IoU) over its frames]}."""
    nano = nano_evaluate()
    results = {mode: [] for mode in modes}
    seed = EVAL_SEED_BASE + 1_000_000
    while len(results[modes[0]]) < clips:
        scene = fine_scenes.random_fine_scene(seed, size=frame_size)
        seed += 1
        rendered = [scene.render(float(t)) for t in range(frames)]
        first = rendered[0][1]
        sizes = [(a > 0.5).sum().item() for a in first]
        if not sizes or max(sizes) < MIN_PIXELS:
            continue
        target = int(np.argmax(sizes))
        pixels = [np.ascontiguousarray(to_uint8(im)) for im, _ in rendered]
        x, y = interior_point(first[target] > 0.5)
        for mode in modes:
            predictor = nano.load(nano.build_model(nano.VIDEO_OVERRIDES), WEIGHTS)
            video = None if mode == "off" else RefinedVideoPredictor(predictor, refiner, mode, memory_mask, pin_clicks)
            if video is not None:
                video.frames = pixels
            with tempfile.TemporaryDirectory() as d:
                for t in range(frames):
                    Image.new("RGB", (8, 8)).save(Path(d, f"{t:05}.jpg"))
                state = predictor.init_state(d)
            state["images"] = torch.stack([frame_input(f, predictor.image_size) for f in pixels])
            state["video_height"] = state["video_width"] = frame_size
            state["cached_features"] = {}
            predictor.add_new_points_or_box(state, 0, 1, points=np.array([[x, y]], np.float32), labels=np.array([1]))
            per_frame = []
            for t, _, logits in predictor.propagate_in_video(state):
                if video is not None:
                    logits = video.frame_logits(t, 0)
                per_frame.append(scores(logits[0, 0] > 0, rendered[t][1][target] > 0.5))
            results[mode].append((float(np.mean([p[0] for p in per_frame])), float(np.mean([p[1] for p in per_frame]))))
    return results


def mean(pairs, k: int) -> float:
    return 100 * float(np.mean([p[k] for p in pairs]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--refiner", type=Path, default=OUT)
    ap.add_argument("--images", type=int, default=30)
    ap.add_argument("--clips", type=int, default=10)
    ap.add_argument("--frames", type=int, default=30)
    ap.add_argument("--modes", nargs="*", default=list(MODES), choices=MODES)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--memory-mask", choices=MEMORY_MASKS, default="sam2",
                    help="video: what the memory encoder is fed, the refined mask or SAM 2's own")
    ap.add_argument("--no-pin-clicks", action="store_true",
                    help="refined modes: the guided filter sees the decoder's mask alone, on images and on the "
                    "clip's prompted frame (for comparison)")
    ap.add_argument("--no-click-guard", action="store_true",
                    help="refined modes: corrections are never refused (for comparison)")
    ap.add_argument("--sessions-out", type=Path,
                    help="save each mode's click sessions, [objects, clicks, (IoU, boundary IoU)], to this .npz")
    ap.add_argument("--base-config", type=Path, default=CONFIG)
    ap.add_argument("--base-weights", type=Path, default=WEIGHTS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    began = time.time()
    model, _ = load_base(args.base_config, args.base_weights, "cpu")
    refiner = load_refiner(args.refiner)
    # A refiner that reads no crops takes the same path in both modes (neither encodes a crop, and nothing
    # else differs): quadrants is then not run again but reported as roi.
    shared = "quadrants" in args.modes and "roi" in args.modes and not refiner.reads_crops()
    run = [m for m in args.modes if not (shared and m == "quadrants")]
    results = evaluate(model, refiner, run, args.images, 2 * model.image_size, not args.no_pin_clicks, not args.no_click_guard)
    video = evaluate_video(refiner, run, args.clips, args.frames, 2 * model.image_size, args.memory_mask,
                           not args.no_pin_clicks) if args.clips else None
    if args.sessions_out:
        np.savez(args.sessions_out, **{m: np.array(results[m]["session"]) for m in run})
    if shared:
        print("this refiner reads no crops: quadrants takes roi's path, so its columns are roi's")
        results["quadrants"] = results["roi"]
        if video:
            video["quadrants"] = video["roi"]
    objects = len(results[args.modes[0]]["click"])
    print(f"held-out fine-structure set: {args.images} images ({objects} objects) at "
          f"{2 * model.image_size} px; {time.time() - began:.0f} s")
    print("| prompt | " + " | ".join(f"{m} mIoU | {m} mBIoU" for m in args.modes) + " |")
    print("|---|" + "---|---|" * len(args.modes))
    for prompt in ("click", "box") if objects else ():
        cells = " | ".join(f"{mean(results[m][prompt], 0):.1f} | {mean(results[m][prompt], 1):.1f}" for m in args.modes)
        print(f"| {'one click' if prompt == 'click' else 'box'} | {cells} |")
    for k in range(CLICKS if objects else 0):
        cells = " | ".join(
            f"{mean([s[k] for s in results[m]['session']], 0):.1f} | {mean([s[k] for s in results[m]['session']], 1):.1f}"
            for m in args.modes
        )
        print(f"| {k + 1} click{'s' if k else ''} (session) | {cells} |")
    if video:
        cells = " | ".join(f"{mean(video[m], 0):.1f} | {mean(video[m], 1):.1f}" for m in args.modes)
        print(f"| video: {args.clips} clips × {args.frames} frames, one click on frame 0 | {cells} |")


if __name__ == "__main__":
    main()
