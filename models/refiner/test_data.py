"""Self-test of the refiner's training data: the fine-structure scenes and the HQSeg-44K loader.

    /opt/sam2-reference/bin/python models/refiner/test_data.py

Plain asserts; each check prints an "ok" line.
"""

from __future__ import annotations

import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fine_scenes  # noqa: E402
import hqseg  # noqa: E402

SEEDS = range(24)


def thinness(alpha: torch.Tensor) -> float:
    """Perimeter over area of a soft mask (H, W): total variation / coverage; ~2/R for a disc of radius R,
    ~2/w for a strand w pixels wide."""
    tv = (alpha[1:] - alpha[:-1]).abs().sum() + (alpha[:, 1:] - alpha[:, :-1]).abs().sum()
    return float(tv / alpha.sum().clamp_min(1e-6))


def check_seed_sets():
    """Training and held-out scene seeds never meet as torch's generator sees them (its low 32 bits), and
    a seed it would alias is refused."""
    sys.path.append(str(Path(__file__).resolve().parents[1] / "nano"))
    import common
    import evaluate

    runs = common.TRAINING_SEEDS // common.SCENES_PER_RUN
    training_top = common.scene_seed(runs - 1, common.SCENES_PER_RUN - 1)
    assert training_top < common.TRAINING_SEEDS
    for base in (common.EVAL_SEED_BASE, evaluate.EVAL_SEED_BASE):
        assert common.TRAINING_SEEDS <= base and base + 2_000_000 < common.SEED_SPACE, base
    for bad in (2**32, 2**51, -1):
        try:
            fine_scenes.random_fine_scene(bad)
        except ValueError:
            pass
        else:
            raise AssertionError(f"seed {bad} was accepted")
    print("ok seeds: training below 2**31, held-out sets above, seeds beyond 32 bits refused")


def check_determinism():
    for seed in (0, 7, 123):
        a = fine_scenes.random_fine_scene(seed).render(3.0)
        b = fine_scenes.random_fine_scene(seed).render(3.0)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]), f"seed {seed} is not deterministic"
    other = fine_scenes.random_fine_scene(1).render(3.0)
    assert not torch.equal(a[0], other[0])
    print("ok determinism: same seed, same image and alpha; another seed, another scene")


def check_shapes_and_ranges():
    fine_seen = set()
    for seed in SEEDS:
        scene = fine_scenes.random_fine_scene(seed)
        image, alpha = scene.render(2.0)
        k = len(scene.kinds)
        assert 1 <= k <= 4 and any(kind != "solid" for kind in scene.kinds), scene.kinds
        assert image.shape == (3, 512, 512) and image.dtype == torch.float32
        assert alpha.shape == (k, 512, 512) and alpha.dtype == torch.float32
        assert image.min() >= 0 and image.max() <= 1
        assert alpha.min() >= 0 and alpha.max() <= 1
        assert alpha.sum(0).max() <= 1 + 1e-5, "visible coverages overlap"
        fine_seen.update(scene.kinds)
    assert fine_seen == set(fine_scenes.KINDS), f"kinds never drawn: {set(fine_scenes.KINDS) - fine_seen}"
    image, alpha = fine_scenes.random_fine_scene(5, size=256).render(0.0)
    assert image.shape == (3, 256, 256) and alpha.shape[1:] == (256, 256)
    print(f"ok shapes and ranges over {len(SEEDS)} scenes; all kinds drawn: {sorted(fine_seen)}")


