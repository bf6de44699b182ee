//! Pre- and post-processing of the image predictor (`sam2/utils/transforms.py`): frames to the
//! model's input, logits back to the frame's size.

use candle_core::{DType, Result, Tensor};

use super::kernels::{PlanarScaled, SoftMatte};
use super::resample::{Filter, resample};

/// ImageNet normalisation, as the official transforms.
pub const PIXEL_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const PIXEL_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// The normalisation's mean and standard deviation as [3, 1, 1] tensors like `like`.
fn pixel_statistics(like: &Tensor) -> Result<(Tensor, Tensor)> {
    let constant = |values: &[f32; 3]| {
        Tensor::new(values, like.device())?
            .to_dtype(like.dtype())?
            .reshape((3, 1, 1))
    };
    Ok((constant(&PIXEL_MEAN)?, constant(&PIXEL_STD)?))
}

/// Normalises a [3, S, S] image in [0, 1]: (x - mean) / std per channel.
pub fn normalize(image: &Tensor) -> Result<Tensor> {
    let (mean, std) = pixel_statistics(image)?;
    image.broadcast_sub(&mean)?.broadcast_div(&std)
}

/// The inverse of `normalize`, for [.., 3, H, W]: the model input back to colour in [0, 1].
pub fn unnormalize(image: &Tensor) -> Result<Tensor> {
    let (mean, std) = pixel_statistics(image)?;
    image.broadcast_mul(&std)?.broadcast_add(&mean)
}

/// An RGB u8 image [H, W, 3] as f32 colour in [0, 1], [1, 3, H, W] (`ToTensor`).
pub fn rgb_to_unit(rgb: &Tensor) -> Result<Tensor> {
    const SCALE: f64 = 1.0 / 255.0;
    if rgb.device().is_cpu() && rgb.dtype() == DType::U8 {
        // The same values in one pass instead of three (a strided permute, a cast, a scale).
        let op = PlanarScaled { scale: SCALE };
        return rgb.contiguous()?.apply_op1_no_bwd(&op)?.unsqueeze(0);
    }
    (rgb.permute((2, 0, 1))?.to_dtype(DType::F32)? * SCALE)?.unsqueeze(0)
}

/// `SAM2Transforms.__call__`: an RGB u8 image [H, W, 3] (any device) -> the model input
/// [1, 3, S, S] in `dtype`: ToTensor (/255), bilinear antialiased resize to S×S, normalisation.
pub fn image_to_input(rgb: &Tensor, image_size: usize, dtype: DType) -> Result<Tensor> {
    let x = rgb_to_unit(rgb)?.squeeze(0)?;
    let x = resample(&x, Filter::BilinearAntialias, image_size, image_size)?;
    normalize(&x)?.to_dtype(dtype)?.unsqueeze(0)
}

/// `postprocess_masks` without hole filling: low-res logits [.., h, w] -> [.., H, W] by bilinear
/// interpolation (align_corners=False).
pub fn upsample_logits(masks: &Tensor, (height, width): (usize, usize)) -> Result<Tensor> {
    resample(
        &masks.to_dtype(DType::F32)?,
        Filter::Bilinear,
        height,
        width,
    )
}

/// Logits (any shape) as matte bytes, `round(255 · sigmoid(logits / softness))` (0/255 by the
/// sign when `softness` is 0), flattened. On the CPU one fused pass (`SoftMatte`, the same bytes).
pub fn soft_matte(logits: &Tensor, softness: f32) -> Result<Vec<u8>> {
    let logits = logits.to_dtype(DType::F32)?;
    let bytes = if logits.device().is_cpu() {
        let op = SoftMatte { softness };
        logits.contiguous()?.apply_op1_no_bwd(&op)?
    } else {
        soft_matte_by_tensor_ops(&logits, softness)?
    };
    bytes.flatten_all()?.to_vec1::<u8>()
}

/// `soft_matte` as tensor ops, for devices without the fused kernel: u8, the shape of `logits`.
fn soft_matte_by_tensor_ops(logits: &Tensor, softness: f32) -> Result<Tensor> {
    let alpha = if softness > 0.0 {
        candle_nn::ops::sigmoid(&(logits / softness as f64)?)?
    } else {
        logits.gt(0.0)?.to_dtype(DType::F32)?
    };
    (alpha * 255.0)?
        .round()?
        .clamp(0f32, 255f32)?
        .to_dtype(DType::U8)
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    #[test]
    fn rgb_to_unit_fast_path_gives_the_tensor_path_bit_for_bit() {
        let (h, w) = (37, 53);
        let pixels: Vec<u8> = (0..h * w * 3).map(|i| (i * 7 % 256) as u8).collect();
        let rgb = Tensor::from_vec(pixels, (h, w, 3), &Device::Cpu).unwrap();
        let fast: Vec<f32> = rgb_to_unit(&rgb)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let slow = (rgb
            .permute((2, 0, 1))
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
            / 255.0)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        assert_eq!(slow.dims(), &[1, 3, h, w]);
        let slow: Vec<f32> = slow.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(fast, slow);
    }

    #[test]
    fn soft_matte_fast_path_gives_the_tensor_ops_bit_for_bit() {
        // Logits across the sigmoid's whole range, the tails where it rounds to 0 and 255 and
        // the exact zero where the hard cut changes side.
        let values: Vec<f32> = (0..40_000).map(|i| (i as f32 - 20_000.0) * 1e-3).collect();
        let logits = Tensor::from_vec(values, (200, 200), &Device::Cpu).unwrap();
        for softness in [0.0, 0.25, 1.0, 3.0] {
            let fast = soft_matte(&logits, softness).unwrap();
            let slow: Vec<u8> = soft_matte_by_tensor_ops(&logits, softness)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            assert_eq!(fast.len(), slow.len());
            let differing = fast.iter().zip(&slow).filter(|(a, b)| a != b).count();
            assert_eq!(
                differing, 0,
                "softness {softness}: {differing} bytes differ"
            );
            // Both ends of the matte are reached, so the comparison covers the clamps.
            assert!(
                fast.contains(&0) && fast.contains(&255),
                "softness {softness}"
            );
        }
    }
}
