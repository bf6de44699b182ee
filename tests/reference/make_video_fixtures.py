#!/usr/bin/env python3
"""Record video-tracking parity fixtures from the official `SAM2VideoPredictor` (`sam2` 1.1.0).

For every case of `make_fixtures.py` (its weights and config, unchanged) this script

1. draws a synthetic clip of `NUM_FRAMES` frames, smaller than `image_size`, with three moving shapes
   (object 2 leaves the image near the end), and the prompts of three objects;
2. builds the official `SAM2VideoPredictor` from the case's `config.yaml` plus the video builder's
   overrides, and loads the case's weights into it;
3. drives the predictor CAUSALLY, as a streaming tracker would: one inference state per object; the
   object's first prompt, then propagation up to the frame of its next prompt, the correction on that
   (now tracked) frame, and so on, then propagation to the end of the clip;
4. writes `tests/fixtures/<case>/video/`: frames, prompts, the mask prompt, the video config and the
   recorded video-resolution mask logits and object scores of every object on every frame from its
   first prompt on.

It also writes `tests/fixtures/pil_resize/` (once): a synthetic image and what the official frame
loader's PIL resize makes of it.

The formats and the schedule are specified in `README.md` next to this script. Deterministic: fixed
seeds, one CPU thread, inputs re-read from the files that are written.

Run from the repository root with the reference interpreter (after `make_fixtures.py`, whose weights
and config it reads):

    /opt/sam2-reference/bin/python tests/reference/make_video_fixtures.py [--case t256] [--full]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import types
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_fixtures as mf  # noqa: E402  (the image/track generator: model, drawing and probe helpers)

import sam2.sam2_video_predictor as svp  # noqa: E402
import sam2.utils.misc as sam2_misc  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from sam2.sam2_video_predictor import SAM2VideoPredictor  # noqa: E402
from sam2.utils.misc import _load_img_as_tensor  # noqa: E402

FIXTURES = mf.FIXTURES
NUM_FRAMES = 18  # >= max_obj_ptrs_in_encoder (16), so the pointer window is not cut by the clip length

# What `build_sam2_video_predictor` sets on top of `build_sam2`, except `fill_hole_area` (8 there): the
# CPU reference has no CUDA extension, so it cannot fill holes (it would warn and skip). 0 disables it.
# `add_all_frames_to_correct_as_cond` and `non_overlap_masks` are the predictor's options for our tracker:
# corrected frames become conditioning frames; objects are independent (no cross-object suppression).
VIDEO_OVERRIDES = {
    "_target_": "sam2.sam2_video_predictor.SAM2VideoPredictor",
    "binarize_mask_from_pts_for_mem_enc": True,
    "fill_hole_area": 0,
    "add_all_frames_to_correct_as_cond": True,
    "non_overlap_masks": False,
}

IMG_MEAN = (0.485, 0.456, 0.406)
IMG_STD = (0.229, 0.224, 0.225)

# Checks on the recorded run.
MIN_CORRECTION_EFFECT = 1e-2  # relative L2 change of object 1's frame-9 output made by the correction

# Official progress bars are noise here.
svp.tqdm = sam2_misc.tqdm = lambda it, **_: it


@dataclass
class VideoCase:
    name: str  # a case of make_fixtures.CASES
    video_wh: tuple  # frame size (width, height), smaller than image_size
    # The clip: `seed` draws the background; object sizes (relative), how fast object 2 leaves, colours.
    # With random weights the object score of a tracked object tends to keep the sign it takes on the
    # first tracked frame; these were picked (by a scan over seeds, sizes, speeds and palettes) for
    # object scores of both signs, object 2 negative somewhere, and every decision margin (see README).
    seed: int
    sizes: tuple = (1.0, 1.0, 1.0)
    exit_speed: float = 0.75
    colors: str = "rgb"
    # How the predictor stores spatial memories: "bf16" as the official code does, or "f32" (the
    # official code with that one cast removed). t256's random weights amplify a bf16 rounding
    # flip (our f32 memory differs from torch's by ~1e-6, so about one element per memory rounds
    # to the other bf16 neighbour) to a 1e-3 change of the logits by frame 17; s192's do not. So
    # bf16 storage is held to the contract on s192, and t256 checks the rest of the tracker with
    # f32 memories on both sides. Written to `video/options.json` for the Rust tests.
    memory_dtype: str = "bf16"


VIDEO_CASES = {
    "t256": VideoCase("t256", (96, 72), seed=33, memory_dtype="f32"),
    "s192": VideoCase("s192", (128, 96), seed=20, sizes=(1.4, 1.4, 1.4), exit_speed=1.5, colors="swapped"),
}


# --------------------------------------------------------------------------------------------------
# Synthetic clip and prompts
# --------------------------------------------------------------------------------------------------


@dataclass
class VideoClip:
    frames: list  # [H, W, 3] uint8 per frame
    disk: list  # object 1 per frame: (cx, cy, r)
    bar: list  # object 2 per frame: bool mask [H, W]
    ellipse: list  # object 3 per frame: bool mask [H, W]


PALETTES = {  # object -> RGB in 0..1
    "rgb": {1: (0.90, 0.30, 0.20), 2: (0.20, 0.35, 0.90), 3: (0.25, 0.75, 0.30)},
    "swapped": {1: (0.90, 0.30, 0.20), 2: (0.25, 0.75, 0.30), 3: (0.20, 0.35, 0.90)},
}


def make_video_clip(vcase: VideoCase) -> VideoClip:
    """A sliding disk (1), a bar that speeds up to the right and leaves the image (2), a turning ellipse (3)."""
    w, h = vcase.video_wh
    colors, exit_speed = PALETTES[vcase.colors], vcase.exit_speed
    coef = mf.background_coefficients(np.random.default_rng(vcase.seed))
    u1, u2, u3 = (min(w, h) * s for s in vcase.sizes)
    frames, disks, bars, ells = [], [], [], []
    for t in range(NUM_FRAMES):
        a = t / (NUM_FRAMES - 1)
        img = mf.textured_background(h, w, phase=0.08 * t, coef=coef)
        disk = (w * (0.20 + 0.22 * a), h * (0.30 + 0.12 * a), u1 * 0.13)
        # Object 2 accelerates to the right: fully inside at its box prompt (frame 5), gone at the end.
        bar = mf.rect_mask(h, w, w * (0.58 + exit_speed * a * a), h * (0.28 + 0.10 * a), u2 * 0.15, u2 * 0.07, math.radians(15 + 40 * a))
        ell = mf.ellipse_mask(h, w, w * (0.50 - 0.12 * a), h * (0.74 - 0.04 * a), u3 * 0.17, u3 * 0.10, math.radians(-10 + 35 * a))
        mf.paint(img, ell, colors[3], shade=0.3)
        mf.paint(img, bar, colors[2], shade=0.3)
        mf.paint(img, mf.disk_mask(h, w, *disk), colors[1], shade=0.4)
        frames.append(mf.to_uint8(img))
        disks.append(disk)
        bars.append(bar)
        ells.append(ell)
    return VideoClip(frames, disks, bars, ells)


def pt(x, y):
    return [float(round(x)), float(round(y))]


def make_prompts(clip: VideoClip, w: int, h: int):
    """The CLI prompts (video pixels) and object 3's mask prompt (frame, bool mask [H, W])."""
    cx0, cy0, _ = clip.disk[0]
    cx9, cy9, r9 = clip.disk[9]
    correction = [pt(cx9 + 0.3 * r9, cy9 - 0.3 * r9), pt(cx9 - 1.5 * r9, cy9 + 1.1 * r9)]
    prompts = [
        # object 1: one positive click on frame 0 (multimask, the best of 3 is kept)
        {"frame": 0, "object": 1, "points": [pt(cx0, cy0)], "labels": [1]},
        # object 2: a box alone, first prompted mid-clip
        {"frame": 5, "object": 2, "points": [], "labels": [], "box": mf.bbox(clip.bar[5])},
        # object 1: a correction on an already tracked frame, one positive and one negative click
        {"frame": 9, "object": 1, "points": correction, "labels": [1, 0]},
    ]
    for p in prompts:
        assert all(0 <= x < w and 0 <= y < h for x, y in p["points"]), p
    assert correction[0] != prompts[0]["points"][0]
    assert not clip.bar[9][int(correction[1][1]), int(correction[1][0])]  # the negative click is off the objects
    assert not clip.ellipse[9][int(correction[1][1]), int(correction[1][0])]
    bar5 = clip.bar[5]
    assert not (bar5[0].any() or bar5[-1].any() or bar5[:, 0].any() or bar5[:, -1].any())  # boxed whole
    # Object 3's mask prompt is what is visible of it (nothing is painted over it on frame 3).
    visible = clip.ellipse[3] & ~clip.bar[3] & ~mf.disk_mask(h, w, *clip.disk[3])
    assert np.array_equal(visible, clip.ellipse[3])
    prompts.sort(key=lambda p: (p["frame"], p["object"]))
    mask_prompt = {"frame": 3, "object": 3, "mask": clip.ellipse[3]}
    return prompts, mask_prompt