def check_antialiasing_and_thinness():
    fractional, covered = 0, 0
    thin = {kind: [] for kind in fine_scenes.KINDS}
    for seed in SEEDS:
        scene = fine_scenes.random_fine_scene(seed, still=True)
        _, alpha = scene.render(0.0)
        for kind, a in zip(scene.kinds, alpha):
            if a.sum() < 50:
                continue  # (nearly) out of the frame or hidden
            covered += int((a > 0).sum())
            fractional += int(((a > 0.02) & (a < 0.98)).sum())
            thin[kind].append(thinness(a))
    share = fractional / covered
    assert share > 0.1, f"only {share:.3f} of covered pixels are fractional: not anti-aliased?"
    hair = max(thin["hair"] + thin["strands"])
    assert hair > 0.5, f"hair is not thin: perimeter/area {hair:.2f}"
    mesh = max(thin["mesh"])
    assert mesh > 0.5, f"mesh is not thin: perimeter/area {mesh:.2f}"
    # (a solid shape behind a fence is seen through its holes, so only typical values are compared)
    median = {kind: float(np.median(v)) for kind, v in thin.items() if v}
    assert median["solid"] < 0.3 and median["hair"] > 0.5 and median["strands"] > 1.0, median
    summary = ", ".join(f"{k} {median[k]:.2f} (max {max(v):.2f})" for k, v in thin.items() if v)
    print(f"ok anti-aliased: {share:.2f} of covered pixels fractional; perimeter/area, median: {summary}")

    # A lone strand thinner than a pixel never covers a whole one, and covers its width on average.
    r = fine_scenes.Rand(0)
    widths, peaks = [], []
    for angle in np.linspace(0.0, np.pi / 2, 7):
        strand = fine_scenes.Line(np.array([[-100.0, 0.0], [100.0, 0.0]]) @ np.array([[np.cos(angle), np.sin(angle)], [-np.sin(angle), np.cos(angle)]]), 0.7)
        obj = fine_scenes.FineObject(
            "strands", fine_scenes.Texture.random(r, kind="flat"), fine_scenes.Motion.random(r, still=True), fine_scenes._extent([strand]), [strand]
        )
        obj.motion.centre, obj.motion.angle = (256.3, 255.8), 0.0
        scene = fine_scenes.FineScene(fine_scenes.Texture.random(r, kind="flat"), [obj], (0.0, 0.0), 0)
        a = scene.render(0.0)[1][0]
        widths.append(float(a.sum() / 200.0))
        peaks.append(float(a.max()))
    mean = sum(widths) / len(widths)
    assert max(peaks) < 1 and 0.6 < mean < 0.8 and max(widths) < 0.9, (peaks, widths)
    print(f"ok a 0.7 px strand at 7 angles: peak coverage {max(peaks):.2f}, width {mean:.2f} px ({min(widths):.2f}-{max(widths):.2f})")


def check_compositing():
    """With flat colours and no grain, the image is exactly the alphas' mix: alpha is what the image shows."""
    for seed in (3, 9, 15):
        scene = fine_scenes.random_fine_scene(seed, still=True)
        scene.clutter = []
        colours = torch.rand(len(scene.objects) + 1, 3, generator=torch.Generator().manual_seed(seed))
        scene.background = fine_scenes.Texture("flat", colours[0], colours[0], 10.0, 0.0, None, 0.0)
        for obj, colour in zip(scene.objects, colours[1:]):
            obj.texture = fine_scenes.Texture("flat", colour, colour, 10.0, 0.0, None, 0.0)
        image, alpha = scene.render(0.0)
        expected = colours[0][:, None, None] * (1 - alpha.sum(0)) + torch.einsum("kc,khw->chw", colours[1:], alpha)
        assert (image - expected).abs().max() < 1e-4, float((image - expected).abs().max())
    print("ok the image is the background and objects mixed by exactly the visible alphas")


def check_motion():
    for seed in SEEDS:
        scene = fine_scenes.random_fine_scene(seed)
        a0, a5 = scene.render(0.0)[1], scene.render(5.0)[1]
        if a0.sum() + a5.sum() == 0:
            continue
        assert (a0 - a5).abs().sum() > 1.0, f"scene {seed} did not move"
        still = fine_scenes.random_fine_scene(seed, still=True)
        assert torch.equal(still.render(0.0)[1], still.render(5.0)[1]), f"still scene {seed} moved"
    print("ok objects move between t=0 and t=5; still scenes do not")


def check_speed():
    scenes = [fine_scenes.random_fine_scene(1000 + i) for i in range(12)]
    start = time.perf_counter()
    for scene in scenes:
        scene.render(0.0)
        scene.render(4.0)
    per = (time.perf_counter() - start) / (2 * len(scenes))
    assert per < 0.5, f"{per:.3f} s per render"
    print(f"ok render time {1000 * per:.0f} ms per 512 px frame (threads: {torch.get_num_threads()})")


def _write_pair(im_dir: Path, gt_dir: Path, stem: str, image: np.ndarray, gt: np.ndarray):
    im_dir.mkdir(parents=True, exist_ok=True)
    gt_dir.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(im_dir / f"{stem}.jpg", quality=95)
    Image.fromarray(gt).save(gt_dir / f"{stem}.png")


