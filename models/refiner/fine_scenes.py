"""Generated fine-structure scenes for training the SAM2Refiner modules: images and clips with soft masks.

The refiner (arXiv 2502.09660) exists for what a 256 px SAM 2 loses: hair, wires, fences, lace, leaves full
of holes, text, jagged edges. It looks at the frame's four quadrants, each upsampled to the model's size, so
its training frames are rendered at twice that size (512 by default) and the quadrants hold real detail,
and its ground truth is each object's anti-aliased coverage in [0, 1] rather than a hard mask.

A scene is a textured background (the nano generator's, `models/nano/scenes.py`) and one to four objects
drawn back to front, at least one of them fine:

- `hair`: tufts of smooth random curves 0.7-3 px wide that taper, straight, wavy or curly, from a root
  line, or radiating from a solid head (fur, dandelions), or fringing a solid blob (a head with hair);
- `strands`: a few long loose curves across the frame (cables, loose hairs, grass);
- `mesh`: grids and diamond meshes of thin lines (fences, netting) and chain-link (interlocking zigzag
  wires), the background visible through the holes;
- `leaf`: a serrated leaf or blob eaten by holes, or a skeleton leaf (a network of veins);
- `lace`: doilies (scalloped discs with rings of holes and ring-shaped slits) and nets of ring outlines;
- `text`: lines of characters in Pillow's bundled font, thin strokes at small sizes;
- `jagged`: fractal outlines (random midpoint displacement, Koch-like bumps, 1/f radial noise);
- `solid`: the nano generator's plain blobs, so not every object is fine.

Half of the objects take the background's colours, perturbed a little, so colour alone does not find them,
and some backgrounds carry fine clutter of their own (strands, meshes, text, ... fixed to the background and
in no object's alpha), so thinness alone does not either.

Fine objects are rasterised with Pillow at `SUPER` times the resolution and box-filtered down, which gives
each pixel its covered fraction (a 0.7 px hair covers at most ~0.8 of a pixel); strokes are drawn as outline
polygons (Pillow's own wide lines have quantised, angle-dependent widths); solid shapes use the nano
generator's signed distance, which is already anti-aliased. The image is composited with those coverages,
and an object's alpha is its visible coverage: its own coverage times one minus that of everything in front
of it. As in the nano generator, every object moves on a smooth path (translation, rotation, scale, and it
may leave the frame), so `render(t)` at successive t is a clip; a seed fixes the scene.

    /opt/sam2-reference/bin/python models/refiner/fine_scenes.py --sheet /tmp/fine_scenes_sheet.png
"""

from __future__ import annotations

import argparse
import math
import string
import sys
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageChops, ImageDraw, ImageFont

sys.path.append(str(Path(__file__).resolve().parent.parent / "nano"))  # after this folder: both have a train.py
from scenes import TEXTURES, Motion, Rand, Shape, Texture  # noqa: E402

SIZE = 512
SUPER = 4  # supersampling factor of the rasterised objects
NANO_SIZE = 256  # the nano generator's frame, which its textures and motions are sized for

KINDS = ("hair", "strands", "mesh", "leaf", "lace", "text", "jagged", "solid")
KIND_WEIGHTS = (2.5, 1.0, 1.5, 1.5, 1.0, 1.0, 1.0, 1.5)
FINE_KINDS = tuple(k for k in KINDS if k != "solid")


# --- primitives, in object coordinates (pixels of a SIZE frame at scale 1, origin at the object's centre) ---


@dataclass
class Poly:
    """A filled polygon; fill 255 adds to the object, 0 cuts a hole."""

    points: np.ndarray  # (N, 2)
    fill: int = 255


@dataclass
class Line:
    """A polyline stroked `width` pixels wide (one width, or one per point for a taper), mitred joints;
    closed when its last point is its first."""

    points: np.ndarray  # (N, 2)
    width: float | np.ndarray
    fill: int = 255


@dataclass
class Circle:
    """A disc (width 0) or a ring `width` pixels wide."""

    x: float
    y: float
    radius: float
    width: float = 0.0
    fill: int = 255


@dataclass
class Bitmap:
    """A coverage image (Pillow 'L') whose pixel (0, 0) corner is at `origin`, `SUPER` pixels per unit."""

    image: Image.Image
    origin: tuple[float, float]


@dataclass
class FineObject:
    kind: str
    texture: Texture
    motion: Motion
    extent: float  # radius around the centre that holds the whole object, at scale 1
    prims: list = field(default_factory=list)  # drawn in order
    shape: Shape | None = None  # for `solid`: a signed distance instead of primitives


# --- small random helpers (everything draws from the scene's one generator) ---


def _normal(r: Rand, *shape) -> np.ndarray:
    return torch.randn(*shape, generator=r.g).double().numpy()


def _uniform(r: Rand, lo: float, hi: float, *shape) -> np.ndarray:
    return lo + (hi - lo) * torch.rand(*shape, generator=r.g).double().numpy()