def absent_frames(masks: list) -> list[int]:
    return [t for t, m in enumerate(masks) if not m.any()]


# --------------------------------------------------------------------------------------------------
# Model and inference state
# --------------------------------------------------------------------------------------------------


def video_config(case_dir: Path):
    """The case's config.yaml with the video predictor's target and overrides."""
    base = OmegaConf.load(case_dir / "config.yaml")
    model_cfg = OmegaConf.merge(base.model, VIDEO_OVERRIDES)
    # Only the target and the added keys differ from the image/track config.
    diff = {k for k in model_cfg if k not in base.model or model_cfg[k] != base.model[k]}
    assert diff == set(VIDEO_OVERRIDES), diff
    return OmegaConf.create({"model": model_cfg})


def load_predictor(video_dir: Path, case_dir: Path, weights_file: str) -> SAM2VideoPredictor:
    """Instantiate video/config.yaml and load the case's weights, as build_sam2_video_predictor does."""
    cfg = OmegaConf.load(video_dir / "config.yaml")
    OmegaConf.resolve(cfg)
    model = instantiate(cfg.model, _recursive_=True)
    path = case_dir / weights_file
    state = torch.load(path, map_location="cpu", weights_only=True)["model"] if path.suffix == ".pt" else load_file(path)
    missing, unexpected = model.load_state_dict(state, strict=True)
    assert not missing and not unexpected
    model.eval()
    assert isinstance(model, SAM2VideoPredictor)
    assert model.fill_hole_area == 0 and not model.non_overlap_masks and model.add_all_frames_to_correct_as_cond
    assert model.binarize_mask_from_pts_for_mem_enc
    return model


