#!/usr/bin/env python3
"""Record the official SAM 2 running the released nano weights, for `tests/model_parity_nano.rs`.

The parity fixtures of `tests/reference/` prove the engine on random weights; this one proves the model we
ship: a held-out scene and clip (seeds past the evaluation set's), the official `SAM2ImagePredictor` on one
click and on a box, and the official `SAM2VideoPredictor` tracking one click over the clip. Writes
`tests/fixtures/nano/`: `image.png`, `frames/NNNN.png`, `prompts.json` and `expected.safetensors`.

    /opt/sam2-reference/bin/python models/nano/make_fixture.py
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
from sam2.sam2_image_predictor import SAM2ImagePredictor

import scenes
from common import WEIGHTS, bounding_box, build_model, interior_point
from evaluate import VIDEO_OVERRIDES, load, to_uint8, video_state

OUT = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "nano"
SEED = 2_000_000  # the scene the fixture was recorded on (once written 2**50 + 2_000_000, the same seed to torch)
# As many frames as the pointer window (`max_obj_ptrs_in_encoder`, 16): the official predictor normalises
# pointer distances by min(num_frames, 16) - 1, our streaming tracker by 15 (a stream has no end), so a
# shorter clip would give the two different pointer encodings (with these weights, 1e-4 by frame 3).
FRAMES = 16


def first_scene_with_objects(seed: int):
    while True:
        scene = scenes.random_scene(seed)
        _, masks = scene.render(0)
        if len(masks) >= 2 and all(m.sum() >= 300 for m in masks[:2]):
            return scene
        seed += 1


@torch.inference_mode()
def main() -> None:
    torch.set_num_threads(1)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "frames").mkdir(exist_ok=True)
    scene = first_scene_with_objects(SEED)
    rendered = [scene.render(t) for t in range(FRAMES)]
    pixels = [to_uint8(image) for image, _ in rendered]
    Image.fromarray(pixels[0]).save(OUT / "image.png")
    for t, p in enumerate(pixels):
        Image.fromarray(p).save(OUT / "frames" / f"{t:04}.png")
    masks = rendered[0][1]
    click = interior_point(masks[0])
    box = bounding_box(masks[1])
    prompts = [
        {"frame": 0, "object": 1, "points": [list(click)], "labels": [1]},
        {"frame": 0, "object": 2, "points": [], "labels": [], "box": list(box)},
    ]
    (OUT / "prompts.json").write_text(json.dumps({"prompts": prompts}, indent=1) + "\n")

    expected = {}
    model = load(build_model(), WEIGHTS)
    predictor = SAM2ImagePredictor(model)
    predictor._bb_feat_sizes = [(model.image_size // s,) * 2 for s in (4, 8, 16)]  # hard-coded for 1024
    predictor.set_image(np.array(Image.open(OUT / "image.png").convert("RGB")))
    for obj, kwargs, multimask in (
        (1, {"point_coords": np.array([click], np.float32), "point_labels": np.array([1])}, True),
        (2, {"box": np.array(box, np.float32)}, False),
    ):
        masks_out, ious, _ = predictor.predict(**kwargs, multimask_output=multimask, return_logits=True)
        expected[f"image/obj{obj}/masks"] = torch.from_numpy(masks_out).float()
        expected[f"image/obj{obj}/iou"] = torch.from_numpy(ious).float()

    video = load(build_model(VIDEO_OVERRIDES), WEIGHTS)
    frames = torch.stack([torch.from_numpy(p).permute(2, 0, 1).float() / 255 for p in pixels])
    state = video_state(video, frames)
    video.add_new_points_or_box(state, 0, 1, points=np.array([click], np.float32), labels=np.array([1]))
    for t, _, logits in video.propagate_in_video(state):
        expected[f"frame{t}/obj1"] = logits[0, 0].float().clone()
    save_file({k: v.contiguous() for k, v in expected.items()}, str(OUT / "expected.safetensors"))
    print(f"wrote {OUT}: {len(expected)} tensors")


if __name__ == "__main__":
    main()
