"""What training and evaluation share: the model from its config, frame normalisation, prompts drawn from a mask."""

from __future__ import annotations

import importlib.util
import random
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf

from scenes import SEED_SPACE  # noqa: F401 (re-exported: the seed rule below is stated against it)

HERE = Path(__file__).resolve().parent
CONFIG = HERE / "config.yaml"
WEIGHTS = HERE / "sam2.1_nano.safetensors"

IMG_MEAN = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
IMG_STD = torch.tensor([0.229, 0.224, 0.225])[:, None, None]

# Scene seeds. `scenes.Rand` seeds torch's CPU generator, which keeps only the low 32 bits of a seed, so
# every scene seed lies in [0, SEED_SPACE) (`Rand` refuses others). Training draws below 2**31 (`scene_seed`);
# the held-out sets lie above: nano's images from `EVAL_SEED_BASE` and its clips from there + 1_000_000,
# the refiner's from 2**31 + 2**30 (`models/refiner/evaluate.py`). The bases were once 2**50 and 2**51,
# which the generator reduced to 0: those "held-out" sets were the first training draws (found and
# fixed 2026-12-03; the model cards' figures are on the sets below).
TRAINING_SEEDS = 2**31
SCENES_PER_RUN = 2**24  # training scenes per run seed (`scene_seed`)
EVAL_SEED_BASE = TRAINING_SEEDS
MIN_OBJECT_PIXELS = 150


def build_model(overrides: dict | None = None, config: Path = CONFIG):
    """The official `SAM2Base` (or the class the overrides name) from our config, as `build_sam2` does."""
    cfg = OmegaConf.load(config)
    for key, value in (overrides or {}).items():
        OmegaConf.update(cfg, f"model.{key}", value, force_add=True)
    OmegaConf.resolve(cfg)
    return instantiate(cfg.model, _recursive_=True)


def normalise(images: torch.Tensor) -> torch.Tensor:
    """[..., 3, H, W] in [0, 1] to the model's input, as the official loaders do."""
    return (images - IMG_MEAN.to(images.device)) / IMG_STD.to(images.device)


def interior_point(mask: torch.Tensor) -> tuple[int, int]:
    """The pixel deepest inside `mask` (H, W), found by erosion: where a user would click. Returns (x, y)."""
    current = mask.float()[None, None]
    last = current
    while current.sum() > 0:
        last = current
        current = -F.max_pool2d(-current, 3, 1, 1)
    ys, xs = torch.nonzero(last[0, 0], as_tuple=True)
    # The middle of the deepest set, as the set may be a ridge.
    cy, cx = ys.float().mean(), xs.float().mean()
    k = torch.argmin((ys - cy) ** 2 + (xs - cx) ** 2)
    return int(xs[k]), int(ys[k])


def bounding_box(mask: torch.Tensor) -> tuple[int, int, int, int]:
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


def iou(pred: torch.Tensor, gt: torch.Tensor) -> float:
    """IoU of two boolean masks; 1 when both are empty (an absent object correctly reported absent)."""
    union = (pred | gt).sum().item()
    return 1.0 if union == 0 else (pred & gt).sum().item() / union


# Prompts drawn from a mask, as SAM 2 trains (shared by the nano and refiner trainers)


