"""Generated scenes for training and evaluating the nano model: images and video clips with exact masks.

A scene is a background and a few objects, each a shape with its own texture, drawn back to front. Everything
is a function of continuous coordinates, so a clip is the same scene rendered at successive times: objects
move (sinusoidal paths that may leave the frame and come back), rotate and scale, occlude one another, and
carry their texture with them; the background may pan. What makes it hard on purpose:

- backgrounds are textured (smooth noise, stripes, checkers, dots, rings, bars, snow), not flat;
- half of the objects take the background's own colours and differ from it only by pattern, scale or
  orientation, so colour alone does not segment them;
- shapes are convex and concave (radial harmonics), some with holes, some with thin arms;
- scenes in the style of GStreamer's `videotestsrc pattern=ball` (a plain anti-aliased disc on the test
  patterns) are mixed in, since that is what a new user points the element at first.

Shapes are drawn anti-aliased from a signed distance (in pixels); an object's ground truth is where its own
coverage is above one half and no object in front of it covers the pixel above one half (what SAM 2 calls
the visible mask). Everything draws from one `torch.Generator`, so a seed fixes a scene.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

SIZE = 256

# The colours of videotestsrc's SMPTE bars (75 %), and its default ball colours.
BARS = torch.tensor(
    [
        [0.75, 0.75, 0.75],
        [0.75, 0.75, 0.0],
        [0.0, 0.75, 0.75],
        [0.0, 0.75, 0.0],
        [0.75, 0.0, 0.75],
        [0.75, 0.0, 0.0],
        [0.0, 0.0, 0.75],
    ]
)
# torch's CPU generator keeps only the low 32 bits of a seed: scene seeds live below this.
SEED_SPACE = 2**32
TEXTURES = ("flat", "noise", "stripes", "checker", "dots", "rings", "snow", "bars")


class Rand:
    """Scalars and tensors from one seeded generator."""

    def __init__(self, seed: int):
        # A larger seed would silently alias a smaller one (and a held-out scene a training scene).
        if not 0 <= seed < SEED_SPACE:
            raise ValueError(f"scene seed {seed}: expected a 32-bit seed (see SEED_SPACE)")
        self.g = torch.Generator().manual_seed(seed)

    def uniform(self, lo: float = 0.0, hi: float = 1.0) -> float:
        return lo + (hi - lo) * torch.rand((), generator=self.g).item()

    def integer(self, lo: int, hi: int) -> int:
        """In [lo, hi]."""
        return int(torch.randint(lo, hi + 1, (), generator=self.g).item())

    def chance(self, p: float) -> bool:
        return self.uniform() < p

    def choice(self, items):
        return items[self.integer(0, len(items) - 1)]

    def normal(self, std: float = 1.0) -> float:
        return std * torch.randn((), generator=self.g).item()

    def tensor(self, *shape) -> torch.Tensor:
        return torch.rand(*shape, generator=self.g)

    def colour(self) -> torch.Tensor:
        return self.tensor(3)


@dataclass
class Texture:
    """A pattern of two colours over continuous coordinates."""

    kind: str
    c1: torch.Tensor
    c2: torch.Tensor
    period: float
    angle: float
    field: torch.Tensor | None = None  # a small random grid for `noise` and `snow`
    grain: float = 0.03

    @staticmethod
    def random(r: Rand, c1: torch.Tensor | None = None, c2: torch.Tensor | None = None, kind: str | None = None):
        kind = kind or r.choice(TEXTURES)
        c1 = r.colour() if c1 is None else c1
        c2 = r.colour() if c2 is None else c2
        period = r.uniform(4.0, 40.0)
        grid = None
        if kind == "noise":
            grid = r.tensor(3 if r.chance(0.5) else 1, 12, 12)
        elif kind == "snow":
            grid = r.tensor(3, 96, 96)
        return Texture(kind, c1, c2, period, r.uniform(0, math.pi), grid, r.uniform(0.0, 0.05))

    def render(self, x: torch.Tensor, y: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Colours (3, H, W) at coordinates x, y (H, W); `noise` (H, W) is per-pixel grain in [-1, 1]."""
        ca, sa = math.cos(self.angle), math.sin(self.angle)
        u = (x * ca + y * sa) / self.period
        v = (-x * sa + y * ca) / self.period
        k = self.kind
        if k == "flat":
            t = torch.zeros_like(x)
        elif k == "stripes":
            t = (torch.sin(2 * math.pi * u) > 0).float()
        elif k == "checker":
            t = ((torch.floor(u) + torch.floor(v)) % 2).float()
        elif k == "dots":
            du, dv = u - torch.round(u), v - torch.round(v)
            t = ((du * du + dv * dv) < 0.09).float()
        elif k == "rings":
            t = 0.5 + 0.5 * torch.sin(2 * math.pi * torch.sqrt(u * u + v * v))
        elif k == "bars":
            idx = torch.floor(u).long() % len(BARS)
            return BARS[idx].permute(2, 0, 1) + self.grain * noise
        else:  # noise, snow: a random grid sampled at the coordinates
            scale = 8.0 * self.period if k == "noise" else 1.5
            t = _sample_grid(self.field, x / scale, y / scale)
            if t.shape[0] == 3 and k == "snow":
                return t + self.grain * noise
            t = t.mean(0) if k == "snow" else t[0] if t.shape[0] == 1 else t
        if t.dim() == 3:  # a colour noise field: each channel mixes the two colours on its own
            out = self.c1[:, None, None] * (1 - t) + self.c2[:, None, None] * t
        else:
            out = self.c1[:, None, None] * (1 - t[None]) + self.c2[:, None, None] * t[None]
        return out + self.grain * noise