def load_frames(frame_paths: list, image_size: int):
    """The frames as `load_video_frames_from_jpg_images` loads them (PIL bicubic resize, /255 in f64,
    cast to f32, ImageNet normalisation in f32). Returns (images [T, 3, S, S], height, width)."""
    images = torch.zeros(len(frame_paths), 3, image_size, image_size, dtype=torch.float32)
    for n, p in enumerate(frame_paths):
        images[n], video_height, video_width = _load_img_as_tensor(str(p), image_size)
    images -= torch.tensor(IMG_MEAN, dtype=torch.float32)[:, None, None]
    images /= torch.tensor(IMG_STD, dtype=torch.float32)[:, None, None]
    return images, video_height, video_width


def check_frame_loading(frame_paths: list, image_size: int, loaded) -> None:
    """The official loader itself, on .jpg-named links to the PNGs (PIL reads them by content), must
    give the same tensor bit for bit."""
    with tempfile.TemporaryDirectory() as d:
        for t, p in enumerate(frame_paths):
            Path(d, f"{t:05}.jpg").symlink_to(p.resolve())
        official = sam2_misc.load_video_frames(d, image_size, offload_video_to_cpu=False, compute_device=torch.device("cpu"))
    assert torch.equal(official[0], loaded[0]) and official[1:] == loaded[1:]


