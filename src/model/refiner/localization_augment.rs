//! Localization augment: the global features attend, cell by cell, to the crops' local
//! features of their own region, and take the result through a gate that starts at zero.

use candle_core::{Device, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::crops::LocalFeatures;
use crate::model::nn::{Conv2d, LayerNorm2d};

/// Query/key/value width at every level.
pub const ATTENTION_DIM: usize = 32;
/// Each global cell reads a WINDOW × WINDOW patch of local cells: its 2×2 block and a ring of one.
const WINDOW: usize = 4;
/// SAM 2's decoder-side features: stride 4 (`conv_s0`), stride 8 (`conv_s1`), stride 16.
pub const LEVEL_CHANNELS: [usize; 3] = [32, 64, 256];
/// Each level's cells per side of one stride-16 cell.
const CELLS_PER_EMBEDDING_CELL: [usize; 3] = [4, 2, 1];

/// One level's window cross-attention from global cells to local cells (single head).
#[derive(Debug)]
struct LevelAttention {
    query_norm: LayerNorm2d,
    key_norm: LayerNorm2d,
    q_proj: Conv2d,
    k_proj: Conv2d,
    v_proj: Conv2d,
    out_proj: Conv2d,
    /// `[WINDOW²]`: a learned logit bias per window position.
    position_bias: Tensor,
    /// `[C]`: starts at zero, so untrained weights leave SAM 2's features unchanged.
    gate: Tensor,
}

impl LevelAttention {
    fn new(channels: usize, vb: VarBuilder) -> Result<Self> {
        let conv1 = |i, o, name| Conv2d::new(i, o, 1, 1, 0, 1, vb.pp(name));
        Ok(Self {
            query_norm: LayerNorm2d::new(channels, vb.pp("query_norm"))?,
            key_norm: LayerNorm2d::new(channels, vb.pp("key_norm"))?,
            q_proj: conv1(channels, ATTENTION_DIM, "q_proj")?,
            k_proj: conv1(channels, ATTENTION_DIM, "k_proj")?,
            v_proj: conv1(channels, ATTENTION_DIM, "v_proj")?,
            out_proj: conv1(ATTENTION_DIM, channels, "out_proj")?,
            position_bias: vb.get(WINDOW * WINDOW, "position_bias")?,
            gate: vb.get(channels, "gate")?,
        })
    }

    /// global [B, C, h, w], local [B, C, 2h, 2w] -> the gated update [B, C, h, w].
    fn forward(&self, global: &Tensor, local: &Tensor) -> Result<Tensor> {
        let (_, c, h, w) = global.dims4()?;
        let q = self.q_proj.forward(&self.query_norm.forward(global)?)?; // [B, D, h, w]
        let normed = self.key_norm.forward(local)?;
        let k = windows(&self.k_proj.forward(&normed)?)?; // [B, D, W², h, w]
        let v = windows(&self.v_proj.forward(&normed)?)?;
        let logits = (q.unsqueeze(2)?.broadcast_mul(&k)?.sum(1)? / (ATTENTION_DIM as f64).sqrt())?;
        let bias = window_bias(&self.position_bias, h, w, global.device())?;
        let attention = candle_nn::ops::softmax(&logits.broadcast_add(&bias)?, 1)?; // [B, W², h, w]
        let out = attention.unsqueeze(1)?.broadcast_mul(&v)?.sum(2)?; // [B, D, h, w]
        let gate = self.gate.reshape((1, c, 1, 1))?;
        self.out_proj.forward(&out)?.broadcast_mul(&gate)
    }
}

/// [B, D, 2h, 2w] -> [B, D, WINDOW², h, w]: for global cell (i, j), the local cells of rows
/// 2i - 1 .. 2i + 2 and columns 2j - 1 .. 2j + 2 (zero outside the grid), row-major. Built from
/// the four phases of the local grid (even/odd rows × even/odd columns), each shifted by at most
/// one cell: a quarter of the copies that slicing the padded grid sixteen times would make.
fn windows(local: &Tensor) -> Result<Tensor> {
    let (b, d, h2, w2) = local.dims4()?;
    let (h, w) = (h2 / 2, w2 / 2);
    let phases = local.reshape((b, d, h, 2, w, 2))?;
    // Window offset 0..4 reads local row 2i + offset - 1: (phase, shift in cells).
    const TAPS: [(usize, isize); WINDOW] = [(1, -1), (0, 0), (1, 0), (0, 1)];
    let mut parts = Vec::with_capacity(WINDOW * WINDOW);
    for (py, sy) in TAPS {
        for (px, sx) in TAPS {
            let phase = phases
                .narrow(3, py, 1)?
                .narrow(5, px, 1)?
                .reshape((b, d, h, w))?;
            parts.push(shift(&shift(&phase, sy, 2)?, sx, 3)?);
        }
    }
    Tensor::stack(&parts, 2)
}

/// Cell i of the result holds cell i + `by` of `x` along `dim` (zero beyond the edge).
fn shift(x: &Tensor, by: isize, dim: usize) -> Result<Tensor> {
    let n = x.dim(dim)?;
    match by {
        0 => Ok(x.clone()),
        -1 => x.pad_with_zeros(dim, 1, 0)?.narrow(dim, 0, n),
        1 => x.pad_with_zeros(dim, 0, 1)?.narrow(dim, 1, n),
        _ => candle_core::bail!("shift by {by}"),
    }
}

/// [1, WINDOW², h, w]: each window position's learned bias, and -inf where the position falls
/// outside the 2h × 2w local grid.
fn window_bias(position_bias: &Tensor, h: usize, w: usize, device: &Device) -> Result<Tensor> {
    let ring = (WINDOW - 2) / 2;
    let inside = |offset: usize, cell: usize, cells: usize| {
        let local = 2 * cell + offset;
        local >= ring && local - ring < 2 * cells
    };
    let mut mask = Vec::with_capacity(WINDOW * WINDOW * h * w);
    for dy in 0..WINDOW {
        for dx in 0..WINDOW {
            for i in 0..h {
                for j in 0..w {
                    let ok = inside(dy, i, h) && inside(dx, j, w);
                    mask.push(if ok { 0f32 } else { f32::NEG_INFINITY });
                }
            }
        }
    }
    let mask = Tensor::from_vec(mask, (1, WINDOW * WINDOW, h, w), device)?
        .to_dtype(position_bias.dtype())?;
    mask.broadcast_add(&position_bias.reshape((1, WINDOW * WINDOW, 1, 1))?)
}

#[derive(Debug)]
pub struct LocalizationAugment {
    levels: Vec<LevelAttention>,
    /// Every level's gate is zero: the features pass unchanged.
    silent: bool,
}

impl LocalizationAugment {
    pub fn new(vb: VarBuilder) -> Result<Self> {
        let levels = LEVEL_CHANNELS
            .iter()
            .enumerate()
            .map(|(i, &c)| LevelAttention::new(c, vb.pp("levels").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        let mut silent = true;
        for level in &levels {
            silent &= super::all_zero(&level.gate)?;
        }
        Ok(Self { levels, silent })
    }

    /// Whether every gate is closed (the output is the input, and the crops are not read).
    pub fn is_silent(&self) -> bool {
        self.silent
    }

    /// `features`: the global [stride-4, stride-8, stride-16 embedding]; returns them enhanced
    /// over `local.region`, unchanged elsewhere.
    pub fn forward(&self, features: &[Tensor; 3], local: &LocalFeatures) -> Result<[Tensor; 3]> {
        let (r, c, h, w) = local.region;
        let mut out = features.clone();
        if self.silent {
            return Ok(out);
        }
        for (level, attention) in self.levels.iter().enumerate() {
            let f = CELLS_PER_EMBEDDING_CELL[level];
            let feature = &features[level];
            let (_, _, gh, gw) = feature.dims4()?;
            let region = feature.narrow(2, r * f, h * f)?.narrow(3, c * f, w * f)?;
            let update = attention
                .forward(&region.contiguous()?, &local.levels[level])?
                .pad_with_zeros(2, r * f, gh - (r + h) * f)?
                .pad_with_zeros(3, c * f, gw - (c + w) * f)?;
            out[level] = (feature + update)?;
        }
        Ok(out)
    }
}
