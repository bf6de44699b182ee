"""HQSeg-44K, the HQ-SAM training set, read from a local copy laid out as HQ-SAM's training code expects.

HQSeg-44K is not redistributable with this project; users who have it (it is published with HQ-SAM, see
https://github.com/SysCV/sam-hq/tree/main/train) point `HQSegDataset` at its `data` folder. The subsets, their
folders and extensions are copied from the dataset dictionaries at the end of SysCV/sam-hq `train/train.py`
(training: DIS5K-TR, ThinObject5k-TR, FSS, DUTS-TR, DUTS-TE, ECSSD, MSRA10K; validation: DIS5K-VD, COIFT,
HRSOD, ThinObject5k-TE), and the pairing rule from its `train/utils/dataloader.py`: every `*<im_ext>` file
in `im_dir` is an image, its ground truth is `gt_dir/<same stem><gt_ext>`, and a ground truth with several
channels is read from its first.

    data/
      DIS5K/DIS-TR/{im,gt}, DIS5K/DIS-VD/{im,gt}
      cascade_psp/{DUTS-TE,DUTS-TR,ecssd,fss_all,MSRA_10K}    (images .jpg and masks .png side by side)
      thin_object_detection/ThinObject5K/{images_train,masks_train,images_test,masks_test}
      thin_object_detection/COIFT/{images,masks}, thin_object_detection/HRSOD/{images,masks_max255}

Each item is the image as float [3, size, size] in [0, 1] and the mask as soft coverage [1, size, size]
in [0, 1] (the 8-bit ground truth / 255), both resized with anti-aliasing. By default (`fit="pad"`, as
HQ-SAM's large-scale jitter does) the longer side is scaled to `size` and the rest padded (image grey 128,
mask 0); `fit="stretch"` scales both sides to `size`, `fit="crop"` scales the shorter side and crops the
centre.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


@dataclass(frozen=True)
class Subset:
    name: str
    im_dir: str  # relative to the data folder
    gt_dir: str
    im_ext: str
    gt_ext: str


# SysCV/sam-hq train/train.py, `dataset_*` dicts, with their "./data/" prefix taken off.
TRAIN_SUBSETS = (
    Subset("DIS5K-TR", "DIS5K/DIS-TR/im", "DIS5K/DIS-TR/gt", ".jpg", ".png"),
    Subset("ThinObject5k-TR", "thin_object_detection/ThinObject5K/images_train", "thin_object_detection/ThinObject5K/masks_train", ".jpg", ".png"),
    Subset("FSS", "cascade_psp/fss_all", "cascade_psp/fss_all", ".jpg", ".png"),
    Subset("DUTS-TR", "cascade_psp/DUTS-TR", "cascade_psp/DUTS-TR", ".jpg", ".png"),
    Subset("DUTS-TE", "cascade_psp/DUTS-TE", "cascade_psp/DUTS-TE", ".jpg", ".png"),
    Subset("ECSSD", "cascade_psp/ecssd", "cascade_psp/ecssd", ".jpg", ".png"),
    Subset("MSRA10K", "cascade_psp/MSRA_10K", "cascade_psp/MSRA_10K", ".jpg", ".png"),
)
VALID_SUBSETS = (
    Subset("DIS5K-VD", "DIS5K/DIS-VD/im", "DIS5K/DIS-VD/gt", ".jpg", ".png"),
    Subset("COIFT", "thin_object_detection/COIFT/images", "thin_object_detection/COIFT/masks", ".jpg", ".png"),
    Subset("HRSOD", "thin_object_detection/HRSOD/images", "thin_object_detection/HRSOD/masks_max255", ".jpg", ".png"),
    Subset("ThinObject5k-TE", "thin_object_detection/ThinObject5K/images_test", "thin_object_detection/ThinObject5K/masks_test", ".jpg", ".png"),
)
SUBSETS = {s.name: s for s in TRAIN_SUBSETS + VALID_SUBSETS}
PAD_GREY = 128 / 255  # HQ-SAM pads images with 128 and masks with 0
FITS = ("pad", "stretch", "crop")


def _pairs(root: Path, subset: Subset) -> list[tuple[Path, Path]]:
    """(image, ground truth) paths of a subset, sorted; images without ground truth are left out."""
    im_dir, gt_dir = root / subset.im_dir, root / subset.gt_dir
    if not im_dir.is_dir() or not gt_dir.is_dir():
        return []
    pairs = []
    for im in sorted(im_dir.glob("*" + subset.im_ext)):
        gt = gt_dir / (im.name[: -len(subset.im_ext)] + subset.gt_ext)
        if gt.is_file():
            pairs.append((im, gt))
    return pairs


def _data_root(root: Path, subsets: tuple[Subset, ...]) -> Path:
    """`root` itself, or `root/data` when `root` is the folder that holds HQ-SAM's `data`."""
    here = any((root / s.im_dir).is_dir() for s in subsets)
    if not here and any((root / "data" / s.im_dir).is_dir() for s in subsets):
        return root / "data"
    return root