def new_state(model: SAM2VideoPredictor, frames) -> dict:
    """An inference state over the clip: init_state on dummy JPEGs, then the real frames put in."""
    images, video_height, video_width = frames
    with tempfile.TemporaryDirectory() as d:
        for t in range(NUM_FRAMES):
            Image.new("RGB", (8, 8)).save(Path(d, f"{t:05}.jpg"))
        state = model.init_state(d)
    assert state["num_frames"] == NUM_FRAMES == images.shape[0]
    state["images"] = images.clone()
    state["video_height"], state["video_width"] = video_height, video_width
    # init_state ran the backbone on the dummy frame 0 and cached it: drop it.
    state["cached_features"] = {}
    assert state["constants"] == {} and state["obj_ids"] == [] and not state["offload_video_to_cpu"]
    assert state["device"] == torch.device("cpu") == state["storage_device"]
    return state


# --------------------------------------------------------------------------------------------------
# The causal schedule
# --------------------------------------------------------------------------------------------------


@dataclass
class Output:
    mask: torch.Tensor  # [H, W] video-resolution logits
    score: float  # object score logit
    source: str  # "add_new_points_or_box" | "add_new_mask" | "propagate"
    low_res: torch.Tensor  # [4E, 4E] stored pred_masks (for --full)
    obj_ptr: torch.Tensor  # [C] (for --full)


@dataclass
class ObjectRun:
    object: int
    outputs: dict = field(default_factory=dict)  # frame -> Output
    schedule: list = field(default_factory=list)  # calls made, for the report
    memory: dict = field(default_factory=dict)  # frame -> (spatial memories, pointers) read by the memory attention


def stored_output(state: dict, frame: int, temp: bool) -> dict:
    """The (single) stored output dict of the only object of `state` on `frame`."""
    d = state["temp_output_dict_per_obj" if temp else "output_dict_per_obj"][0]
    found = [d[k][frame] for k in ("cond_frame_outputs", "non_cond_frame_outputs") if frame in d[k]]
    assert len(found) == 1, f"frame {frame}: {len(found)} stored outputs"
    return found[0]


def make_output(video_res_masks: torch.Tensor, out: dict, source: str) -> Output:
    assert video_res_masks.shape[:2] == (1, 1)
    return Output(
        video_res_masks[0, 0].clone(),
        out["object_score_logits"].item(),
        source,
        out["pred_masks"][0, 0].clone(),
        out["obj_ptr"][0].clone(),
    )