def square_max(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Max over a (2r+1)² square of [N, C, H, W]: a max over the square is a max over its rows of a max
    over its columns, two 1-D pools that give the same values ten times faster than one 2-D pool."""
    side = 2 * radius + 1
    return F.max_pool2d(F.max_pool2d(x, (side, 1), 1, (radius, 0)), (1, side), 1, (0, radius))


def jittered_box(gt: torch.Tensor, rng: random.Random, ratio: float, cap: float) -> list[float]:
    """A box prompt as SAM 2 trains them: the bounding box of `gt` (H, W), each coordinate moved by
    N(0, ratio × side) clipped to ±cap pixels, kept inside the image."""
    x0, y0, x1, y1 = bounding_box(gt)
    w, h = x1 - x0, y1 - y0

    def j(side):
        return max(-cap, min(cap, rng.gauss(0, ratio * side)))

    box = [x0 + j(w), y0 + j(h), x1 + j(w), y1 + j(h)]
    last = float(gt.shape[-1] - 1)
    return [max(0.0, min(last, c)) for c in box]


def random_pixel(mask: torch.Tensor, rng: random.Random) -> tuple[float, float] | None:
    ys, xs = torch.nonzero(mask, as_tuple=True)
    if len(ys) == 0:
        return None
    k = rng.randrange(len(ys))
    return float(xs[k]), float(ys[k])


def with_negative_clicks(points: list, ring: torch.Tensor, rng: random.Random) -> tuple[list, list]:
    """Positive `points` and up to two negative clicks drawn from `ring` (the background around the
    object): (points, labels)."""
    points, labels = list(points), [1] * len(points)
    for _ in range(rng.randint(0, 2)):
        p = random_pixel(ring, rng)
        if p is not None:
            points.append(p)
            labels.append(0)
    return points, labels


def correction_click(pred: torch.Tensor, gt: torch.Tensor, rng: random.Random) -> tuple[tuple, int] | None:
    """A click where the prediction is wrong: positive on a missed pixel, negative on a false one,
    from whichever error is larger (SAM 2's correction sampling)."""
    missed, false = gt & ~pred, pred & ~gt
    if missed.sum() == 0 and false.sum() == 0:
        return None
    if missed.sum() >= false.sum():
        return random_pixel(missed, rng), 1
    return random_pixel(false, rng), 0


def add_correction_clicks(prompts: list[tuple[list, list]], pred: torch.Tensor, gt: torch.Tensor, rng: random.Random) -> None:
    """Appends to each prompt (points, labels) a click on the larger error of its mask `pred[b]`
    (`correction_click`); a prompt whose mask is exact keeps what it has."""
    for b, (points, labels) in enumerate(prompts):
        click = correction_click(pred[b], gt[b], rng)
        if click is not None:
            prompts[b] = (points + [click[0]], labels + [click[1]])


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """A rendered image [3, H, W] in [0, 1] as a frame arrives: 8-bit RGB, HWC."""
    return (image.permute(1, 2, 0) * 255).round().clamp(0, 255).to(torch.uint8).numpy()


def point_inputs(prompts: list[tuple[list, list]], device: torch.device) -> dict:
    """Batch prompts of unequal length, padded with label -1 (as the official prompt encoder expects), on
    `device`."""
    n = max(len(p) for p, _ in prompts)
    coords = torch.zeros(len(prompts), n, 2)
    labels = torch.full((len(prompts), n), -1, dtype=torch.int32)
    for b, (points, lab) in enumerate(prompts):
        coords[b, : len(points)] = torch.tensor(points)
        labels[b, : len(lab)] = torch.tensor(lab, dtype=torch.int32)
    return {"point_coords": coords.to(device), "point_labels": labels.to(device)}


def scene_seed(run_seed: int, counter: int) -> int:
    """The seed of a run's `counter`-th training scene: each run seed has its own `SCENES_PER_RUN` scenes,
    all below `TRAINING_SEEDS` (run seed 0's are the counters themselves)."""
    runs = TRAINING_SEEDS // SCENES_PER_RUN
    if not (0 <= counter < SCENES_PER_RUN and 0 <= run_seed < runs):
        raise ValueError(f"training scene {counter} of run seed {run_seed}: expected counter < {SCENES_PER_RUN}, "
                         f"run seed < {runs}")
    return run_seed * SCENES_PER_RUN + counter


def nano_evaluate():
    """This folder's `evaluate.py` as a module, for the refiner's scripts, whose own folder has an
    `evaluate.py` that `import evaluate` would find first. Registered in `sys.modules` before it runs, as
    an import would register it: its dataclasses look their module up there."""
    name = "nano_evaluate"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, HERE / "evaluate.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]