def check_hqseg():
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "train" / "data"
        # DIS5K-TR: images and masks in separate folders; one square at the output size, exact values.
        levels = np.array([0, 64, 128, 255], dtype=np.uint8)
        exact = levels[(np.arange(64)[:, None] // 16 + np.arange(64)[None] // 16) % 4]
        _write_pair(root / "DIS5K/DIS-TR/im", root / "DIS5K/DIS-TR/gt", "a", rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), exact)
        wide = np.zeros((90, 160), np.uint8)
        wide[30:60, 40:120] = 255
        _write_pair(root / "DIS5K/DIS-TR/im", root / "DIS5K/DIS-TR/gt", "b", rng.integers(0, 256, (90, 160, 3), dtype=np.uint8), wide)
        # FSS: images and masks side by side; a grey image and a colour ground truth (read from its first channel).
        colour = np.zeros((120, 80, 3), np.uint8)
        colour[20:100, 10:70, 0] = 200
        colour[..., 1] = 255
        _write_pair(root / "cascade_psp/fss_all", root / "cascade_psp/fss_all", "1", rng.integers(0, 256, (120, 80), dtype=np.uint8), colour)
        _write_pair(root / "cascade_psp/fss_all", root / "cascade_psp/fss_all", "2", rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), exact)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "cascade_psp/fss_all/no_gt.jpg")  # left out

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = hqseg.HQSegDataset(root, size=64)
        assert len(ds) == 4, len(ds)
        assert ds.counts == {"DIS5K-TR": 2, "FSS": 2}, ds.counts
        assert ds.skipped == ["ThinObject5k-TR", "DUTS-TR", "DUTS-TE", "ECSSD", "MSRA10K"], ds.skipped
        assert any("skipped" in str(w.message) for w in caught)
        for i in range(len(ds)):
            image, mask = ds[i]
            assert image.shape == (3, 64, 64) and mask.shape == (1, 64, 64)
            assert image.dtype == torch.float32 and mask.dtype == torch.float32
            assert 0 <= image.min() and image.max() <= 1 and 0 <= mask.min() and mask.max() <= 1
        _, mask = ds[0]  # DIS5K-TR/a: at the output size already, values kept exactly
        assert torch.equal(mask[0], torch.from_numpy(exact.astype(np.float32) / 255)), "mask values changed"
        assert torch.equal(torch.unique(mask), torch.tensor([0.0, 64.0, 128.0, 255.0]) / 255)
        image, mask = ds[1]  # DIS5K-TR/b: 160 x 90 padded to 64 x 36 + 28 rows of padding
        assert mask[0, 36:].sum() == 0 and torch.allclose(image[:, 36:], torch.tensor(128 / 255))
        assert abs(float(mask.mean()) - wide.mean() / 255 * 36 / 64) < 0.01, float(mask.mean())
        assert ((mask > 0.02) & (mask < 0.98)).any(), "downscaled mask lost its soft edge"
        _, mask = ds[2]  # FSS/1: colour ground truth, first channel = 200 inside
        assert abs(float(mask.max()) - 200 / 255) < 1e-3, float(mask.max())
        stretched = hqseg.HQSegDataset(root, size=64, subsets=["DIS5K-TR"], fit="stretch")[1][1]
        assert abs(float(stretched.mean()) - wide.mean() / 255) < 0.01
        assert len(hqseg.HQSegDataset(root.parent, size=32, subsets=["FSS"])) == 2, "root above data/ not accepted"
        print("ok hqseg: layout read, absent subsets skipped, shapes, ranges, mask values kept, padding, colour GT")

        empty = Path(tmp) / "empty"
        empty.mkdir()
        try:
            hqseg.HQSegDataset(empty)
        except FileNotFoundError as e:
            message = str(e)
            for s in hqseg.TRAIN_SUBSETS:
                assert s.im_dir in message, f"{s.im_dir} not named in: {message}"
        else:
            raise AssertionError("an empty root did not raise")
        print("ok hqseg: a root without subsets raises FileNotFoundError naming the folders")


def main():
    torch.set_num_threads(1)
    check_seed_sets()
    check_determinism()
    check_shapes_and_ranges()
    check_antialiasing_and_thinness()
    check_compositing()
    check_motion()
    check_speed()
    check_hqseg()
    print("all ok")


if __name__ == "__main__":
    main()
