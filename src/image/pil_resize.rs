//! PIL's bicubic resize of 8-bit images, bit for bit (`Image.resize(size)`, Pillow's default
//! `BICUBIC`, `libImaging/Resample.c`).
//!
//! The official video loader resizes every frame this way before normalising it. Pillow computes
//! the filter taps in double precision, rounds them to 22-bit fixed point, and rounds to 8 bits
//! after each of its two passes (horizontal, then vertical); a float resize, even an exact one,
//! differs by ±1 on some pixels, which shows in the logits. So this is integer arithmetic, as
//! Pillow's.

use rayon::prelude::*;

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
fn clip8(sum: i32) -> u8 {
    (sum >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Rows of fewer bytes than this are merged into one task, so that rayon's scheduling does not
/// cost more than the arithmetic (a 256-pixel output row is about 10k multiply-adds).
const MIN_BYTES_PER_TASK: usize = 1 << 12;

/// Resizes like `PIL.Image.resize((width, height))` with the default bicubic filter.
///
/// Sums are 32-bit, as Pillow's (`int ss`): the weights of a sample sum to 2^22 and its positive
/// ones to less than 1.2 · 2^22, so 255 times them cannot overflow. Integer sums are exact, so
/// each pass may add its terms in any order and split its rows across threads and still give
/// Pillow's bytes.
pub fn resize_bicubic(image: &RgbImage, width: usize, height: usize) -> RgbImage {
    let (iw, ih) = (image.width, image.height);
    let horizontal = taps(iw, width);
    let vertical = taps(ih, height);
    // Pillow skips a pass whose size does not change.
    let (first_row, last_row) = if ih != height {
        let last = vertical.last().map_or(0, |t| t.first + t.weights.len());
        (vertical.first().map_or(0, |t| t.first), last)
    } else {
        (0, ih)
    };
    let source = &image.pixels[first_row * iw * 3..last_row * iw * 3];
    let rows = if iw != width {
        // Horizontal pass over the rows the vertical pass will read.
        let mut out = vec![0u8; (last_row - first_row) * width * 3];
        out.par_chunks_exact_mut(width * 3)
            .zip(source.par_chunks_exact(iw * 3))
            .with_min_len(rows_per_task(width))
            .for_each(|(out_row, src)| resize_row(src, &horizontal, out_row));
        out
    } else {
        source.to_vec()
    };
    if ih == height {
        return RgbImage {
            width,
            height,
            pixels: rows,
        };
    }
    let row_bytes = width * 3;
    let mut out = vec![0u8; height * row_bytes];
    out.par_chunks_exact_mut(row_bytes)
        .zip(vertical.par_iter())
        .with_min_len(rows_per_task(width))
        .for_each_init(
            || vec![0i32; row_bytes],
            |sums, (out_row, tap)| {
                // Whole rows at a time: the inner loop runs along contiguous bytes.
                sums.fill(1 << (PRECISION_BITS - 1));
                let first = (tap.first - first_row) * row_bytes;
                let taps = rows[first..].chunks_exact(row_bytes);
                for (row, &w) in taps.zip(&tap.weights) {
                    for (sum, &v) in sums.iter_mut().zip(row) {
                        *sum += v as i32 * w;
                    }
                }
                for (o, &sum) in out_row.iter_mut().zip(sums.iter()) {
                    *o = clip8(sum);
                }
            },
        );
    RgbImage {
        width,
        height,
        pixels: out,
    }
}

/// Rows of `width` RGB pixels per task.
fn rows_per_task(width: usize) -> usize {
    (MIN_BYTES_PER_TASK / (width * 3).max(1)).max(1)
}

/// One row of RGB pixels resampled along its length with `taps`.
fn resize_row(src: &[u8], taps: &[Taps], out: &mut [u8]) {
    for (tap, px) in taps.iter().zip(out.chunks_exact_mut(3)) {
        let mut sums = [1i32 << (PRECISION_BITS - 1); 3];
        let pixels = src[tap.first * 3..].chunks_exact(3);
        for (p, &w) in pixels.zip(&tap.weights) {
            for c in 0..3 {
                sums[c] += p[c] as i32 * w;
            }
        }
        for c in 0..3 {
            px[c] = clip8(sums[c]);
        }
    }
}
