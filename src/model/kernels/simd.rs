//! Vectorisable f32 loops, compiled for AVX-512 and AVX2 and chosen at run time.
//!
//! The crate is built for the x86-64 baseline (so the plugin loads on any x86-64 machine); the
//! hot loops below are compiled a second and third time with `target_feature`, and the widest
//! version the CPU supports runs. Each body is plain Rust written so LLVM vectorises it: lane
//! arrays instead of a scalar accumulator, no calls but `floor` and `mul_add` (an instruction
//! where `fma` is enabled, a libm call in the baseline build).

/// Defines `pub fn $name(..)` that runs `$body` compiled for the best x86-64 level available.
macro_rules! multiversion {
    ($(#[$meta:meta])* pub fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        pub fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
                fn v4($($arg: $ty),*) $(-> $ret)? { body($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                fn v3($($arg: $ty),*) $(-> $ret)? { body($($arg),*) }
                if std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512dq")
                    && std::arch::is_x86_feature_detected!("avx512vl")
                {
                    // SAFETY: the CPU has every feature `v4` is compiled for.
                    return unsafe { v4($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU has every feature `v3` is compiled for.
                    return unsafe { v3($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}

const LANES: usize = 16;

/// Cephes' `expf`: range reduction by ln 2 and a degree-6 polynomial, within 2 ulp of exp on
/// [-87, 88]; smaller arguments give 0 (softmax weights that small vanish in f32 anyway).
#[inline(always)]
fn exp_approx(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const C1: f32 = 0.693_359_4;
    const C2: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.0, 88.0);
    let n = (x * LOG2E + 0.5).floor();
    let r = x - n * C1 - n * C2;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    // SAFETY: the clamp keeps n in [-125, 127], well inside i32 (an unchecked conversion
    // vectorises; `as i32` saturates and does not).
    let n = unsafe { n.to_int_unchecked::<i32>() };
    y * f32::from_bits(((n + 127) << 23) as u32)
}

multiversion! {
    /// The largest element (−∞ for an empty slice).
    pub fn max(xs: &[f32]) -> f32 {
        let mut lanes = [f32::NEG_INFINITY; LANES];
        let chunks = xs.chunks_exact(LANES);
        let rest = chunks.remainder();
        for c in chunks {
            for (l, v) in lanes.iter_mut().zip(c) {
                *l = if *v > *l { *v } else { *l };
            }
        }
        let mut m = rest.iter().fold(f32::NEG_INFINITY, |a, &b| if b > a { b } else { a });
        for l in lanes {
            m = if l > m { l } else { m };
        }
        m
    }
}

multiversion! {
    /// `xs[i] = exp(xs[i] - shift)`; returns the sum of the results.
    pub fn exp_shifted_sum(xs: &mut [f32], shift: f32) -> f32 {
        let mut lanes = [0f32; LANES];
        let mut chunks = xs.chunks_exact_mut(LANES);
        for c in &mut chunks {
            for (l, v) in lanes.iter_mut().zip(c.iter_mut()) {
                *v = exp_approx(*v - shift);
                *l += *v;
            }
        }
        let mut sum = 0f32;
        for v in chunks.into_remainder() {
            *v = exp_approx(*v - shift);
            sum += *v;
        }
        sum + lanes.iter().sum::<f32>()
    }
}

multiversion! {
    /// `xs[i] *= a`.
    pub fn scale(xs: &mut [f32], a: f32) {
        for v in xs.iter_mut() {
            *v *= a;
        }
    }
}

multiversion! {
    /// Exact-form GELU, `x/2 · (1 + erf(x/√2))`, with PyTorch's own vectorised CPU `erf`
    /// (Abramowitz & Stegun 7.1.26, absolute error below 1.5e-7), so the result tracks torch's.
    pub fn gelu_erf(xs: &mut [f32]) {
        const P: f32 = 0.327_591_1;
        const A1: f32 = 0.254_829_6;
        const A2: f32 = -0.284_496_74;
        const A3: f32 = 1.421_413_7;
        const A4: f32 = -1.453_152;
        const A5: f32 = 1.061_405_4;
        for v in xs.iter_mut() {
            let x = *v;
            let z = x * std::f32::consts::FRAC_1_SQRT_2;
            let a = z.abs();
            let t = 1.0 / (P * a + 1.0);
            let r = (((A5 * t + A4) * t + A3) * t + A2) * t + A1;
            let e = 1.0 - r * t * exp_approx(-(z * z));
            let erf = if z < 0.0 { -e } else { e };
            *v = x * 0.5 * (1.0 + erf);
        }
    }
}

multiversion! {
    /// LayerNorm of one row, two-pass: `dst = (src - mean) / sqrt(var + eps) * w + b`.
    pub fn layer_norm_row(src: &[f32], dst: &mut [f32], w: &[f32], b: &[f32], eps: f32) {
        let n = src.len() as f32;
        let mut lanes = [0f32; LANES];
        let chunks = src.chunks_exact(LANES);
        let mut sum: f32 = chunks.remainder().iter().sum();
        for c in chunks {
            for (l, v) in lanes.iter_mut().zip(c) {
                *l += *v;
            }
        }
        sum += lanes.iter().sum::<f32>();
        let mean = sum / n;
        let mut lanes = [0f32; LANES];
        let chunks = src.chunks_exact(LANES);
        let mut sq: f32 = chunks.remainder().iter().map(|v| (v - mean) * (v - mean)).sum();
        for c in chunks {
            for (l, v) in lanes.iter_mut().zip(c) {
                *l += (v - mean) * (v - mean);
            }
        }
        sq += lanes.iter().sum::<f32>();
        let inv_std = 1.0 / (sq / n + eps).sqrt();
        for (((d, s), w), b) in dst.iter_mut().zip(src).zip(w).zip(b) {
            *d = (s - mean) * inv_std * w + b;
        }
    }
}

multiversion! {
    /// `acc[i] += (x[i] - mean[i])²`.
    pub fn add_squared_diff(acc: &mut [f32], x: &[f32], mean: &[f32]) {
        for ((a, v), m) in acc.iter_mut().zip(x).zip(mean) {
            *a += (v - m) * (v - m);
        }
    }
}

multiversion! {
    /// `v[i] = 1 / sqrt(v[i] · scale + eps)`: variance sums to inverse standard deviations.
    pub fn inv_std(v: &mut [f32], scale: f32, eps: f32) {
        for x in v.iter_mut() {
            *x = 1.0 / (*x * scale + eps).sqrt();
        }
    }
}

multiversion! {
    /// `dst[i] = (src[i] - mean[i]) · inv_std[i] · w + b`.
    pub fn normalize(dst: &mut [f32], src: &[f32], mean: &[f32], inv_std: &[f32], w: f32, b: f32) {
        for (((d, s), m), i) in dst.iter_mut().zip(src).zip(mean).zip(inv_std) {
            *d = (s - m) * i * w + b;
        }
    }
}

multiversion! {
    /// `xs[i] = max(xs[i], 0)`.
    pub fn relu(xs: &mut [f32]) {
        for v in xs.iter_mut() {
            *v = if *v > 0.0 { *v } else { 0.0 };
        }
    }
}

multiversion! {
    /// `dst[i] += a * src[i]`.
    pub fn axpy(dst: &mut [f32], src: &[f32], a: f32) {
        for (d, s) in dst.iter_mut().zip(src) {
            *d += a * s;
        }
    }
}

multiversion! {
    /// One plane of a depthwise convolution, stride 1: `dst` (`out`: oh × ow) = Σ over the taps
    /// of `filt` (`kernel`: kh × kw), in row-major order from 0, of the tap times `padded`
    /// shifted by it. `padded` is the zero-padded input with rows `stride` apart, at least
    /// `ow.next_multiple_of(LANES) + kw − 1` wide and `oh + kh − 1` high, so every run of `LANES`
    /// outputs reads whole rows. Each run of outputs is summed over all the taps in registers
    /// (the same additions, in the same order, as adding one shifted plane per tap).
    pub fn depthwise_plane(dst: &mut [f32], padded: &[f32], stride: usize, filt: &[f32], out: (usize, usize), kernel: (usize, usize)) {
        let ((oh, ow), (kh, kw)) = (out, kernel);
        for oy in 0..oh {
            for x0 in (0..ow).step_by(LANES) {
                let mut acc = [0f32; LANES];
                for ky in 0..kh {
                    for kx in 0..kw {
                        let wv = filt[ky * kw + kx];
                        let start = (oy + ky) * stride + x0 + kx;
                        for (a, v) in acc.iter_mut().zip(&padded[start..start + LANES]) {
                            *a += wv * v;
                        }
                    }
                }
                let n = LANES.min(ow - x0);
                dst[oy * ow + x0..oy * ow + x0 + n].copy_from_slice(&acc[..n]);
            }
        }
    }
}

/// Lanes of `depthwise_plane`'s runs: its padded input's width is a multiple of this, plus the taps.
pub const DEPTHWISE_LANES: usize = LANES;

multiversion! {
    /// `dst[i] = a · src[i] + dst[i]` with one rounding (a fused multiply-add), as the inner
    /// loop of a matrix product accumulates.
    pub fn fused_axpy(dst: &mut [f32], src: &[f32], a: f32) {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = s.mul_add(a, *d);
        }
    }
}

multiversion! {
    /// `dst[o] = Σ_k weights[o·width + k] · src[starts[o] + k]`, accumulated from 0 in k order
    /// with fused multiply-adds, as a matrix product's inner loop.
    pub fn taps_dot(dst: &mut [f32], src: &[f32], starts: &[usize], weights: &[f32], width: usize) {
        for ((d, &start), w) in dst.iter_mut().zip(starts).zip(weights.chunks_exact(width)) {
            *d = w
                .iter()
                .zip(&src[start..start + width])
                .fold(0.0, |sum, (w, v)| v.mul_add(*w, sum));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_accurate() {
        let mut worst = 0f64;
        let mut x = -80.0f32;
        while x < 80.0 {
            let rel = ((exp_approx(x) as f64 - (x as f64).exp()) / (x as f64).exp()).abs();
            worst = worst.max(rel);
            x += 0.013;
        }
        assert!(worst < 3e-7, "worst relative error {worst:e}");
        assert_eq!(exp_approx(-1000.0), exp_approx(-87.0));
        assert!(exp_approx(-1000.0) < 1e-37);
    }

    #[test]
    fn vector_and_scalar_paths_agree() {
        let xs: Vec<f32> = (0..1000)
            .map(|i| ((i * 37) % 101) as f32 * 0.37 - 18.0)
            .collect();
        assert_eq!(max(&xs), xs.iter().cloned().fold(f32::MIN, f32::max));
        let mut e = xs.clone();
        let m = max(&xs);
        let sum = exp_shifted_sum(&mut e, m);
        let expected: f64 = xs.iter().map(|&x| ((x - m) as f64).exp()).sum();
        assert!(((sum as f64 - expected) / expected).abs() < 1e-5);
        for (got, &x) in e.iter().zip(&xs) {
            assert!((*got as f64 - ((x - m) as f64).exp()).abs() < 1e-6);
        }
    }

    #[test]
    fn gelu_tracks_the_exact_function() {
        let mut xs: Vec<f32> = (-400..400).map(|i| i as f32 * 0.02).collect();
        let orig = xs.clone();
        gelu_erf(&mut xs);
        for (g, x) in xs.iter().zip(orig) {
            let exact = 0.5 * x as f64 * (1.0 + erf(x as f64 / std::f64::consts::SQRT_2));
            assert!(
                (*g as f64 - exact).abs() < 1e-6,
                "gelu({x}) = {g}, exact {exact}"
            );
        }
    }

    fn erf(x: f64) -> f64 {
        // A reference good to 1e-12: the Taylor series near 0, the continued fraction far out.
        if x.abs() < 3.0 {
            let mut sum = 0.0;
            let mut term = x;
            let mut n = 0.0;
            while term.abs() > 1e-17 {
                sum += term / (2.0 * n + 1.0);
                n += 1.0;
                term *= -x * x / n;
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        } else {
            x.signum()
                * (1.0
                    - (-x * x).exp() / (x.abs() * std::f64::consts::PI.sqrt())
                        * (1.0 - 0.5 / (x * x)))
        }
    }

    #[test]
    fn layer_norm_row_is_two_pass() {
        // A large mean with a small spread: the one-pass formula loses the variance here.
        let src: Vec<f32> = (0..256).map(|i| 1000.0 + (i % 7) as f32 * 0.01).collect();
        let mut dst = vec![0f32; 256];
        layer_norm_row(&src, &mut dst, &[1.0; 256], &[0.0; 256], 1e-6);
        let mean: f64 = src.iter().map(|&v| v as f64).sum::<f64>() / 256.0;
        let var: f64 = src.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / 256.0;
        let expected = (src[3] as f64 - mean) / (var + 1e-6).sqrt();
        assert!(
            (dst[3] as f64 - expected).abs() < 1e-2,
            "{} vs {expected}",
            dst[3]
        );
    }
}
