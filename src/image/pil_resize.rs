//! PIL's bicubic resize of 8-bit images, bit for bit (`Image.resize(size)`, Pillow's default
//! `BICUBIC`, `libImaging/Resample.c`).
//!
//! The official video loader resizes every frame this way before normalising it. Pillow computes
//! the filter taps in double precision, rounds them to 22-bit fixed point, and rounds to 8 bits
//! after each of its two passes (horizontal, then vertical); a float resize, even an exact one,
//! differs by ±1 on some pixels, which shows in the logits. So this is integer arithmetic, as
//! Pillow's.

use super::RgbImage;

/// Fixed-point precision of Pillow's 8-bit resampling (`PRECISION_BITS`).
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Pillow's bicubic kernel (a = -0.5), support 2.
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// The taps of one output sample: first input index and fixed-point weights.
struct Taps {
    first: usize,
    weights: Vec<i32>,
}

/// `precompute_coeffs` + `normalize_coeffs_8bpc` for `in_size` -> `out_size` (whole image box).
fn taps(in_size: usize, out_size: usize) -> Vec<Taps> {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = 2.0 * filterscale;
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            let ss = 1.0 / filterscale;
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let raw: Vec<f64> = (xmin..xmax)
                .map(|x| bicubic((x as f64 - center + 0.5) * ss))
                .collect();
            let total: f64 = raw.iter().sum();
            let scale_fixed = (1u32 << PRECISION_BITS) as f64;
            let weights = raw
                .iter()
                .map(|&w| {
                    let w = if total != 0.0 { w / total } else { w };
                    if w < 0.0 {
                        (-0.5 + w * scale_fixed) as i32
                    } else {
                        (0.5 + w * scale_fixed) as i32
                    }
                })
                .collect();
            Taps {
                first: xmin,
                weights,
            }
        })
        .collect()
}

/// `clip8`: a fixed-point sum back to 8 bits.
fn clip8(sum: i64) -> u8 {
    (sum >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Resizes like `PIL.Image.resize((width, height))` with the default bicubic filter.
pub fn resize_bicubic(image: &RgbImage, width: usize, height: usize) -> RgbImage {
    let (iw, ih) = (image.width, image.height);
    let half = 1i64 << (PRECISION_BITS - 1);
    let horizontal = taps(iw, width);
    let vertical = taps(ih, height);
    // Pillow skips a pass whose size does not change.
    let mut rows = image.pixels.clone();
    let mut row_width = iw;
    let (first_row, last_row) = if ih != height {
        let last = vertical.last().map_or(0, |t| t.first + t.weights.len());
        (vertical.first().map_or(0, |t| t.first), last)
    } else {
        (0, ih)
    };
    if iw != width {
        // Horizontal pass over the rows the vertical pass will read.
        let mut out = vec![0u8; (last_row - first_row) * width * 3];
        for (y, out_row) in (first_row..last_row).zip(out.chunks_exact_mut(width * 3)) {
            let src = &image.pixels[y * iw * 3..(y + 1) * iw * 3];
            for (x, tap) in horizontal.iter().enumerate() {
                for c in 0..3 {
                    let mut sum = half;
                    for (k, w) in tap.weights.iter().enumerate() {
                        sum += src[(tap.first + k) * 3 + c] as i64 * *w as i64;
                    }
                    out_row[x * 3 + c] = clip8(sum);
                }
            }
        }
        rows = out;
        row_width = width;
    } else {
        rows = rows[first_row * iw * 3..last_row * iw * 3].to_vec();
    }
    if ih == height {
        return RgbImage {
            width,
            height,
            pixels: rows,
        };
    }
    let mut out = vec![0u8; height * width * 3];
    for (y, tap) in vertical.iter().enumerate() {
        for x in 0..row_width * 3 {
            let mut sum = half;
            for (k, w) in tap.weights.iter().enumerate() {
                sum += rows[(tap.first - first_row + k) * row_width * 3 + x] as i64 * *w as i64;
            }
            out[y * width * 3 + x] = clip8(sum);
        }
    }
    RgbImage {
        width,
        height,
        pixels: out,
    }
}
