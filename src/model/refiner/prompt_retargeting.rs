//! Prompt retargeting: each prompt token renewed from the enhanced image embedding at the
//! prompt's own position, through a zero-started gate.

use candle_core::{D, Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::model::nn::{LayerNorm, Linear};
use crate::model::sam::prompt_encoder::PointInputs;

/// Samples per side of the grid averaged inside a box.
const BOX_GRID: usize = 4;

#[derive(Debug)]
pub struct PromptRetargeting {
    token_norm: LayerNorm,
    feature_norm: LayerNorm,
    mlp_in: Linear,
    mlp_out: Linear,
    gate: Tensor,
    mask_proj: Linear,
    mask_gate: Tensor,
}

impl PromptRetargeting {
    pub fn new(dim: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            // nn.LayerNorm's default eps.
            token_norm: LayerNorm::new(dim, 1e-5, vb.pp("token_norm"))?,
            feature_norm: LayerNorm::new(dim, 1e-5, vb.pp("feature_norm"))?,
            mlp_in: Linear::new(2 * dim, dim, vb.pp("mlp").pp(0))?,
            mlp_out: Linear::new(dim, dim, vb.pp("mlp").pp(2))?,
            gate: vb.get(dim, "gate")?,
            mask_proj: Linear::new(dim, dim, vb.pp("mask_proj"))?,
            mask_gate: vb.get(dim, "mask_gate")?,
        })
    }

    /// Renewed (sparse [B, N, C], dense [B, C, G, G]). `points` are what the prompt encoder
    /// received (input pixels; it appended one padding token when there was no box), `embedding`
    /// the enhanced image embedding [B, C, G, G], `mask_input` the mask prompt [B, 1, 4G, 4G].
    pub fn forward(
        &self,
        sparse: &Tensor,
        dense: &Tensor,
        points: Option<&PointInputs>,
        embedding: &Tensor,
        mask_input: Option<&Tensor>,
        stride: f32,
    ) -> Result<(Tensor, Tensor)> {
        let (b, n, c) = sparse.dims3()?;
        let mut sparse = sparse.clone();
        if n > 0 {
            let (coords, labels) = host_points(points, b, n)?;
            let taps = tap_matrix(&coords, &labels, embedding.dims4()?, stride);
            let (_, _, gh, gw) = embedding.dims4()?;
            // Every token's feature is a weighted sum of embedding cells: one matrix product.
            let cells = embedding
                .permute((0, 2, 3, 1))?
                .reshape((b * gh * gw, c))?
                .contiguous()?;
            let taps = Tensor::from_vec(taps, (b * n, b * gh * gw), embedding.device())?
                .to_dtype(embedding.dtype())?;
            let feature = taps.matmul(&cells)?.reshape((b, n, c))?;
            let joined = Tensor::cat(
                &[
                    self.token_norm.forward(&sparse)?,
                    self.feature_norm.forward(&feature)?,
                ],
                D::Minus1,
            )?;
            let update = self
                .mlp_out
                .forward(&self.mlp_in.forward(&joined)?.relu()?)?;
            let real: Vec<f32> = labels
                .iter()
                .map(|&l| if l >= 0.0 { 1.0 } else { 0.0 })
                .collect();
            let real =
                Tensor::from_vec(real, (b, n, 1), sparse.device())?.to_dtype(sparse.dtype())?;
            sparse = (sparse + update.broadcast_mul(&self.gate)?.broadcast_mul(&real)?)?;
        }
        let mut dense = dense.clone();
        if let Some(mask) = mask_input {
            let weight = candle_nn::ops::sigmoid(&mask.avg_pool2d(4)?)?; // [B, 1, G, G]
            let total = weight.sum((2, 3))?; // [B, 1]
            let mean = embedding
                .broadcast_mul(&weight)?
                .sum((2, 3))?
                .broadcast_div(&(total + 1e-6)?)?; // [B, C]
            let added = self
                .mask_proj
                .forward(&mean)?
                .broadcast_mul(&self.mask_gate)?
                .reshape((b, c, 1, 1))?;
            dense = dense.broadcast_add(&added)?;
        }
        Ok((sparse, dense))
    }
}