def _sample_grid(grid: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of a periodic grid (C, h, w) at grid-unit coordinates x, y."""
    c, h, w = grid.shape
    gx = (torch.remainder(x, w) / w) * 2 - 1
    gy = (torch.remainder(y, h) / h) * 2 - 1
    coords = torch.stack([gx, gy], dim=-1)[None]
    return F.grid_sample(grid[None], coords, mode="bilinear", align_corners=False, padding_mode="reflection")[0]


@dataclass
class Shape:
    """A signed distance in object units: positive inside. Radial blob, optional hole, optional arms."""

    radius: float
    harmonics: list[tuple[int, float, float]]  # (k, amplitude, phase)
    aspect: float
    hole: tuple[float, float, float] | None  # (dx, dy, radius), in units of `radius`
    arms: list[tuple[float, float, float]]  # (angle, length, half width), length in units of `radius`

    @staticmethod
    def random(r: Rand, radius: float) -> "Shape":
        kind = r.choice(("disc", "convex", "concave", "concave", "star"))
        harmonics = []
        if kind != "disc":
            top = {"convex": 0.08, "concave": 0.25, "star": 0.4}[kind]
            for k in range(2, 7):
                harmonics.append((k, r.uniform(0, top) / (1 if kind == "star" else k / 2), r.uniform(0, 2 * math.pi)))
        hole = None
        if kind != "star" and r.chance(0.25):
            hole = (r.uniform(-0.15, 0.15), r.uniform(-0.15, 0.15), r.uniform(0.25, 0.45))
        arms = []
        if r.chance(0.3):
            for _ in range(r.integer(1, 3)):
                arms.append((r.uniform(0, 2 * math.pi), r.uniform(1.3, 2.2), r.uniform(2.5, 6.0)))
        aspect = 1.0 if kind == "disc" and r.chance(0.5) else r.uniform(0.6, 1.0)
        return Shape(radius, harmonics, aspect, hole, arms)

    def distance(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        v = v / self.aspect
        rho = torch.sqrt(u * u + v * v)
        phi = torch.atan2(v, u)
        bound = torch.ones_like(phi)
        for k, a, p in self.harmonics:
            bound = bound + a * torch.cos(k * phi + p)
        d = (bound.clamp_min(0.2) * self.radius - rho) * self.aspect
        if self.hole is not None:
            hx, hy, hr = self.hole
            dh = torch.sqrt((u - hx * self.radius) ** 2 + (v - hy * self.radius) ** 2) - hr * self.radius
            d = torch.minimum(d, dh)
        for angle, length, half_width in self.arms:
            ca, sa = math.cos(angle), math.sin(angle)
            along = (u * ca + v * sa).clamp(0, length * self.radius)
            across = torch.sqrt((u - along * ca) ** 2 + (v - along * sa) ** 2)
            d = torch.maximum(d, half_width - across)
        return d


@dataclass
class Motion:
    """Where an object is at time t (frames): centre, angle and scale."""

    centre: tuple[float, float]
    amplitude: tuple[float, float]
    omega: tuple[float, float]
    phase: tuple[float, float]
    drift: tuple[float, float]
    angle: float
    spin: float
    scale: float
    growth: float

    @staticmethod
    def random(r: Rand, still: bool = False) -> "Motion":
        amp = 0.0 if still else r.uniform(10, 140)
        return Motion(
            centre=(r.uniform(30, SIZE - 30), r.uniform(30, SIZE - 30)),
            amplitude=(amp * r.uniform(0.2, 1.0), amp * r.uniform(0.2, 1.0)),
            omega=(r.uniform(0.02, 0.12), r.uniform(0.02, 0.12)),
            phase=(r.uniform(0, 2 * math.pi), r.uniform(0, 2 * math.pi)),
            drift=(0.0, 0.0) if still else (r.normal(0.5), r.normal(0.5)),
            angle=r.uniform(0, 2 * math.pi),
            spin=0.0 if still else r.normal(0.03),
            scale=1.0,
            growth=0.0 if still else r.normal(0.006),
        )

    def at(self, t: float) -> tuple[float, float, float, float]:
        cx = self.centre[0] + self.amplitude[0] * math.sin(self.omega[0] * t + self.phase[0]) + self.drift[0] * t
        cy = self.centre[1] + self.amplitude[1] * math.sin(self.omega[1] * t + self.phase[1]) + self.drift[1] * t
        scale = self.scale * math.exp(max(-0.7, min(0.5, self.growth * t)))
        return cx, cy, self.angle + self.spin * t, scale


@dataclass
class SceneObject:
    shape: Shape
    texture: Texture
    motion: Motion
    # How it was drawn: "plain", "camouflaged" (the background's colours) or "ball" (a videotestsrc-style
    # scene). Only the evaluation reads it, to say where the figures are lost.
    kind: str = "plain"


@dataclass
class Scene:
    background: Texture
    objects: list[SceneObject]
    pan: tuple[float, float]
    seed: int

    def render(self, t: float) -> tuple[torch.Tensor, torch.Tensor]:
        """The image (3, H, W) in [0, 1] and the visible masks (N, H, W) bool at time t."""
        image, visible, _ = self.render_with_whole(t)
        return image, visible

    def render_with_whole(self, t: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`render`, and beside the visible masks each object's whole mask (N, H, W) bool: where it would
        show were nothing in front of it. Where the two differ, the object is partly hidden."""
        ys, xs = torch.meshgrid(torch.arange(SIZE, dtype=torch.float32), torch.arange(SIZE, dtype=torch.float32), indexing="ij")
        noise = torch.rand(SIZE, SIZE, generator=torch.Generator().manual_seed(self.seed * 1000 + int(t))) * 2 - 1
        image = self.background.render(xs + self.pan[0] * t, ys + self.pan[1] * t, noise)
        covers = []
        for obj in self.objects:
            cx, cy, angle, scale = obj.motion.at(t)
            ca, sa = math.cos(angle), math.sin(angle)
            dx, dy = xs - cx, ys - cy
            u = (dx * ca + dy * sa) / scale
            v = (-dx * sa + dy * ca) / scale
            coverage = (obj.shape.distance(u, v) * scale + 0.5).clamp(0, 1)
            image = image * (1 - coverage) + obj.texture.render(u, v, noise) * coverage
            covers.append(coverage)
        image = image.clamp(0, 1)
        if not covers:
            none = torch.zeros(0, SIZE, SIZE, dtype=torch.bool)
            return image, none, none
        inside = torch.stack(covers) > 0.5
        # Visible: inside and not inside any object drawn later (in front).
        in_front = torch.flip(torch.cumsum(torch.flip(inside.int(), [0]), 0), [0]) - inside.int()
        return image, inside & (in_front == 0), inside


def random_scene(seed: int, still: bool = False) -> Scene:
    """A scene: 1 to 5 textured objects on a textured background, or videotestsrc-style balls."""
    r = Rand(seed)
    if r.chance(0.2):
        return _ball_scene(r, seed, still)
    background = Texture.random(r)
    objects = []
    for _ in range(r.integer(1, 5)):
        shape = Shape.random(r, r.uniform(14, 55))
        camouflaged = r.chance(0.5)
        if camouflaged:
            # Camouflage: the background's colours, another pattern (or the same pattern at another
            # scale and angle), so only texture and edges tell the object apart.
            kind = r.choice([k for k in TEXTURES if k not in ("bars", "snow")])
            c1 = (background.c1 + 0.08 * (r.tensor(3) - 0.5)).clamp(0, 1)
            c2 = (background.c2 + 0.08 * (r.tensor(3) - 0.5)).clamp(0, 1)
            if kind == "flat":
                c1 = 0.5 * (c1 + c2)
            texture = Texture.random(r, c1, c2, kind)
            if kind == background.kind:
                texture.period = background.period * r.choice((0.4, 0.5, 2.0, 2.5))
                texture.angle = background.angle + r.uniform(0.5, 1.0)
        else:
            texture = Texture.random(r)
        objects.append(SceneObject(shape, texture, Motion.random(r, still), "camouflaged" if camouflaged else "plain"))
    pan = (0.0, 0.0) if still or r.chance(0.6) else (r.normal(1.0), r.normal(1.0))
    return Scene(background, objects, pan, seed)


def _ball_scene(r: Rand, seed: int, still: bool) -> Scene:
    """videotestsrc-style: plain discs (white by default) on a solid colour or a test pattern."""
    kind = r.choice(("flat", "flat", "bars", "checker", "snow", "stripes", "noise"))
    c1 = torch.zeros(3) if kind == "flat" and r.chance(0.4) else r.colour()
    background = Texture.random(r, c1, r.colour(), kind)
    if kind == "checker":
        background.period = r.choice((1.0, 2.0, 4.0, 8.0))
        background.angle = 0.0
    objects = []
    for _ in range(r.integer(1, 3)):
        colour = torch.ones(3) if r.chance(0.4) else r.colour()
        shape = Shape(r.uniform(8, 40), [], r.uniform(0.65, 1.0), None, [])
        texture = Texture("flat", colour, colour, 10.0, 0.0, None, r.uniform(0.0, 0.02))
        objects.append(SceneObject(shape, texture, Motion.random(r, still), "ball"))
    return Scene(background, objects, (0.0, 0.0), seed)