def _circle_points(x: float, y: float, radius: float, n: int = 24) -> np.ndarray:
    a = np.linspace(0, 2 * math.pi, n, endpoint=False)
    return np.stack([x + radius * np.cos(a), y + radius * np.sin(a)], 1)


def _radial_outline(r: Rand, radius: float, n: int = 256, top: float = 0.2, harmonics: int = 5) -> np.ndarray:
    """A smooth random blob: radius modulated by a few low harmonics."""
    a = np.linspace(0, 2 * math.pi, n, endpoint=False)
    rho = np.ones(n)
    amps, phases = _uniform(r, 0, top, harmonics), _uniform(r, 0, 2 * math.pi, harmonics)
    for k in range(harmonics):
        rho += amps[k] / (1 + k / 2) * np.cos((k + 2) * a + phases[k])
    rho = np.clip(rho, 0.35, None) * radius
    return np.stack([rho * np.cos(a), rho * np.sin(a)], 1)


def _inside(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """Even-odd test of points (M, 2) against a closed polygon (N, 2)."""
    x, y = points[:, :1], points[:, 1:]
    x1, y1 = polygon[None, :, 0], polygon[None, :, 1]
    x2, y2 = np.roll(x1, -1, 1), np.roll(y1, -1, 1)
    crosses = ((y1 > y) != (y2 > y)) & (x < (x2 - x1) * (y - y1) / (y2 - y1 + 1e-12) + x1)
    return crosses.sum(1) % 2 == 1


def _extent(prims: list) -> float:
    far = 0.0
    for p in prims:
        if isinstance(p, (Poly, Line)):
            far = max(far, float(np.sqrt((p.points**2).sum(1)).max()) + float(np.max(getattr(p, "width", 0.0))))
        elif isinstance(p, Circle):
            far = max(far, math.hypot(p.x, p.y) + p.radius + p.width)
        elif isinstance(p, Bitmap):
            w, h = p.image.size
            ox, oy = p.origin
            corners = np.array([[ox, oy], [ox + w / SUPER, oy], [ox, oy + h / SUPER], [ox + w / SUPER, oy + h / SUPER]])
            far = max(far, float(np.sqrt((corners**2).sum(1)).max()))
    return far + 2.0


# --- curves ---


def _curves(r: Rand, roots: np.ndarray, headings: np.ndarray, lengths: np.ndarray, bend: float, wave: float = 0.0, period: float = 20.0):
    """Smooth random curves (M, steps + 1, 2) from each root: the heading bends slowly (a random ramp and
    two random sines along the length, `bend` radians at most about) and, for wavy or curly hair, swings
    `wave` radians either side every `period` pixels."""
    m = len(roots)
    steps = int(min(240, max(24, 6 * lengths.max() / period if wave else 24)))
    along = np.linspace(0.0, 1.0, steps + 1)[None, :-1]
    g = _normal(r, m, 3) * 0.6
    f, phi = _uniform(r, 0.5, 2.0, m, 2), _uniform(r, 0, 2 * math.pi, m, 2)
    slow = g[:, :1] * along + g[:, 1:2] * np.sin(math.pi * f[:, :1] * along + phi[:, :1]) + g[:, 2:] * np.sin(math.pi * f[:, 1:] * along + phi[:, 1:])
    angle = headings[:, None] + bend * slow
    if wave:
        own = period * _uniform(r, 0.8, 1.25, m, 1)
        angle = angle + wave * np.sin(2 * math.pi * along * lengths[:, None] / own + _uniform(r, 0, 2 * math.pi, m, 1))
    ds = lengths[:, None] / steps
    step = np.stack([np.cos(angle), np.sin(angle)], -1) * ds[..., None]
    return np.concatenate([roots[:, None], roots[:, None] + np.cumsum(step, 1)], 1)


def _hair_style(r: Rand) -> dict:
    """Straight, wavy or curly."""
    style = r.choice(("straight", "straight", "wavy", "curly"))
    if style == "straight":
        return dict(bend=r.uniform(0.1, 0.8))
    if style == "wavy":
        return dict(bend=r.uniform(0.2, 0.8), wave=r.uniform(0.25, 0.6), period=r.uniform(15, 45))
    return dict(bend=r.uniform(0.2, 0.8), wave=r.uniform(0.7, 1.2), period=r.uniform(6, 14))


def _tapered(points: np.ndarray, width: float, fill: int = 255) -> Line:
    """A strand thinning from `width` at its root to a third of it (at least half a pixel) at its tip."""
    along = np.linspace(0.0, 1.0, len(points))
    return Line(points, np.maximum(0.5, width * (1.0 - 0.67 * along**1.5)), fill)


def _strand_widths(r: Rand, m: int) -> np.ndarray:
    lo = r.uniform(0.7, 1.6)
    hi = min(3.0, lo + r.uniform(0.0, 1.4))
    return _uniform(r, lo, hi, m)


def make_hair(r: Rand, k: float) -> list:
    """A tuft from a root line, fur radiating from a head, or a blob fringed with hair."""
    style = r.choice(("tuft", "tuft", "radial", "fringe"))
    look = _hair_style(r)
    prims: list = []
    if style == "tuft":
        m = r.integer(25, 110)
        length = r.uniform(90, 260) * k
        base = r.uniform(10, 70) * k
        s = _uniform(r, -0.5, 0.5, m)
        roots = np.stack([s * base, 0.1 * base * _normal(r, m)], 1) + np.array([0.0, length / 2])
        headings = -math.pi / 2 + s * r.uniform(0.0, 1.2) + _normal(r, m) * r.uniform(0.03, 0.25)
        curves = _curves(r, roots, headings, length * _uniform(r, 0.55, 1.0, m), **look)
    else:
        head = r.uniform(25, 75) * k
        outline = _radial_outline(r, head, top=0.1 if style == "radial" else 0.25)
        prims.append(Poly(outline))
        m = r.integer(60, 160) if style == "radial" else r.integer(80, 220)
        idx = torch.randint(0, len(outline), (m,), generator=r.g).numpy()
        roots = outline[idx] * _uniform(r, 0.75, 0.97, m)[:, None]
        out = np.arctan2(roots[:, 1], roots[:, 0])
        length = r.uniform(40, 150) * k if style == "radial" else r.uniform(15, 70) * k
        headings = out + _normal(r, m) * (0.15 if style == "radial" else 0.5)
        curves = _curves(r, roots, headings, length * _uniform(r, 0.5, 1.0, m), **look)
    for curve, width in zip(curves, _strand_widths(r, len(curves))):
        prims.append(_tapered(curve, float(width)))
    return prims


def make_strands(r: Rand, k: float) -> list:
    """A few long loose curves: cables, stray hairs, grass blades."""
    m = r.integer(1, 6)
    span = r.uniform(200, 700) * k
    roots = np.stack([-span / 2 + _normal(r, m) * 10 * k, _normal(r, m) * r.uniform(5, 60) * k], 1)
    headings = _normal(r, m) * 0.25
    look = _hair_style(r) if r.chance(0.3) else dict(bend=r.uniform(0.1, 1.5))
    curves = _curves(r, roots, headings, span * _uniform(r, 0.8, 1.0, m), **look)
    widths = _strand_widths(r, m)
    prims: list = []
    for curve, width in zip(curves, widths):
        prims.append(_tapered(curve, float(width)) if r.chance(0.5) else Line(curve, float(width)))
    return prims


# --- meshes, leaves, lace ---


def _clip_to_region(offset: float, direction: np.ndarray, half: tuple[float, float] | float):
    """The parameter interval where the line offset * normal + s * direction lies in the region: a rectangle
    (half sizes) or a disc (radius)."""
    normal = np.array([-direction[1], direction[0]])
    base = offset * normal
    if isinstance(half, tuple):
        lo, hi = -1e9, 1e9
        for axis in (0, 1):
            if abs(direction[axis]) < 1e-9:
                if abs(base[axis]) > half[axis]:
                    return None
                continue
            a = (-half[axis] - base[axis]) / direction[axis]
            b = (half[axis] - base[axis]) / direction[axis]
            lo, hi = max(lo, min(a, b)), min(hi, max(a, b))
        return (lo, hi) if hi > lo else None
    if abs(offset) >= half:
        return None
    h = math.sqrt(half * half - offset * offset)
    return -h, h


def make_mesh(r: Rand, k: float) -> list:
    """Wire fences and nets clipped to a rectangle or a disc: a grid or diamonds of straight lines, or
    chain-link (zigzag wires, each the mirror of its neighbour, near or at its corners)."""
    pitch = r.uniform(7, 30) * k
    width = r.uniform(0.7, 2.6) if r.chance(0.7) else r.uniform(0.7, 1.2)
    region = (r.uniform(90, 260) * k, r.uniform(90, 260) * k) if r.chance(0.7) else r.uniform(90, 240) * k
    style = r.choice(("grid", "diamond", "chain"))
    if style == "grid":
        angles = (0.0, math.pi / 2)
    elif style == "diamond":
        half = r.uniform(0.45, 0.8)
        angles = (half, -half)
    else:
        angles = (0.0,)
        period = pitch * r.uniform(1.2, 2.2)
        amplitude = pitch / 2 * r.uniform(0.8, 1.1)  # apart (zigzags), touching, or hooked into each other
    reach = math.hypot(*region) if isinstance(region, tuple) else region
    prims: list = []
    for angle in angles:
        d = np.array([math.cos(angle), math.sin(angle)])
        normal = np.array([-d[1], d[0]])
        for index, offset in enumerate(np.arange(-reach, reach, pitch) + pitch * r.uniform(0, 1)):
            span = _clip_to_region(offset, d, region)
            if span is None:
                continue
            if style == "chain":
                s = np.concatenate([[span[0]], np.arange(math.ceil(span[0] / period * 2), span[1] / period * 2) * period / 2, [span[1]]])
                zigzag = 2 * np.abs(2 * (s / period - np.floor(s / period + 0.5))) - 1
                pts = offset * normal + s[:, None] * d + ((-1) ** index * amplitude * zigzag)[:, None] * normal
            else:
                pts = offset * normal + np.array(span)[:, None] * d
            prims.append(Line(pts, width))
    if r.chance(0.5):  # a frame around it
        if isinstance(region, tuple):
            a, b = region
            border = np.array([[-a, -b], [a, -b], [a, b], [-a, b], [-a, -b]])
        else:
            border = _circle_points(0, 0, region, 96)
            border = np.concatenate([border, border[:1]])
        prims.append(Line(border, r.uniform(1.5, 5.0)))
    return prims


def _leaf_outline(r: Rand, k: float) -> tuple[np.ndarray, float]:
    length = r.uniform(140, 380) * k
    width = length * r.uniform(0.25, 0.55)
    teeth, depth = r.integer(8, 40), r.uniform(0.0, 0.08) if r.chance(0.6) else 0.0
    t = np.linspace(0, 1, 200)
    half = width / 2 * np.sin(math.pi * t) ** r.uniform(0.6, 1.0) * (1 + r.uniform(-0.3, 0.3) * (t - 0.5))
    half = half * (1 - depth * (1 - np.abs(2 * ((teeth * t) % 1) - 1)))
    x = (t - 0.5) * length
    upper = np.stack([x, -half], 1)
    lower = np.stack([x[::-1], half[::-1]], 1)
    return np.concatenate([upper, lower]), length


def _cells(r: Rand, half: float, pitch: float, shrink: float) -> list[np.ndarray]:
    """Jittered-grid quads shrunk towards their centres: the gaps between them form a vein network."""
    n = int(2 * half / pitch) + 2
    g = np.stack(np.meshgrid(np.arange(n), np.arange(n), indexing="xy"), -1) * pitch - half
    g = g + _uniform(r, -0.3, 0.3, n, n, 2) * pitch
    quads = np.stack([g[:-1, :-1], g[:-1, 1:], g[1:, 1:], g[1:, :-1]], 2).reshape(-1, 4, 2)
    centres = quads.mean(1, keepdims=True)
    return list(centres + (quads - centres) * shrink)


def make_leaf(r: Rand, k: float) -> list:
    """A leaf or blob eaten by holes, or a skeleton leaf whose flesh is gone between the veins."""
    style = r.choice(("eaten", "skeleton", "perforated"))
    if style == "perforated":
        outline = _radial_outline(r, r.uniform(70, 190) * k)
        length = 2 * float(np.sqrt((outline**2).sum(1)).max())
    else:
        outline, length = _leaf_outline(r, k)
    prims: list = [Poly(outline)]
    if style == "skeleton":
        pitch = length * r.uniform(0.035, 0.09)
        cells = _cells(r, length / 2, pitch, r.uniform(0.55, 0.85))
        keep = _inside(np.stack([c.mean(0) for c in cells]), outline * 0.92)
        prims += [Poly(c, 0) for c, kept in zip(cells, keep) if kept]
        prims.append(Line(np.concatenate([outline, outline[:1]]), r.uniform(1.0, 3.0)))
        prims.append(Line(np.array([[-length / 2, 0.0], [length / 2, 0.0]]), r.uniform(1.5, 4.0)))
    else:
        m = r.integer(6, 45)
        centres = outline[torch.randint(0, len(outline), (m,), generator=r.g).numpy()] * _uniform(r, 0.0, 0.85, m)[:, None]
        radii = length * _uniform(r, 0.008, 0.06, m) * (0.5 if style == "eaten" else 1.0)
        for (x, y), rad in zip(centres, radii):
            if style == "eaten":
                hole = _radial_outline(r, float(rad), n=24, top=0.4) + np.array([x, y])
            else:
                hole = _circle_points(float(x), float(y), float(rad), 32)
            prims.append(Poly(hole, 0))
        if style == "eaten" and r.chance(0.5):  # a midrib
            prims.append(Line(np.array([[-length / 2, 0.0], [length / 2, 0.0]]), r.uniform(1.0, 3.0)))
    return prims


def make_lace(r: Rand, k: float) -> list:
    """A doily (scalloped disc with rings of holes and ring slits) or a net of ring outlines."""
    radius = r.uniform(80, 220) * k
    thin = r.uniform(0.8, 2.2)
    if r.chance(0.4):  # a net of overlapping ring outlines, like machine lace
        pitch = r.uniform(10, 28) * k
        ring = pitch * r.uniform(0.55, 0.9)
        prims: list = []
        rows = int(radius / (pitch * 0.866)) + 1
        for j in range(-rows, rows + 1):
            y = j * pitch * 0.866
            for i in range(-int(radius / pitch) - 1, int(radius / pitch) + 2):
                x = (i + 0.5 * (j % 2)) * pitch
                if math.hypot(x, y) < radius - ring:
                    prims.append(Circle(x, y, ring, thin))
        prims.append(Circle(0.0, 0.0, radius - ring * 0.3, r.uniform(1.5, 4.0)))
        return prims
    lobes = r.integer(12, 40)
    a = np.linspace(0, 2 * math.pi, 720, endpoint=False)
    rho = radius * (1 - 0.06 * np.abs(np.sin(lobes * a / 2)))
    prims = [Poly(np.stack([rho * np.cos(a), rho * np.sin(a)], 1))]
    rings = r.integer(2, 5)
    for i in range(rings):
        rr = radius * (0.15 + 0.75 * (i + 0.5) / rings)
        band = radius * 0.75 / rings
        m = max(6, int(2 * math.pi * rr / (band * r.uniform(0.8, 1.4))))
        hole = min(band * r.uniform(0.25, 0.42), math.pi * rr / m * 0.8)
        phase = r.uniform(0, 2 * math.pi)
        ring_inside = r.chance(0.5)
        for j in range(m):
            x, y = rr * math.cos(phase + 2 * math.pi * j / m), rr * math.sin(phase + 2 * math.pi * j / m)
            prims.append(Circle(x, y, hole, 0.0, 0))
            if ring_inside and hole > 5:
                prims.append(Circle(x, y, hole * 0.5, thin))
        if i + 1 < rings and r.chance(0.7):  # a ring-shaped slit between two rings of holes
            prims.append(Circle(0.0, 0.0, rr + band / 2, r.uniform(0.8, 2.0), 0))
    if r.chance(0.6):
        prims.append(Circle(0.0, 0.0, radius * 0.1, 0.0, 0))
    return prims


# --- text, jagged outlines ---


@lru_cache(maxsize=64)
def _font(size: int) -> ImageFont.FreeTypeFont:
    """Pillow's bundled scalable font (Pillow >= 10.1 built with FreeType)."""
    font = ImageFont.load_default(size=size)
    if not isinstance(font, ImageFont.FreeTypeFont):
        raise RuntimeError("text needs Pillow >= 10.1 with FreeType (ImageFont.load_default(size=...))")
    return font


def make_text(r: Rand, k: float) -> list:
    """One to three lines of characters in Pillow's bundled font, rasterised at SUPER times the size."""
    font_size = r.uniform(12, 70) * k
    letters = string.ascii_letters + string.digits + "&@#%?!"
    lines = []
    for _ in range(r.integer(1, 3)):
        lines.append("".join(r.choice(letters) for _ in range(r.integer(2, 9))))
    text = "\n".join(lines)
    font = _font(max(2, round(font_size)) * SUPER)
    stroke = r.integer(0, 2) * SUPER if r.chance(0.3) else 0
    probe = ImageDraw.Draw(Image.new("L", (1, 1)))
    left, top, right, bottom = probe.multiline_textbbox((0, 0), text, font=font, stroke_width=stroke)
    image = Image.new("L", (right - left + 4, bottom - top + 4), 0)
    ImageDraw.Draw(image).multiline_text((2 - left, 2 - top), text, fill=255, font=font, stroke_width=stroke, stroke_fill=255)
    w, h = image.size
    return [Bitmap(image, (-w / SUPER / 2, -h / SUPER / 2))]


def _midpoint_displace(r: Rand, polygon: np.ndarray, rounds: int, roughness: float, koch: bool) -> np.ndarray:
    """Subdivide each edge; displace the new point along the edge normal (random, or a Koch-like bump)."""
    for _ in range(rounds):
        nxt = np.roll(polygon, -1, 0)
        edge = nxt - polygon
        normal = np.stack([edge[:, 1], -edge[:, 0]], 1)
        n = len(polygon)
        if koch:  # a triangular bump (outwards or inwards) on the middle third of each edge
            sign = np.where(_uniform(r, 0, 1, n) < 0.7, 1.0, -1.0)[:, None]
            a, b = polygon + edge / 3, polygon + 2 * edge / 3
            tip = polygon + edge / 2 + sign * normal * roughness * 0.866 * _uniform(r, 0.6, 1.0, n)[:, None]
            polygon = np.stack([polygon, a, tip, b], 1).reshape(-1, 2)
        else:
            mid = polygon + edge / 2 + normal * roughness * _normal(r, n)[:, None]
            polygon = np.stack([polygon, mid], 1).reshape(-1, 2)
    return polygon


def make_jagged(r: Rand, k: float) -> list:
    """A fractal outline: midpoint displacement, Koch-like bumps, or radial 1/f noise."""
    radius = r.uniform(60, 180) * k
    style = r.choice(("displace", "koch", "noise"))
    if style == "noise":
        a = np.linspace(0, 2 * math.pi, 1500, endpoint=False)
        top = r.integer(40, 200)
        ks = np.arange(2, top)
        amps = r.uniform(0.15, 0.4) * ks ** -r.uniform(0.7, 1.2) * _normal(r, len(ks))
        phases = _uniform(r, 0, 2 * math.pi, len(ks))
        rho = 1 + (amps[:, None] * np.cos(ks[:, None] * a[None] + phases[:, None])).sum(0)
        rho = radius * np.clip(rho, 0.25, None)
        return [Poly(np.stack([rho * np.cos(a), rho * np.sin(a)], 1))]
    n = r.integer(3, 7)
    start = _circle_points(0, 0, radius, n) * _uniform(r, 0.75, 1.1, n)[:, None]
    if style == "koch":
        return [Poly(_midpoint_displace(r, start, r.integer(3, 4), r.uniform(0.2, 0.3), koch=True))]
    return [Poly(_midpoint_displace(r, start, r.integer(6, 8), r.uniform(0.08, 0.18), koch=False))]


MAKERS = {
    "hair": make_hair,
    "strands": make_strands,
    "mesh": make_mesh,
    "leaf": make_leaf,
    "lace": make_lace,
    "text": make_text,
    "jagged": make_jagged,
}


# --- rasterising ---


STROKE_BIAS = 0.75  # canvas pixels: Pillow's polygon fill also fills its edges, widening a stroke by ~this


def _stroke(points: np.ndarray, half: np.ndarray) -> list[np.ndarray]:
    """Outline polygons of a polyline (canvas pixels) with half widths per point. An open polyline is one
    polygon (mitred joints, flat ends); a closed one is two overlapping open halves."""
    if len(points) > 3 and np.allclose(points[0], points[-1]):
        m = len(points) // 2
        wrap = np.concatenate([points[m:], points[1:2]]), np.concatenate([half[m:], half[1:2]])
        return _stroke(points[: m + 2], half[: m + 2]) + _stroke(*wrap)
    step = np.diff(points, axis=0)
    keep = np.concatenate([[True], np.abs(step).sum(1) > 1e-6])
    points, half = points[keep], half[keep]
    if len(points) < 2:
        return []
    d = np.diff(points, axis=0)
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    n = np.stack([-d[:, 1], d[:, 0]], 1)  # segment normals
    after = np.concatenate([n, n[-1:]])  # the normal of the segment leaving each point
    m = np.concatenate([n[:1], n[:-1] + n[1:], n[-1:]])
    m /= np.linalg.norm(m, axis=1, keepdims=True).clip(1e-9)
    miter = 1.0 / np.clip((m * after).sum(1), 0.5, 1.0)
    offset = m * (half * miter)[:, None]
    return [np.concatenate([points + offset, (points - offset)[::-1]])]


def _draw(prims: list, size: tuple[int, int], to_canvas) -> Image.Image:
    """Draws primitives, in order, on a SUPER-resolution canvas. `to_canvas` is (a map from object points
    (N, 2) to canvas pixels, canvas pixels per object unit, a map from a bitmap's origin to Pillow's affine)."""
    canvas = Image.new("L", size, 0)
    draw = ImageDraw.Draw(canvas)
    points_to_canvas, unit, bitmap_affine = to_canvas
    for p in prims:
        if isinstance(p, Poly):
            draw.polygon([tuple(q) for q in points_to_canvas(p.points).tolist()], fill=p.fill)
        elif isinstance(p, Line):
            half = np.maximum(0.05, (np.broadcast_to(p.width, len(p.points)) * unit - STROKE_BIAS) / 2)
            for outline in _stroke(points_to_canvas(p.points), half):
                draw.polygon([tuple(q) for q in outline.tolist()], fill=p.fill)
        elif isinstance(p, Circle):
            (x, y), rad = points_to_canvas(np.array([[p.x, p.y]]))[0], p.radius * unit
            box = [x - rad, y - rad, x + rad, y + rad]
            if rad < 0.5:
                continue
            if p.width > 0:
                draw.ellipse(box, outline=p.fill, width=max(1, round(p.width * unit)))
            else:
                draw.ellipse(box, fill=p.fill)
        elif isinstance(p, Bitmap):
            warped = p.image.transform(size, Image.Transform.AFFINE, bitmap_affine(p.origin), resample=Image.Resampling.BILINEAR)
            canvas = ImageChops.lighter(canvas, warped)
            draw = ImageDraw.Draw(canvas)
    return canvas


def _box_filter(canvas: Image.Image) -> torch.Tensor:
    """SUPER x SUPER blocks of a canvas averaged: the covered fraction of each pixel, in [0, 1]."""
    a = torch.from_numpy(np.array(canvas))
    h, w = a.shape[0] // SUPER, a.shape[1] // SUPER
    return a.view(h, SUPER, w, SUPER).sum((1, 3), dtype=torch.int32).float() / (255.0 * SUPER * SUPER)


def _coverage(obj: FineObject, pose, crop, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """The object's coverage over a crop (y0, y1, x0, x1) of the frame at a pose (cx, cy, angle, scale)."""
    cx, cy, angle, scale = pose
    y0, y1, x0, x1 = crop
    ca, sa = math.cos(angle), math.sin(angle)
    if obj.shape is not None:  # a signed distance, anti-aliased as the nano generator does
        dx, dy = xs - cx, ys - cy
        u, v = (dx * ca + dy * sa) / scale, (-dx * sa + dy * ca) / scale
        return (obj.shape.distance(u, v) * scale + 0.5).clamp(0, 1)

    # Frame pixel x (centre at x) spans canvas [(x - x0) * S, (x - x0 + 1) * S); Pillow draws at pixel centres.
    def points(p: np.ndarray) -> np.ndarray:
        fx = cx + scale * (p[:, 0] * ca - p[:, 1] * sa)
        fy = cy + scale * (p[:, 0] * sa + p[:, 1] * ca)
        return np.stack([(fx - x0 + 0.5) * SUPER - 0.5, (fy - y0 + 0.5) * SUPER - 0.5], 1)

    def bitmap_affine(origin):
        # Canvas corner coordinates -> bitmap corner coordinates (Pillow's AFFINE maps output to input).
        bx, by = origin
        f = 1.0 / (scale * SUPER)
        ox, oy = x0 - 0.5 - cx, y0 - 0.5 - cy
        return (
            SUPER * ca * f, SUPER * sa * f, SUPER * ((ca * ox + sa * oy) / scale - bx),
            -SUPER * sa * f, SUPER * ca * f, SUPER * ((-sa * ox + ca * oy) / scale - by),
        )

    canvas = _draw(obj.prims, ((x1 - x0) * SUPER, (y1 - y0) * SUPER), (points, scale * SUPER, bitmap_affine))
    return _box_filter(canvas)


def _paint(image: torch.Tensor, obj: FineObject, t: float, xs, ys, noise, k: float):
    """Composites an object over `image` in place; returns its coverage and crop (y0, y1, x0, x1), or None
    when it is out of the frame."""
    n = image.shape[-1]
    pose = obj.motion.at(t)
    cx, cy, angle, scale = pose
    reach = obj.extent * scale + 1
    x0, x1 = max(0, math.floor(cx - reach)), min(n, math.ceil(cx + reach) + 1)
    y0, y1 = max(0, math.floor(cy - reach)), min(n, math.ceil(cy + reach) + 1)
    if x1 <= x0 or y1 <= y0:
        return None
    cxs, cys = xs[y0:y1, x0:x1], ys[y0:y1, x0:x1]
    cover = _coverage(obj, pose, (y0, y1, x0, x1), cxs, cys)
    ca, sa = math.cos(angle), math.sin(angle)
    dx, dy = cxs - cx, cys - cy
    u, v = (dx * ca + dy * sa) / scale, (-dx * sa + dy * ca) / scale
    colour = obj.texture.render(u * k, v * k, noise[y0:y1, x0:x1])
    image[:, y0:y1, x0:x1] = image[:, y0:y1, x0:x1] * (1 - cover) + colour * cover
    return cover, (y0, y1, x0, x1)


@dataclass
class FineScene:
    background: Texture
    objects: list[FineObject]
    pan: tuple[float, float]
    seed: int
    size: int = SIZE
    clutter: list[FineObject] = field(default_factory=list)  # fine structures painted on the background

    @property
    def kinds(self) -> list[str]:
        return [o.kind for o in self.objects]

    def render(self, t: float) -> tuple[torch.Tensor, torch.Tensor]:
        """The image (3, S, S) in [0, 1] and each object's visible coverage (K, S, S) in [0, 1] at time t."""
        n = self.size
        k = NANO_SIZE / n  # textures are sized for the nano frame
        ys, xs = torch.meshgrid(torch.arange(n, dtype=torch.float32), torch.arange(n, dtype=torch.float32), indexing="ij")
        noise = torch.rand(n, n, generator=torch.Generator().manual_seed(self.seed * 1000 + int(t))) * 2 - 1
        image = self.background.render((xs + self.pan[0] * t) * k, (ys + self.pan[1] * t) * k, noise)
        for obj in self.clutter:
            _paint(image, obj, t, xs, ys, noise, k)
        covers = torch.zeros(len(self.objects), n, n)
        for i, obj in enumerate(self.objects):
            painted = _paint(image, obj, t, xs, ys, noise, k)
            if painted is not None:
                cover, (y0, y1, x0, x1) = painted
                covers[i, y0:y1, x0:x1] = cover
        image = image.clamp(0, 1)
        # Visible: own coverage times what every object in front of it leaves uncovered.
        clear = torch.flip(torch.cumprod(torch.flip(1 - covers, [0]), 0), [0])
        in_front = torch.cat([clear[1:], torch.ones(1, n, n)]) if len(self.objects) else clear
        return image, covers * in_front


# --- scenes ---


def _object_texture(r: Rand, background: Texture, kind: str) -> Texture:
    """Half of the objects wear the background's colours, nudged a little: thin ones a flat colour near
    one of them (so they show against the other), others a pattern of both (as in the nano generator)."""
    fine = kind in ("hair", "strands", "mesh", "lace", "text")
    if r.chance(0.5):
        nudge = r.uniform(0.08, 0.2)
        c1 = (background.c1 + nudge * (2 * r.tensor(3) - 1)).clamp(0, 1)
        c2 = (background.c2 + nudge * (2 * r.tensor(3) - 1)).clamp(0, 1)
        if fine:
            return Texture.random(r, *((c1, c1) if r.chance(0.5) else (c2, c2)), kind="flat")
        return Texture.random(r, c1, c2, r.choice([t for t in TEXTURES if t not in ("bars", "snow")]))
    pattern = r.choice(("flat", "flat", "noise")) if fine else r.choice(TEXTURES[:-1])
    return Texture.random(r, kind=pattern)


def _motion(r: Rand, still: bool, size: int) -> Motion:
    """The nano generator's motion, scaled from its 256 px frame to this one."""
    m = Motion.random(r, still)
    f = size / NANO_SIZE
    m.centre = (m.centre[0] * f, m.centre[1] * f)
    m.amplitude = (m.amplitude[0] * f, m.amplitude[1] * f)
    m.drift = (m.drift[0] * f, m.drift[1] * f)
    return m


def random_object(r: Rand, kind: str, background: Texture, still: bool, size: int = SIZE) -> FineObject:
    """An object of a kind, sized for a `size` frame, with its texture and motion."""
    k = size / SIZE
    if kind == "solid":
        shape = Shape.random(r, r.uniform(30, 110) * k)
        reach = shape.radius * (1 + sum(a for _, a, _ in shape.harmonics))
        reach = max([reach] + [length * shape.radius + hw for _, length, hw in shape.arms])
        obj = FineObject(kind, None, None, reach + 2, [], shape)
    else:
        prims = MAKERS[kind](r, k)
        obj = FineObject(kind, None, None, _extent(prims), prims)
    obj.texture = _object_texture(r, background, kind)
    obj.motion = _motion(r, still, size)
    return obj


def random_fine_scene(seed: int, size: int = SIZE, still: bool = False) -> FineScene:
    """One to four objects, at least one fine, on a textured background that may carry fine clutter of
    its own (strands, wires, text... that belong to no object); `still` freezes all motion."""
    r = Rand(seed)
    background = Texture.random(r)
    pan = (0.0, 0.0) if still or r.chance(0.6) else (r.normal(1.0) * size / NANO_SIZE, r.normal(1.0) * size / NANO_SIZE)
    clutter = []
    for _ in range(r.integer(1, 3) if r.chance(0.4) else 0):
        obj = random_object(r, r.choice(FINE_KINDS), background, still=True, size=size)
        obj.motion.drift = (-pan[0], -pan[1])  # fixed on the background, which pans
        clutter.append(obj)
    count = r.integer(1, 4)
    weights = torch.tensor(KIND_WEIGHTS)
    kinds = [KINDS[i] for i in torch.multinomial(weights, count, replacement=True, generator=r.g).tolist()]
    if all(kind == "solid" for kind in kinds):
        kinds[r.integer(0, count - 1)] = r.choice(FINE_KINDS)
    objects = [random_object(r, kind, background, still, size) for kind in kinds]
    return FineScene(background, objects, pan, seed, size, clutter)


# --- a contact sheet and a timing, to look at what this draws ---


def _alpha_picture(alpha: torch.Tensor) -> torch.Tensor:
    """Each object's visible coverage in its own colour (3, S, S)."""
    palette = torch.tensor([[1.0, 0.25, 0.25], [0.25, 1.0, 0.25], [0.3, 0.5, 1.0], [1.0, 1.0, 0.25]])
    return (alpha[:, None] * palette[: len(alpha), :, None, None]).sum(0).clamp(0, 1)


def contact_sheet(seeds, path: Path, size: int = SIZE, t: float = 0.0) -> None:
    rows = []
    for seed in seeds:
        scene = random_fine_scene(seed, size)
        image, alpha = scene.render(t)
        rows.append(torch.cat([image, torch.ones(3, size, 4), _alpha_picture(alpha)], 2))
    sheet = torch.cat([torch.cat([row, torch.ones(3, 4, row.shape[2])], 1) for row in rows], 1)
    Image.fromarray((sheet.permute(1, 2, 0) * 255).round().byte().numpy()).save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sheet", type=Path, help="write a contact sheet (image | alpha per row) here")
    parser.add_argument("--seeds", type=int, nargs="*", default=list(range(8)))
    parser.add_argument("--size", type=int, default=SIZE)
    parser.add_argument("--bench", type=int, default=0, help="time this many scenes (two renders each)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.sheet:
        contact_sheet(args.seeds, args.sheet, args.size)
        print(f"wrote {args.sheet}")
    if args.bench:
        build = render = 0.0
        for seed in range(args.bench):
            start = time.perf_counter()
            scene = random_fine_scene(10_000 + seed, args.size)
            build += time.perf_counter() - start
            start = time.perf_counter()
            scene.render(0.0)
            scene.render(7.0)
            render += time.perf_counter() - start
        print(f"{args.bench} scenes at {args.size} px: build {1000 * build / args.bench:.1f} ms, "
              f"render {1000 * render / (2 * args.bench):.1f} ms per frame (1 thread)")


if __name__ == "__main__":
    main()