/// The prompt's points on the host, padded as the prompt encoder pads them: ([B·N] (x, y),
/// [B·N] labels).
fn host_points(
    points: Option<&PointInputs>,
    b: usize,
    n: usize,
) -> Result<(Vec<[f32; 2]>, Vec<f32>)> {
    let mut coords = vec![[0f32; 2]; b * n];
    let mut labels = vec![-1f32; b * n];
    if let Some(p) = points {
        let given = p.num_points();
        let xy = p
            .coords
            .to_dtype(candle_core::DType::F32)?
            .to_vec3::<f32>()?;
        let lab = p
            .labels
            .to_dtype(candle_core::DType::F32)?
            .to_vec2::<f32>()?;
        for i in 0..b {
            for j in 0..given.min(n) {
                coords[i * n + j] = [xy[i][j][0], xy[i][j][1]];
                labels[i * n + j] = lab[i][j];
            }
        }
    }
    Ok((coords, labels))
}

/// [B·N, B·G·G] weights of each token's feature over the embedding's cells. A click: the
/// bilinear sample at it. A box corner (labels 2, 3): half the sample at the corner, half the
/// mean of a 4×4 grid of samples inside its prompt's box. Padding tokens: the sample at (0, 0)
/// (their update is masked out).
fn tap_matrix(
    coords: &[[f32; 2]],
    labels: &[f32],
    (b, _, gh, gw): (usize, usize, usize, usize),
    stride: f32,
) -> Vec<f32> {
    let n = coords.len() / b;
    let cells = gh * gw;
    let mut taps = vec![0f32; coords.len() * b * cells];
    for i in 0..b {
        let tokens = i * n..(i + 1) * n;
        let corner = |label: f32| {
            tokens
                .clone()
                .find(|&t| labels[t] == label)
                .map(|t| coords[t])
        };
        let bbox = corner(2.0).zip(corner(3.0));
        for t in tokens.clone() {
            let row = &mut taps[t * b * cells + i * cells..t * b * cells + (i + 1) * cells];
            let is_corner = labels[t] == 2.0 || labels[t] == 3.0;
            match (is_corner, bbox) {
                (true, Some((lo, hi))) => {
                    add_bilinear(row, coords[t], 0.5, (gh, gw), stride);
                    let share = 0.5 / (BOX_GRID * BOX_GRID) as f32;
                    for gy in 0..BOX_GRID {
                        for gx in 0..BOX_GRID {
                            let ty = (gy as f32 + 0.5) / BOX_GRID as f32;
                            let tx = (gx as f32 + 0.5) / BOX_GRID as f32;
                            let p = [lo[0] + tx * (hi[0] - lo[0]), lo[1] + ty * (hi[1] - lo[1])];
                            add_bilinear(row, p, share, (gh, gw), stride);
                        }
                    }
                }
                _ => add_bilinear(row, coords[t], 1.0, (gh, gw), stride),
            }
        }
    }
    taps
}

/// Adds `scale` × the bilinear weights of point `xy` (input pixels; cell (i, j) centred at
/// ((j + 0.5)·stride, (i + 0.5)·stride), clamped to the border cells) to `row` [h·w].
fn add_bilinear(
    row: &mut [f32],
    [px, py]: [f32; 2],
    scale: f32,
    (h, w): (usize, usize),
    stride: f32,
) {
    let axis = |p: f32, cells: usize| -> (usize, usize, f32) {
        let x = (p / stride - 0.5).clamp(0.0, (cells - 1) as f32);
        let x0 = if cells > 1 {
            x.floor().min((cells - 2) as f32)
        } else {
            x.floor()
        };
        let x1 = (x0 as usize + 1).min(cells - 1);
        (x0 as usize, x1, x - x0)
    };
    let (x0, x1, fx) = axis(px, w);
    let (y0, y1, fy) = axis(py, h);
    row[y0 * w + x0] += scale * (1.0 - fx) * (1.0 - fy);
    row[y0 * w + x1] += scale * fx * (1.0 - fy);
    row[y1 * w + x0] += scale * (1.0 - fx) * fy;
    row[y1 * w + x1] += scale * fx * fy;
}
