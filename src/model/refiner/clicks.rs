//! The user's clicks in mask refinement (`pin_clicks` and `clicks_honoured` of
//! `models/refiner/refiner.py`): pinned in the guided filter's input, and counted on refined
//! masks by the image path's click guard.
//!
//! The guided filter fits the mask to the colours around each pixel. Where the stride-4 mask
//! missed a click, the filter would learn the wrong colour there and spread it; pinned, it
//! learns the user's answer instead. Neither rule is trained: a 1-to-10-click evaluation chose
//! them and the radius (the model card).

use candle_core::{DType, Result, Tensor};

/// Each click pins its label within S / `PIN_DIVISOR` input pixels (8 for a 256 model).
pub const PIN_DIVISOR: usize = 32;

/// A positive or negative click, in pixels of the model's S×S input.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Click {
    pub x: f32,
    pub y: f32,
    pub positive: bool,
}

impl Click {
    /// The clicks among prompt points (label 1 positive, 0 negative); box corners (2, 3) and
    /// padding (-1) are not clicks.
    pub fn from_points(coords: &[[f32; 2]], labels: &[f32]) -> Vec<Self> {
        coords
            .iter()
            .zip(labels)
            .filter(|(_, l)| **l == 0.0 || **l == 1.0)
            .map(|(&[x, y], &l)| Self {
                x,
                y,
                positive: l == 1.0,
            })
            .collect()
    }

    /// The input pixel the click falls on: its coordinates floored, inside the input.
    fn pixel(&self, size: usize) -> (usize, usize) {
        let inside = |v: f32| (v.floor().max(0.0) as usize).min(size - 1);
        (inside(self.y), inside(self.x))
    }
}

/// Probabilities `p` [N, 1, S, S] with each click's label (1 or 0) written where a pixel's
/// centre is within the pin radius of it, later clicks over earlier ones. Distances in f32, as
/// the reference computes them, so the same pixels are pinned.
pub fn pin(p: &Tensor, clicks: &[Click]) -> Result<Tensor> {
    let size = p.dim(3)?;
    let radius = (size / PIN_DIVISOR) as f32;
    let reach = radius * radius;
    let mut keep = vec![1f32; size * size];
    let mut value = vec![0f32; size * size];
    for click in clicks {
        let label = f32::from(u8::from(click.positive));
        for row in 0..size {
            let dy = row as f32 + 0.5 - click.y;
            let dy2 = dy * dy;
            if dy2 > reach {
                continue;
            }
            for col in 0..size {
                let dx = col as f32 + 0.5 - click.x;
                if dy2 + dx * dx <= reach {
                    keep[row * size + col] = 0.0;
                    value[row * size + col] = label;
                }
            }
        }
    }
    let plane =
        |v: Vec<f32>| Tensor::from_vec(v, (1, 1, size, size), p.device())?.to_dtype(p.dtype());
    // p × 1 + 0 is p exactly, p × 0 + label the label exactly.
    p.broadcast_mul(&plane(keep)?)?
        .broadcast_add(&plane(value)?)
}

/// For masks of logits [K, S, S], how many of `clicks` each honours: a positive click's pixel
/// > 0, a negative click's <= 0.
pub fn honoured(logits: &Tensor, clicks: &[Click]) -> Result<Vec<usize>> {
    let (k, size, _) = logits.dims3()?;
    if clicks.is_empty() {
        return Ok(vec![0; k]);
    }
    let index: Vec<u32> = clicks
        .iter()
        .map(|c| {
            let (row, col) = c.pixel(size);
            (row * size + col) as u32
        })
        .collect();
    let index = Tensor::from_vec(index, clicks.len(), logits.device())?;
    let at_clicks = logits
        .reshape((k, size * size))?
        .index_select(&index, 1)?
        .to_dtype(DType::F32)?
        .to_vec2::<f32>()?;
    Ok(at_clicks
        .iter()
        .map(|values| {
            values
                .iter()
                .zip(clicks)
                .filter(|(v, c)| (**v > 0.0) == c.positive)
                .count()
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn click(x: f32, y: f32, positive: bool) -> Click {
        Click { x, y, positive }
    }

    /// A pin is the disk of pixel centres within S/32, later clicks win, other pixels keep p.
    #[test]
    fn pins_write_the_label_on_a_disk() -> Result<()> {
        let size = 64; // radius 2
        let p = Tensor::full(0.25f32, (2, 1, size, size), &Device::Cpu)?;
        let pinned = pin(&p, &[click(10.0, 20.0, true), click(11.0, 20.0, false)])?;
        let v = pinned.get(1)?.squeeze(0)?.to_vec2::<f32>()?;
        // The second (negative) click's disk covers the first's centre pixel.
        assert_eq!(v[19][10], 0.0);
        // Pixel (x 7, y 19): centre (7.5, 19.5), 2.55 from the first click, outside its disk.
        assert_eq!(v[19][7], 0.25);
        // Pixel (x 8, y 19): centre 1.58 from the first, 2.55 from the second: positive.
        assert_eq!(v[19][8], 1.0);
        // Pixel (x 12, y 21): centre (12.5, 21.5), sqrt(4.5) = 2.12 from the second: untouched.
        assert_eq!(v[21][12], 0.25);
        let pinned_pixels = v.iter().flatten().filter(|&&x| x != 0.25).count();
        assert_eq!(pinned_pixels, 16); // two overlapping 12-pixel disks
        Ok(())
    }

    /// Honouring is read at the click's floored pixel, clamped inside the input.
    #[test]
    fn honoured_counts_clicks_on_the_right_side() -> Result<()> {
        let mut values = vec![-1f32; 2 * 4 * 4];
        values[4 + 1] = 3.0; // mask 0, row 1, col 1
        values[16 + 15] = 2.0; // mask 1, row 3, col 3
        let logits = Tensor::from_vec(values, (2, 4, 4), &Device::Cpu)?;
        let clicks = [
            click(1.9, 1.2, true),
            click(9.0, 7.0, true), // outside: pixel (3, 3)
            click(0.0, 0.0, false),
        ];
        assert_eq!(honoured(&logits, &clicks)?, vec![2, 2]);
        assert_eq!(honoured(&logits, &clicks[..1])?, vec![1, 0]);
        Ok(())
    }
}
