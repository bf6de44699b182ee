#!/usr/bin/env python3
"""Record the refiner's image path in PyTorch, for `tests/model_parity_refiner.rs`.

The base is the released nano model; the refiner has random weights with every gate and every zero-started
layer made non-zero, so each path (LA at each level, PR on clicks, boxes and mask prompts, both MR steps)
changes the output (the guided filter's gate at 0.6, so SAM 2's share and the filter's both count): trained
weights would do, but a refiner trained to a near-zero gate would let a broken path pass. The frame is a held-out nano scene resized to 240×336, so the quadrant crops (120×168) are not
the input size and the frame is not square. Writes `tests/fixtures/refiner/`: `frame.png`,
`refiner.safetensors`, `cases.json` and `expected.safetensors`.

The video path: the official video predictor with the refiner in its SAM heads (`video_path.py`), one click
on frame 0 of a moving fine-structure clip at 192×256, tracked over frames 1 to 3, in each mode and with
either mask fed to the memory: `video/NNNN.png` and `video.safetensors`. One more video case
(`two_clicks/`) adds a negative click 12 pixels right of the positive one: there the prompt's clicks,
pinned in the guided filter's input, change the prompted frame and, through its memory, the next ones (the
one interior click alone changes the output by less than the tolerance). Image cases record the click guard's
decisions (`kept_mask_prompt`) beside the masks: one correction it lets through, two it refuses. Image and video cases are also
recorded with the crops' readers silenced (`filter_only/`: LA's gates and the MR cascade zeroed, PR and the
guided filter live), the path where the engine skips the crops' encoder passes. The clip is declared 16 frames
long (only the first 4 are run): the official predictor normalises pointer distances by
min(num_frames, 16) - 1, our streaming tracker by 15 (see `models/nano/make_fixture.py`).

    /opt/sam2-reference/bin/python models/refiner/make_fixture.py
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file

HERE = Path(__file__).resolve().parent
sys.path.append(str(HERE.parent / "nano"))  # after this folder: both have a train.py and an evaluate.py

import scenes  # noqa: E402
import fine_scenes  # noqa: E402
from common import WEIGHTS, bounding_box, build_model, interior_point, nano_evaluate, to_uint8  # noqa: E402
from image_path import RefinedImagePredictor  # noqa: E402
from refiner import Refiner, save_refiner  # noqa: E402
from video_path import RefinedVideoPredictor  # noqa: E402

NANO_EVALUATE = nano_evaluate()
VIDEO_OVERRIDES, load = NANO_EVALUATE.VIDEO_OVERRIDES, NANO_EVALUATE.load
OUT = HERE.parents[1] / "tests" / "fixtures" / "refiner"
SEED = 3_000_000  # the scene the fixtures were recorded on (once written 2**50 + 3_000_000, the same seed to torch)
FRAME_HW = (240, 336)
VIDEO_HW = (192, 256)
VIDEO_RUN, VIDEO_DECLARED = 4, 16
VIDEO_CASES = (("quadrants", "refined", False), ("roi", "refined", False), ("quadrants", "sam2", False),
               ("roi", "refined", True))  # (mode, memory mask, crop readers silenced)


def active_refiner(seed: int) -> Refiner:
    """Random weights where nothing is silent: gates, window biases, norms and the zero-started MR
    layers drawn at a scale where each changes the output."""
    torch.manual_seed(seed)
    refiner = Refiner()
    with torch.no_grad():
        for name, p in refiner.named_parameters():
            if name == "mask_refinement.guided_gate":
                p.fill_(0.6)  # both SAM 2's share and the guided filter's count
            elif name.endswith("gate"):
                p.copy_(0.5 * torch.randn_like(p))
            elif name.endswith("position_bias"):
                p.copy_(torch.randn_like(p))
            elif "norm" in name:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * torch.randn_like(p))
            elif name.startswith("mask_refinement.delta"):
                p.copy_(0.2 * torch.randn_like(p))
    return refiner.eval()


CROP_READERS = ("localization_augment.levels.0.gate", "localization_augment.levels.1.gate",
                "localization_augment.levels.2.gate", "mask_refinement.delta_s")


def crops_silenced(refiner: Refiner) -> Refiner:
    """A copy of `refiner` with every part that reads the crops' features zeroed (LA's gates, the MR
    cascade's output layers): PR and the guided filter stay live."""
    silenced = Refiner()
    silenced.load_state_dict(refiner.state_dict())
    with torch.no_grad():
        for name, p in silenced.named_parameters():
            if any(pattern in name for pattern in CROP_READERS):
                p.zero_()
    return silenced.eval()