def load_image(path: Path) -> torch.Tensor:
    """RGB float [3, H, W] in [0, 1]; grey images repeated on three channels."""
    with Image.open(path) as im:
        a = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(a).permute(2, 0, 1).contiguous()


def load_mask(path: Path) -> torch.Tensor:
    """Soft coverage float [1, H, W] in [0, 1]: an 8-bit ground truth / 255 (16-bit / 65535); the first
    channel of a colour one, as HQ-SAM reads it."""
    with Image.open(path) as im:
        if im.mode in ("I;16", "I;16L", "I;16B", "I"):
            a = np.asarray(im, dtype=np.float32) / 65535.0
        elif im.mode == "F":
            a = np.asarray(im, dtype=np.float32)
        else:
            if im.mode == "1":
                im = im.convert("L")
            elif im.mode != "L":
                im = im.convert("RGB").getchannel(0)
            a = np.asarray(im, dtype=np.float32) / 255.0
    return torch.from_numpy(a.clip(0.0, 1.0).copy())[None]


def _resize(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    if x.shape[-2:] == (h, w):
        return x
    return F.interpolate(x[None], size=(h, w), mode="bilinear", antialias=True, align_corners=False)[0].clamp(0, 1)


def fit_square(image: torch.Tensor, mask: torch.Tensor, size: int, fit: str = "pad") -> tuple[torch.Tensor, torch.Tensor]:
    """An image [3, H, W] and its mask [1, H, W] brought to [., size, size] (see the module's docstring)."""
    h, w = image.shape[-2:]
    if fit == "stretch":
        return _resize(image, size, size), _resize(mask, size, size)
    if fit == "crop":
        s = size / min(h, w)
        nh, nw = max(size, round(h * s)), max(size, round(w * s))
        image, mask = _resize(image, nh, nw), _resize(mask, nh, nw)
        top, left = (nh - size) // 2, (nw - size) // 2
        return image[:, top : top + size, left : left + size], mask[:, top : top + size, left : left + size]
    if fit != "pad":
        raise ValueError(f"fit must be one of {FITS}, not {fit!r}")
    s = size / max(h, w)
    nh, nw = min(size, max(1, round(h * s))), min(size, max(1, round(w * s)))
    image, mask = _resize(image, nh, nw), _resize(mask, nh, nw)
    out_image = torch.full((3, size, size), PAD_GREY)
    out_mask = torch.zeros(1, size, size)
    out_image[:, :nh, :nw] = image  # top-left, as HQ-SAM pads right and bottom
    out_mask[:, :nh, :nw] = mask
    return out_image, out_mask


class HQSegDataset(torch.utils.data.Dataset):
    """The image / mask pairs of the chosen HQSeg-44K subsets found under `root` (by default the seven
    training subsets; names in `SUBSETS`). Absent subsets are skipped and listed in `skipped` (with a
    warning); if none is present, FileNotFoundError names the folders looked for."""

    def __init__(self, root: Path, size: int = 512, subsets=None, fit: str = "pad"):
        if fit not in FITS:
            raise ValueError(f"fit must be one of {FITS}, not {fit!r}")
        names = [s.name for s in TRAIN_SUBSETS] if subsets is None else list(subsets)
        unknown = [n for n in names if n not in SUBSETS]
        if unknown:
            raise ValueError(f"unknown HQSeg subsets {unknown}; known: {sorted(SUBSETS)}")
        chosen = tuple(SUBSETS[n] for n in names)
        self.root = _data_root(Path(root), chosen)
        self.size, self.fit = size, fit
        self.items: list[tuple[str, Path, Path]] = []  # (subset, image, ground truth)
        self.skipped: list[str] = []
        self.counts: dict[str, int] = {}
        for subset in chosen:
            pairs = _pairs(self.root, subset)
            if not pairs:
                self.skipped.append(subset.name)
                continue
            self.counts[subset.name] = len(pairs)
            self.items += [(subset.name, im, gt) for im, gt in pairs]
        if not self.items:
            looked = "\n".join(
                f"  {s.name}: {self.root / s.im_dir} (*{s.im_ext})"
                + ("" if s.gt_dir == s.im_dir else f" and {self.root / s.gt_dir} (*{s.gt_ext})")
                for s in chosen
            )
            raise FileNotFoundError(
                f"no HQSeg-44K subset found under {Path(root)}; looked for images with ground truth in:\n{looked}\n"
                "Point root at HQ-SAM's `data` folder (DIS5K, cascade_psp, thin_object_detection)."
            )
        if self.skipped:
            warnings.warn(f"HQSeg-44K subsets not found under {self.root}, skipped: {', '.join(self.skipped)}", stacklevel=2)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        _, im, gt = self.items[i]
        image, mask = load_image(im), load_mask(gt)
        if mask.shape[-2:] != image.shape[-2:]:  # a ground truth of another size follows its image
            mask = F.interpolate(mask[None], size=image.shape[-2:], mode="bilinear", antialias=True, align_corners=False)[0].clamp(0, 1)
        return fit_square(image, mask, self.size, self.fit)