def run_object(model, frames, prompts: list, probe, mem_log: dict, start_at_prompt: bool = False) -> ObjectRun:
    """Drive one object through the official predictor in its own inference state, causally.

    `prompts`: this object's prompts, sorted by frame (CLI dicts, or {"frame", "mask"} for a mask).
    With `start_at_prompt`, each propagation starts on the prompted frame instead of the one after it
    (a check: the predictor re-yields the stored output of a conditioning frame, nothing changes).
    """
    oid = prompts[0]["object"]
    run = ObjectRun(oid)
    state = new_state(model, frames)
    probe_label = lambda what: f"object {oid}, {what}"  # noqa: E731

    def add(p):
        t = p["frame"]
        probe.label = mem_log["label"] = probe_label(f"frame {t} (prompt)")
        tracked_before = t in state["frames_tracked_per_obj"].get(0, {})
        if "mask" in p:
            _, obj_ids, masks = model.add_new_mask(state, t, oid, p["mask"])
            source = "add_new_mask"
        else:
            points = p["points"] or None
            labels = p["labels"] if p["points"] else None
            _, obj_ids, masks = model.add_new_points_or_box(
                state, t, oid, points=points, labels=labels, clear_old_points=True, box=p.get("box")
            )
            source = "add_new_points_or_box"
        assert obj_ids == [oid]
        out = stored_output(state, t, temp=True)
        # It is a conditioning output: initial, or a correction with add_all_frames_to_correct_as_cond.
        assert t in state["temp_output_dict_per_obj"][0]["cond_frame_outputs"]
        assert out["maskmem_features"] is None  # encoded later, by the next propagate_in_video
        replaced = t in run.outputs
        assert replaced == tracked_before, f"frame {t}: tracked {tracked_before}, recorded {replaced}"
        run.outputs[t] = make_output(masks, out, source)
        kind = "mask" if "mask" in p else "+".join(k for k in ("box", "points") if p.get(k))
        run.schedule.append({"call": source, "frame": t, "prompt": kind, "replaces_tracked_output": replaced})

    def propagate(start, end):
        gen = model.propagate_in_video(state, start_frame_idx=start, max_frame_num_to_track=end - start)
        expected, yielded, reyielded = start, [], []
        while True:
            probe.label = mem_log["label"] = probe_label(f"frame {expected} (propagated)")
            try:
                t, obj_ids, masks = next(gen)
            except StopIteration:
                break
            assert t == expected and obj_ids == [oid], (t, expected, obj_ids)
            expected += 1
            out = stored_output(state, t, temp=False)
            if t in state["output_dict_per_obj"][0]["cond_frame_outputs"]:
                # A prompted frame: the yield repeats its stored output (nothing is computed). It must not
                # overwrite the recording (it is the same anyway).
                assert t in run.outputs and torch.equal(masks[0, 0], run.outputs[t].mask)
                reyielded.append(t)
                continue
            assert t not in run.outputs, f"frame {t} recorded twice"
            run.outputs[t] = make_output(masks, out, "propagate")
            yielded.append(t)
        assert expected == end + 1
        run.schedule.append(
            {"call": "propagate_in_video", "start_frame_idx": start, "max_frame_num_to_track": end - start,
             "recorded": [yielded[0], yielded[-1]] if yielded else [], "reyielded": reyielded}
        )

    first, *later = prompts
    add(first)
    last = first["frame"]
    for p in later:
        assert p["frame"] > last
        propagate(last if start_at_prompt else last + 1, p["frame"])
        add(p)
        last = p["frame"]
    if last < NUM_FRAMES - 1:
        propagate(last if start_at_prompt else last + 1, NUM_FRAMES - 1)

    # Exactly one output per frame from the first prompt to the end of the clip.
    assert sorted(run.outputs) == list(range(first["frame"], NUM_FRAMES)), sorted(run.outputs)
    run.memory = {t: v for (o, t), v in mem_log["calls"].items() if o == oid}
    mem_log["calls"] = {k: v for k, v in mem_log["calls"].items() if k[0] != oid}
    return run


