#!/usr/bin/env python3
"""The README's before/after still of the refiner: the engine's CLI (`sam2refiner image`) on a held-out
fine-structure scene, without and with the refiner, side by side.

The objects are the first `ROWS` fine-structure objects (hair, leaf, lace, mesh, jagged) of at least 4000
pixels in the evaluation scenes (seeds from `evaluate.EVAL_SEED_BASE`), in order, whatever their result:
one row each, prompted with its box. Panels: the frame, then cut-outs over a grey checkerboard by the true
mask, by SAM 2 alone (nano) and by nano with the refiner; the IoU and boundary IoU of each are printed.

    /opt/sam2-reference/bin/python models/refiner/still.py --cli target/release/sam2refiner
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

HERE = Path(__file__).resolve().parent
sys.path.append(str(HERE.parent / "nano"))  # after this folder: both have an evaluate.py

import fine_scenes  # noqa: E402
from common import bounding_box, to_uint8  # noqa: E402
from evaluate import EVAL_SEED_BASE, scores  # noqa: E402
from train import OUT  # noqa: E402

KINDS = ("hair", "leaf", "lace", "mesh", "jagged")
ROWS = 3
MIN_PIXELS = 4000
SIZE = 512
PANEL = 256  # pixels per panel side in the still


def objects():
    """(scene index, kind, frame, truth) of the first ROWS qualifying objects."""
    found = []
    for i in range(1000):
        scene = fine_scenes.random_fine_scene(EVAL_SEED_BASE + i, size=SIZE, still=True)
        image, alpha = scene.render(0.0)
        for kind, a in zip(scene.kinds, alpha):
            if kind in KINDS and (a > 0.5).sum() >= MIN_PIXELS:
                found.append((i, kind, to_uint8(image), a > 0.5))
                if len(found) == ROWS:
                    return found
    raise SystemExit("not enough such objects")


def segment(cli: Path, frame: Path, prompts: Path, refiner: Path | None) -> torch.Tensor:
    with tempfile.TemporaryDirectory() as d:
        out = Path(d, "masks.safetensors")
        extra = ["--refiner", str(refiner), "--refine-mode", "quadrants"] if refiner else []
        subprocess.run([str(cli), "image", "--image", str(frame), "--prompts", str(prompts), "--out", str(out), *extra], check=True)
        return load_file(str(out))["image/obj1"] > 0


def panel(frame: np.ndarray, mask: torch.Tensor | None, crop) -> Image.Image:
    """The frame's crop, or its cut-out by `mask` over a grey checkerboard (what a key shows)."""
    y0, y1, x0, x1 = crop
    out = frame[y0:y1, x0:x1].astype(np.float32)
    if mask is not None:
        ys, xs = np.mgrid[y0:y1, x0:x1]
        board = np.where(((ys // 8 + xs // 8) % 2)[..., None] == 0, 96.0, 160.0)
        m = mask.numpy()[y0:y1, x0:x1, None]
        out = np.where(m, out, board)
    return Image.fromarray(out.astype(np.uint8))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cli", type=Path, default=Path("target/release/sam2refiner"))
    ap.add_argument("--refiner", type=Path, default=OUT)
    ap.add_argument("--out", type=Path, default=HERE.parents[1] / "examples" / "refiner-still.png")
    args = ap.parse_args()
    rows = []
    for index, kind, frame, truth in objects():
        x0, y0, x1, y1 = bounding_box(truth)
        side = max(x1 - x0, y1 - y0) + 32  # a square crop around the object
        cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
        top, left = min(max(0, cy - side // 2), SIZE - side), min(max(0, cx - side // 2), SIZE - side)
        crop = (max(0, top), max(0, top) + min(side, SIZE), max(0, left), max(0, left) + min(side, SIZE))
        with tempfile.TemporaryDirectory() as d:
            frame_png, prompts = Path(d, "frame.png"), Path(d, "prompts.json")
            Image.fromarray(frame).save(frame_png)
            box = [float(x0), float(y0), float(x1), float(y1)]
            prompts.write_text(json.dumps({"prompts": [{"frame": 0, "object": 1, "points": [], "labels": [], "box": box}]}))
            plain = segment(args.cli, frame_png, prompts, None)
            refined = segment(args.cli, frame_png, prompts, args.refiner)
        panels = [panel(frame, m, crop) for m in (None, truth, plain, refined)]
        rows.append([p.resize((PANEL, PANEL), Image.BILINEAR) for p in panels])
        figures = "; ".join(f"{name} IoU {100 * iou:.1f}, boundary IoU {100 * biou:.1f}" for name, (iou, biou) in
                            (("SAM 2 alone", scores(plain, truth)), ("refined", scores(refined, truth))))
        print(f"scene {index}, a {kind} object, box prompt: {figures}")
    gap = 8
    still = Image.new("RGB", (4 * PANEL + 3 * gap, len(rows) * PANEL + (len(rows) - 1) * gap), "white")
    for r, panels in enumerate(rows):
        for c, p in enumerate(panels):
            still.paste(p, (c * (PANEL + gap), r * (PANEL + gap)))
    still.save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
