//! Position encodings (`sam2/modeling/position_encoding.py`, `sam2_utils.get_1d_sine_pe`).
//!
//! All of them depend only on sizes (or on a fixed buffer), so the modules compute their dense
//! tables once at construction. The arithmetic follows the official f32 formulas step by step.

use std::f32::consts::PI;

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;

use super::config::PositionEmbeddingSineConfig;

/// `PositionEmbeddingSine`: the DETR sine encoding of a feature map's grid.
#[derive(Debug, Clone)]
pub struct PositionEmbeddingSine {
    half_feats: usize,
    temperature: f32,
    normalize: bool,
    scale: f32,
}

impl PositionEmbeddingSine {
    pub fn new(config: &PositionEmbeddingSineConfig) -> Self {
        Self {
            half_feats: config.num_pos_feats / 2,
            temperature: config.temperature as f32,
            normalize: config.normalize,
            scale: config.scale.map(|s| s as f32).unwrap_or(2.0 * PI),
        }
    }

    /// `dim_t = temperature ** (2 * (dim_t // 2) / num_pos_feats)`.
    fn dim_t(&self) -> Vec<f32> {
        (0..self.half_feats)
            .map(|i| {
                let exponent = (2 * (i / 2)) as f32 / self.half_feats as f32;
                self.temperature.powf(exponent)
            })
            .collect()
    }

    /// Interleaved sin (even) / cos (odd) of `embed / dim_t`.
    fn encode_1d(&self, embed: f32, dim_t: &[f32], out: &mut [f32]) {
        for (i, (o, d)) in out.iter_mut().zip(dim_t).enumerate() {
            let v = embed / d;
            *o = if i % 2 == 0 { v.sin() } else { v.cos() };
        }
    }

    /// The encoding of an `h`×`w` map: [1, num_pos_feats, h, w], y features first.
    pub fn encode(&self, h: usize, w: usize, dtype: DType, device: &Device) -> Result<Tensor> {
        let n = self.half_feats;
        let dim_t = self.dim_t();
        let eps = 1e-6f32;
        let mut data = vec![0f32; 2 * n * h * w];
        let mut ys = vec![0f32; n];
        let mut xs = vec![0f32; n];
        for y in 0..h {
            let mut y_embed = (y + 1) as f32;
            if self.normalize {
                y_embed = y_embed / (h as f32 + eps) * self.scale;
            }
            self.encode_1d(y_embed, &dim_t, &mut ys);
            for x in 0..w {
                let mut x_embed = (x + 1) as f32;
                if self.normalize {
                    x_embed = x_embed / (w as f32 + eps) * self.scale;
                }
                self.encode_1d(x_embed, &dim_t, &mut xs);
                for (c, v) in ys.iter().chain(xs.iter()).enumerate() {
                    data[(c * h + y) * w + x] = *v;
                }
            }
        }
        Tensor::from_vec(data, (1, 2 * n, h, w), device)?.to_dtype(dtype)
    }
}

/// `PositionEmbeddingRandom`: random Fourier features of normalised coordinates, used by the
/// prompt encoder for point prompts and for the image grid.
#[derive(Debug, Clone)]
pub struct PositionEmbeddingRandom {
    gaussian_matrix: Tensor,
}

impl PositionEmbeddingRandom {
    pub fn new(num_pos_feats: usize, vb: VarBuilder) -> Result<Self> {
        let gaussian_matrix = vb.get((2, num_pos_feats), "positional_encoding_gaussian_matrix")?;
        Ok(Self { gaussian_matrix })
    }

    /// `_pe_encoding`: coords [.., 2] in [0, 1] -> [.., 2 * num_pos_feats] (sin block, cos block).
    fn pe_encoding(&self, coords: &Tensor) -> Result<Tensor> {
        let coords = ((coords * 2.0)? - 1.0)?;
        let dims = coords.dims().to_vec();
        let rows = coords.elem_count() / 2;
        let projected = coords
            .reshape((rows, 2))?
            .matmul(&self.gaussian_matrix.to_dtype(coords.dtype())?)?;
        let projected = (projected * (2.0 * std::f64::consts::PI))?;
        let encoded = Tensor::cat(&[projected.sin()?, projected.cos()?], 1)?;
        let mut out_dims = dims;
        *out_dims.last_mut().unwrap() = encoded.dim(1)?;
        encoded.reshape(out_dims)
    }

    /// The encoding of an `h`×`w` grid of pixel centres: [1, C, h, w].
    pub fn dense(&self, h: usize, w: usize) -> Result<Tensor> {
        let device = self.gaussian_matrix.device();
        let mut grid = Vec::with_capacity(h * w * 2);
        for y in 0..h {
            for x in 0..w {
                grid.push((x as f32 + 0.5) / w as f32);
                grid.push((y as f32 + 0.5) / h as f32);
            }
        }
        let grid =
            Tensor::from_vec(grid, (h, w, 2), device)?.to_dtype(self.gaussian_matrix.dtype())?;
        self.pe_encoding(&grid)?.permute((2, 0, 1))?.unsqueeze(0)
    }

    /// `forward_with_coords`: coords [B, N, 2] as (x, y) pixels of an image of `image_size` (h, w).
    pub fn with_coords(&self, coords: &Tensor, image_size: (usize, usize)) -> Result<Tensor> {
        let (h, w) = image_size;
        // Division as the official code does it: coords / size, not coords * (1 / size).
        let size = Tensor::new(&[w as f32, h as f32], coords.device())?.to_dtype(coords.dtype())?;
        self.pe_encoding(&coords.broadcast_div(&size)?)
    }
}

/// `compute_axial_cis` as real tables for interleaved RoPE: (cos, sin), each [end_x*end_y, dim/2].
/// Half of the frequencies rotate with the x index of a token, the other half with its y index.
pub fn axial_rope_tables(
    dim: usize,
    end_x: usize,
    end_y: usize,
    theta: f64,
    dtype: DType,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let quarter = dim / 4;
    let freqs: Vec<f32> = (0..quarter)
        .map(|i| 1.0 / (theta as f32).powf((4 * i) as f32 / dim as f32))
        .collect();
    let n = end_x * end_y;
    let mut cos = Vec::with_capacity(n * 2 * quarter);
    let mut sin = Vec::with_capacity(n * 2 * quarter);
    for t in 0..n {
        let (tx, ty) = ((t % end_x) as f32, (t / end_x) as f32);
        for pos in [tx, ty] {
            for f in &freqs {
                let angle = pos * f;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
    }
    let cos = Tensor::from_vec(cos, (n, 2 * quarter), device)?.to_dtype(dtype)?;
    let sin = Tensor::from_vec(sin, (n, 2 * quarter), device)?.to_dtype(dtype)?;
    Ok((cos, sin))
}

/// `get_1d_sine_pe(pos / max, dim)`: `[N]` positions -> `[N, dim]`, sin block then cos block.
pub fn sine_pe_1d(
    positions: &[f32],
    dim: usize,
    temperature: f32,
    device: &Device,
) -> Result<Tensor> {
    let half = dim / 2;
    let dim_t: Vec<f32> = (0..half)
        .map(|i| temperature.powf((2 * (i / 2)) as f32 / half as f32))
        .collect();
    let mut data = Vec::with_capacity(positions.len() * dim);
    for &p in positions {
        data.extend(dim_t.iter().map(|d| (p / d).sin()));
        data.extend(dim_t.iter().map(|d| (p / d).cos()));
    }
    Tensor::from_vec(data, (positions.len(), dim), device)
}