class MemoryLog:
    """Logs, per (object, frame), what the memory attention read: (spatial memories, object pointers)."""

    def __init__(self, model):
        self.model = model
        self.d = {"label": "", "calls": {}}
        self._hook = model.memory_attention.register_forward_hook(self._after, with_kwargs=True)

    def _after(self, module, args, kwargs, output):
        label = self.d["label"]
        oid = int(label.split(",")[0].split()[1])
        frame = int(label.split("frame ")[1].split()[0])
        memory, n_ptr = kwargs["memory"], kwargs["num_obj_ptr_tokens"]
        hw = kwargs["curr"][0].shape[0]
        assert memory.dtype == torch.float32  # bf16 stored memories are promoted back by torch.cat
        n_mem = (memory.shape[0] - n_ptr) // hw
        tokens_per_ptr = self.model.hidden_dim // self.model.mem_dim
        key = (oid, frame)
        assert key not in self.d["calls"] or "prompt" in label, f"memory attention ran twice on {key}"
        self.d["calls"][key] = (n_mem, n_ptr // tokens_per_ptr)

    def remove(self):
        self._hook.remove()


def memory_torch(memory_dtype: str):
    """The `torch` the video predictor module sees: itself, or (for f32 memories) a copy whose
    `bfloat16` is `float32`, so that the predictor's storage cast keeps f32."""
    if memory_dtype == "bf16":
        return torch
    assert memory_dtype == "f32", memory_dtype
    proxy = types.ModuleType("torch_with_f32_memories")
    proxy.__dict__.update(torch.__dict__)
    proxy.bfloat16 = torch.float32
    return proxy


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


# --------------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------------


def make_video_case(vcase: VideoCase, full: bool) -> dict:
    case = mf.CASES[vcase.name]
    case_dir = FIXTURES / case.name
    out_dir = case_dir / "video"
    (out_dir / "frames").mkdir(parents=True, exist_ok=True)
    w, h = vcase.video_wh
    assert w < case.image_size and h < case.image_size

    # Inputs, written first and read back.
    clip = make_video_clip(vcase)
    prompts, mask_prompt = make_prompts(clip, w, h)
    frame_paths = [out_dir / "frames" / f"{t:04}.png" for t in range(NUM_FRAMES)]
    for path, frame in zip(frame_paths, clip.frames):
        Image.fromarray(frame).save(path)
    (out_dir / "prompts.json").write_text(mf.json_dump({"prompts": prompts}) + "\n")
    mask_key = f"obj{mask_prompt['object']}/frame{mask_prompt['frame']}"
    save_file({mask_key: torch.from_numpy(mask_prompt["mask"].astype(np.uint8))}, out_dir / "masks.safetensors")
    (out_dir / "config.yaml").write_text(OmegaConf.to_yaml(video_config(case_dir)))
    (out_dir / "options.json").write_text(mf.json_dump({"memory_dtype": vcase.memory_dtype}) + "\n")

    prompts = json.loads((out_dir / "prompts.json").read_text())["prompts"]
    mask = load_file(out_dir / "masks.safetensors")[mask_key]
    assert mask.dtype == torch.uint8 and tuple(mask.shape) == (h, w) and set(mask.unique().tolist()) <= {0, 1}
    mask_prompt = {"frame": mask_prompt["frame"], "object": mask_prompt["object"], "mask": mask.bool()}
    per_object = {}
    for p in prompts + [mask_prompt]:
        per_object.setdefault(p["object"], []).append(p)
    per_object = {o: sorted(ps, key=lambda p: p["frame"]) for o, ps in sorted(per_object.items())}

    model = load_predictor(out_dir, case_dir, case.weights_file)
    # The predictor casts memories with `maskmem_features.to(torch.bfloat16)`: for an f32 case, its
    # module sees a `torch` whose bfloat16 is float32 (nothing else changes).
    svp.torch = memory_torch(vcase.memory_dtype)
    frames = load_frames(frame_paths, model.image_size)
    assert frames[1:] == (h, w)
    check_frame_loading(frame_paths, model.image_size, frames)

    probe = mf.DecisionProbe(model)
    memlog = MemoryLog(model)
    runs = {}
    for oid, ps in per_object.items():
        runs[oid] = run_object(model, frames, ps, probe, memlog.d)
    probe.check(check_object_score=True)
    calls = list(probe.calls)

    # Check: starting each propagation on the prompted frame re-yields the stored outputs and changes nothing.
    for oid, ps in per_object.items():
        again = run_object(model, frames, ps, probe, memlog.d, start_at_prompt=True)
        for t, o in runs[oid].outputs.items():
            assert torch.equal(o.mask, again.outputs[t].mask) and o.score == again.outputs[t].score, (oid, t)
    # Check: object 1's correction matters, on its frame and later.
    p1 = per_object[1]
    baseline = run_object(model, frames, p1[:1], probe, memlog.d)
    t_corr = p1[1]["frame"]
    correction_effect = {
        t: rel_l2(runs[1].outputs[t].mask, baseline.outputs[t].mask) for t in range(t_corr, NUM_FRAMES)
    }
    assert correction_effect[t_corr] > MIN_CORRECTION_EFFECT, correction_effect
    assert max(v for t, v in correction_effect.items() if t > t_corr) > MIN_CORRECTION_EFFECT, correction_effect
    probe.remove()
    memlog.remove()

    # Check: object 2 is scored absent (negative) somewhere; the memory bank fills.
    bar_absent = absent_frames(clip.bar)
    negative = {oid: [t for t, o in run.outputs.items() if o.score < 0] for oid, run in runs.items()}
    assert negative[2], "object 2 is never scored absent"
    assert bar_absent and bar_absent[-1] == NUM_FRAMES - 1 and bar_absent[0] > 5
    last = NUM_FRAMES - 1
    for oid, run in runs.items():
        n_mem, n_ptr = run.memory[last]
        cond = {p["frame"] for p in per_object[oid]}
        # On the last frame: every conditioning frame, then the num_maskmem - 1 previous (non-conditioning)
        # frames; pointers: the conditioning frames, then the non-conditioning frames of the window
        # (t_diff < max_obj_ptrs_in_encoder).
        assert n_mem == len(cond) + model.num_maskmem - 1, (oid, n_mem)
        window = range(max(min(run.outputs), last - model.max_obj_ptrs_in_encoder + 1), last)
        assert n_ptr == len(cond) + sum(t not in cond for t in window), (oid, n_ptr)

    rec = mf.Recorder()
    for oid, run in runs.items():
        for t, o in sorted(run.outputs.items()):
            rec[f"frame{t}/obj{oid}"] = o.mask
            rec[f"frame{t}/obj{oid}/score"] = torch.tensor(o.score)
            if full:
                rec[f"frame{t}/obj{oid}/low_res"] = o.low_res
                rec[f"frame{t}/obj{oid}/obj_ptr"] = o.obj_ptr
    generator = f"make_video_fixtures.py {case.name}, sam2 1.1.0, torch {torch.__version__}"
    # Sorted keys, one metadata entry: the file is a deterministic function of the tensors.
    save_file(dict(sorted(rec.tensors.items())), out_dir / "expected.safetensors", metadata={"generator": generator})

    return {
        "case": case.name,
        "video_wh": (w, h),
        "files": {p.relative_to(out_dir).as_posix(): p.stat().st_size for p in sorted(out_dir.rglob("*")) if p.is_file()},
        "schedule": {oid: run.schedule for oid, run in runs.items()},
        "scores": {oid: {t: o.score for t, o in sorted(run.outputs.items())} for oid, run in runs.items()},
        "negative": negative,
        "bar_absent": bar_absent,
        "memory": {oid: run.memory for oid, run in runs.items()},
        "correction_effect": correction_effect,
        "calls": calls,
    }


# --------------------------------------------------------------------------------------------------
# PIL resize fixture
# --------------------------------------------------------------------------------------------------


PIL_SIZES = (256, 64)


def make_pil_resize() -> dict:
    """tests/fixtures/pil_resize/: a 150x100 image with sharp edges and noise, and PIL's bicubic resizes."""
    out_dir = FIXTURES / "pil_resize"
    out_dir.mkdir(parents=True, exist_ok=True)
    w, h = 150, 100
    rng = np.random.default_rng(7)
    y, x = np.mgrid[0:h, 0:w]
    img = np.zeros((h, w, 3))
    img[...] = rng.uniform(0.2, 0.8, size=3)
    img[(x // 10 + y // 10) % 2 == 0] = (0.9, 0.1, 0.2)  # a hard checkerboard
    img[20:70, 30:80] = (1.0, 1.0, 1.0)  # saturated blocks: overshoot must be clamped
    img[40:90, 60:120] = (0.0, 0.0, 0.0)
    img[:, 100:102] = (0.0, 1.0, 0.0)  # thin lines
    img[5, :] = (0.0, 0.0, 1.0)
    img[(x - 125) ** 2 + (y - 25) ** 2 < 15**2] = (1.0, 0.8, 0.0)  # a disk
    img[::3, ::3] = 1.0 - img[::3, ::3]  # one-pixel detail
    img += rng.normal(0.0, 0.08, size=img.shape)  # noise
    Image.fromarray(mf.to_uint8(img)).save(out_dir / "input.png")
    for s in PIL_SIZES:
        # What _load_img_as_tensor does: resize with PIL's default filter (bicubic for RGB).
        resized = Image.open(out_dir / "input.png").convert("RGB").resize((s, s))
        explicit = Image.open(out_dir / "input.png").convert("RGB").resize((s, s), Image.Resampling.BICUBIC)
        assert np.array_equal(np.array(resized), np.array(explicit))
        resized.save(out_dir / f"expected_{s}.png")
        official, _, _ = _load_img_as_tensor(str(out_dir / "input.png"), s)
        back = np.array(Image.open(out_dir / f"expected_{s}.png"))
        assert np.array_equal(np.round(official.permute(1, 2, 0).numpy() * 255.0).astype(np.uint8), back)
    return {p.name: p.stat().st_size for p in sorted(out_dir.iterdir())}


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------


def print_summary(s: dict) -> None:
    total = sum(s["files"].values())
    print(f"== {s['case']} video ({s['video_wh'][0]}x{s['video_wh'][1]}): {total / 1e6:.2f} MB")
    for name, size in s["files"].items():
        if not name.startswith("frames/"):
            print(f"   {name:24} {size / 1e3:9.1f} kB")
    frames = sum(v for k, v in s["files"].items() if k.startswith("frames/"))
    print(f"   {'frames/*.png':24} {frames / 1e3:9.1f} kB")
    for oid, sched in s["schedule"].items():
        print(f"   object {oid}:")
        for c in sched:
            print(f"      {c}")
        scores = " ".join(f"{t}:{v:+.2f}" for t, v in s["scores"][oid].items())
        print(f"      scores {scores}")
        mem = " ".join(f"{t}:{m}/{p}" for t, (m, p) in sorted(s["memory"][oid].items()))
        print(f"      memories/pointers read {mem}")
    print(f"   object 2 outside the image on frames {s['bar_absent']}; negative score on {s['negative'][2]}")
    print(f"   negative scores: obj1 {s['negative'][1]}, obj3 {s['negative'][3]}")
    eff = " ".join(f"{t}:{v:.3f}" for t, v in s["correction_effect"].items())
    print(f"   correction of object 1, relative L2 change vs no correction: {eff}")
    for c in s["calls"]:
        if "stability" in c:
            verdict = "FALLBACK to best multimask" if c["fallback"] else "single mask kept"
            print(f"   {c['label']}: stability {c['stability']:.4f} -> {verdict}")
    gaps = [c["iou_gap"] for c in s["calls"] if c.get("iou_gap") is not None]
    print(
        f"   smallest margins over {len(s['calls'])} decoder calls: object score |s| "
        f"{min(abs(c['object_score']) for c in s['calls']):.4f}, IoU argmax gap {min(gaps):.4f}"
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--case", choices=sorted(VIDEO_CASES), action="append", help="case(s) to generate (default: all)")
    parser.add_argument("--full", action="store_true", help="also record low-res logits and object pointers")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    summaries = []
    with torch.no_grad():
        pil = make_pil_resize()
        for name in args.case or VIDEO_CASES:
            summaries.append(make_video_case(VIDEO_CASES[name], args.full))
    print(f"== pil_resize: {pil}")
    for s in summaries:
        print_summary(s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