def frame_and_masks():
    seed = SEED
    while True:
        image, masks = scenes.random_scene(seed, still=True).render(0)
        if len(masks) >= 2 and all(m.sum() >= 300 for m in masks[:2]):
            break
        seed += 1
    frame = F.interpolate(image[None], size=FRAME_HW, mode="bilinear", align_corners=False, antialias=True)[0]
    frame = to_uint8(frame)
    big = F.interpolate(masks[:2, None].float(), size=FRAME_HW, mode="nearest")[:, 0] > 0.5
    return np.ascontiguousarray(frame), big


def record_image_cases(model, refiner: Refiner, frame: np.ndarray, cases: list[dict], prefix: str) -> dict:
    """Each case's masks and IoUs from the image path with `refiner`, keyed `{prefix}{name}/masks` and
    `/iou`; sets each case's `multimask` as the engine decides it."""
    predictors, expected, low_res = {}, {}, {}
    for case in cases:
        mode = case["mode"]
        if mode not in predictors:
            predictors[mode] = RefinedImagePredictor(model, refiner, mode)
            predictors[mode].set_image(frame)
        mask_input = None
        if "mask_from" in case:
            prev = low_res[case["mask_from"]]
            mask_input = prev[int(torch.argmax(expected[f"{prefix}{case['mask_from']}/iou"]))][None]
        elif "mask_fill" in case:
            side = model.image_size // 4
            mask_input = torch.full((1, side, side), float(case["mask_fill"]))
        # As the engine: one click alone is ambiguous (three candidates), anything else one mask.
        case["multimask"] = len(case.get("points", [])) == 1 and "box" not in case and mask_input is None
        masks_out, iou, low = predictors[mode].predict(
            case.get("points"), case.get("labels"), case.get("box"), mask_input, case["multimask"]
        )
        expected[f"{prefix}{case['name']}/masks"] = masks_out.float()
        expected[f"{prefix}{case['name']}/iou"] = iou.float()
        expected[f"{prefix}{case['name']}/kept_mask_prompt"] = torch.tensor(predictors[mode].kept_mask_prompt, dtype=torch.uint8)
        low_res[case["name"]] = low
    return expected


@torch.inference_mode()
def main() -> None:
    torch.set_num_threads(1)
    OUT.mkdir(parents=True, exist_ok=True)
    frame, masks = frame_and_masks()
    Image.fromarray(frame).save(OUT / "frame.png")
    frame = np.array(Image.open(OUT / "frame.png").convert("RGB"))

    state = {k: v.float() for k, v in load_file(str(WEIGHTS)).items()}
    model = build_model()
    model.load_state_dict(state, strict=True)
    model.eval()
    refiner = active_refiner(0)
    save_refiner(refiner, OUT / "refiner.safetensors", "sam2.1_nano", state, purpose="parity fixture: random weights")

    click = list(interior_point(masks[0]))
    box = list(bounding_box(masks[1]))
    other = list(interior_point(masks[1]))
    cases = [
        {"name": "quadrants_click", "mode": "quadrants", "points": [click], "labels": [1]},
        {"name": "quadrants_box", "mode": "quadrants", "box": box},
        {"name": "quadrants_clicks_and_box", "mode": "quadrants", "points": [other, click], "labels": [1, 0], "box": box},
        {"name": "quadrants_click_and_mask", "mode": "quadrants", "points": [click], "labels": [1], "mask_from": "quadrants_click"},
        # A correction the click guard lets through, and one it refuses: a mask prompt that is
        # foreground everywhere honours clicks on the background that the decoder's mask does not.
        {"name": "quadrants_correction", "mode": "quadrants", "points": [click, [click[0] + 6, click[1]]], "labels": [1, 0],
         "mask_from": "quadrants_click"},
        {"name": "quadrants_guard_keeps", "mode": "quadrants", "points": [click, other, [5.0, 5.0]], "labels": [1, 1, 1],
         "mask_fill": 5.0},
        {"name": "roi_box", "mode": "roi", "box": box},
        {"name": "roi_click", "mode": "roi", "points": [click], "labels": [1]},
        {"name": "roi_guard_keeps", "mode": "roi", "points": [click, other, [5.0, 5.0]], "labels": [1, 1, 1], "mask_fill": 5.0},
        {"name": "off_click", "mode": "off", "points": [click], "labels": [1]},
    ]
    expected = record_image_cases(model, refiner, frame, cases, "")
    # The same cases with only the guided filter and PR live (what a refiner that reads no crops
    # computes: the engine then skips the crops' encoder passes).
    refined_cases = [case for case in cases if case["mode"] != "off"]
    expected |= record_image_cases(model, crops_silenced(refiner), frame, refined_cases, "filter_only/")
    (OUT / "cases.json").write_text(json.dumps({"cases": cases}, indent=1) + "\n")
    save_file({k: v.contiguous() for k, v in expected.items()}, str(OUT / "expected.safetensors"))
    print(f"wrote {OUT}: {len(cases)} cases")
    record_video(refiner)


def video_frames() -> tuple[list[np.ndarray], torch.Tensor]:
    """A moving fine-structure clip at VIDEO_HW (uint8 HWC) and the first frame's target mask."""
    seed = SEED
    while True:
        scene = fine_scenes.random_fine_scene(seed, size=512)
        image, alpha = scene.render(0.0)
        big = [k for k in range(len(alpha)) if (alpha[k] > 0.5).sum() >= 4000]
        if big:
            break
        seed += 1
    frames = []
    for t in range(VIDEO_DECLARED):
        image, _ = scene.render(float(t))
        small = F.interpolate(image[None], size=VIDEO_HW, mode="bilinear", align_corners=False, antialias=True)[0]
        frames.append(np.ascontiguousarray(to_uint8(small)))
    target = F.interpolate(alpha[big[0]][None, None], size=VIDEO_HW, mode="bilinear", antialias=True)[0, 0] > 0.5
    return frames, target


@torch.inference_mode()
def record_video(refiner: Refiner) -> None:
    (OUT / "video").mkdir(exist_ok=True)
    frames, target = video_frames()
    for t in range(VIDEO_RUN):
        Image.fromarray(frames[t]).save(OUT / "video" / f"{t:04}.png")
    click = list(interior_point(target))
    negative = [click[0] + 12, click[1]]

    def track(refiner: Refiner, mode: str, memory: str, points: list, labels: list) -> list[torch.Tensor]:
        predictor = load(build_model(VIDEO_OVERRIDES), WEIGHTS)
        video = RefinedVideoPredictor(predictor, refiner, mode, memory)
        video.frames = frames
        with tempfile.TemporaryDirectory() as d:
            for t in range(VIDEO_DECLARED):
                Image.new("RGB", (8, 8)).save(Path(d, f"{t:05}.jpg"))
            state = predictor.init_state(d)
        # The engine's streaming input (bilinear, antialiased), not the official loader's PIL resize.
        state["images"] = torch.stack([video.transform(f) for f in frames])
        state["video_height"], state["video_width"] = VIDEO_HW
        state["cached_features"] = {}
        predictor.add_new_points_or_box(state, 0, 1, points=np.array(points, np.float32), labels=np.array(labels))
        logits = []
        for t, _, _ in predictor.propagate_in_video(state):
            logits.append(video.frame_logits(t, 0)[0, 0].float().clone())
            if t == VIDEO_RUN - 1:
                break
        return logits

    expected = {}
    for mode, memory, silenced in VIDEO_CASES:
        prefix = "filter_only/" if silenced else ""
        for t, logits in enumerate(track(crops_silenced(refiner) if silenced else refiner, mode, memory, [click], [1])):
            expected[f"{prefix}{mode}/{memory}/frame{t}"] = logits
    for t, logits in enumerate(track(refiner, "roi", "refined", [click, negative], [1, 0])):
        expected[f"two_clicks/roi/refined/frame{t}"] = logits
    meta = {"click": click, "negative_click": negative, "frames": VIDEO_RUN}
    (OUT / "video.json").write_text(json.dumps(meta) + "\n")
    save_file({k: v.contiguous() for k, v in expected.items()}, str(OUT / "video.safetensors"))
    print(f"wrote the video cases: {len(expected)} tensors")


if __name__ == "__main__":
    main()
