//! Where localization augment looks: half-size crops of the frame (the four quadrants, or one
//! region of interest on the object), their encoder features stitched into grids twice as fine
//! as the global ones. Mirrors `models/refiner/image_path.py`.

use candle_core::{Result, Tensor};

use crate::model::sam2_base::Sam2Base;
use crate::model::transforms::image_to_input;

/// Input pixels per image-embedding cell: crops start on this grid so that every level's cells
/// line up with the global grid's.
pub const CELL: usize = 16;

/// The encoder's features of the crops, one grid per level (stride 4, 8, 16), each twice as
/// fine as the global grid over `region` = (row, col, height, width) in stride-16 cells.
#[derive(Debug, Clone)]
pub struct LocalFeatures {
    pub levels: Vec<Tensor>,
    pub region: (usize, usize, usize, usize),
}

/// The frame pixels (y0, y1, x0, x1) of the half-size crop whose top-left corner is `origin`
/// (row, col) in pixels of the S×S input: input coordinates scaled to the frame, floored.
pub fn crop_bounds(
    (row, col): (usize, usize),
    image_size: usize,
    (height, width): (usize, usize),
) -> (usize, usize, usize, usize) {
    let half = image_size / 2;
    (
        row * height / image_size,
        (row + half) * height / image_size,
        col * width / image_size,
        (col + half) * width / image_size,
    )
}

/// Top-left, top-right, bottom-left, bottom-right.
pub fn quadrant_origins(image_size: usize) -> [(usize, usize); 4] {
    let half = image_size / 2;
    [(0, 0), (0, half), (half, 0), (half, half)]
}

/// ROI mode's half-size window for an object whose box is (x0, y0, x1, y1) in input pixels:
/// centred on the box as nearly as the 16-pixel grid allows, inside the input. Returns its
/// top-left (row, col).
pub fn roi_origin(bbox: [f32; 4], image_size: usize) -> (usize, usize) {
    let half = (image_size / 2) as f64;
    let place = |lo: f32, hi: f32| -> usize {
        let centre = (lo as f64 + hi as f64) / 2.0;
        // Python's round(): ties to even.
        let start = ((centre - half / 2.0) / CELL as f64).round_ties_even() * CELL as f64;
        start.clamp(0.0, image_size as f64 - half) as usize
    };
    (place(bbox[1], bbox[3]), place(bbox[0], bbox[2]))
}

/// The encoder's decoder-side levels [stride 4, stride 8, stride 16] of half-size crops of
/// `rgb` (u8 [H, W, 3] on the model's device), each resized to S×S as a frame is: one batch,
/// one crop per row.
fn encode_crops(model: &Sam2Base, rgb: &Tensor, origins: &[(usize, usize)]) -> Result<Vec<Tensor>> {
    let s = model.config.image_size;
    let (h, w, _) = rgb.dims3()?;
    let crops = origins
        .iter()
        .map(|&origin| {
            let (y0, y1, x0, x1) = crop_bounds(origin, s, (h, w));
            let crop = rgb.narrow(0, y0, y1 - y0)?.narrow(1, x0, x1 - x0)?;
            image_to_input(&crop, s, model.dtype())
        })
        .collect::<Result<Vec<_>>>()?;
    let features = model.forward_image(&Tensor::cat(&crops, 0)?)?;
    let n = features.backbone_fpn.len();
    Ok(features.backbone_fpn[n - 3..].to_vec())
}

/// One ROI window per origin (e.g. one per tracked object), encoded in one batch.
pub fn window_features(
    model: &Sam2Base,
    rgb: &Tensor,
    origins: &[(usize, usize)],
) -> Result<Vec<LocalFeatures>> {
    let levels = encode_crops(model, rgb, origins)?;
    let half_cells = model.config.image_size / 2 / CELL;
    origins
        .iter()
        .enumerate()
        .map(|(i, &(r, c))| {
            Ok(LocalFeatures {
                levels: levels
                    .iter()
                    .map(|l| l.narrow(0, i, 1))
                    .collect::<Result<_>>()?,
                region: (r / CELL, c / CELL, half_cells, half_cells),
            })
        })
        .collect()
}

/// The encoder on half-size crops of `rgb` (u8 [H, W, 3] on the model's device), each resized
/// to S×S as a frame is, stitched into one grid per level. `origins`: the four quadrants (a 2×2
/// arrangement) or one ROI.
pub fn local_features(
    model: &Sam2Base,
    rgb: &Tensor,
    origins: &[(usize, usize)],
) -> Result<LocalFeatures> {
    let s = model.config.image_size;
    let levels_of_crops = encode_crops(model, rgb, origins)?;
    let mut rows: Vec<usize> = origins.iter().map(|o| o.0).collect();
    let mut cols: Vec<usize> = origins.iter().map(|o| o.1).collect();
    rows.sort_unstable();
    rows.dedup();
    cols.sort_unstable();
    cols.dedup();
    let levels = levels_of_crops
        .iter()
        .map(|level| {
            let grid_rows = rows
                .iter()
                .map(|&r| {
                    let row = cols
                        .iter()
                        .map(|&c| {
                            let i = origins.iter().position(|&o| o == (r, c)).ok_or_else(|| {
                                candle_core::Error::Msg("crop origins must form a full grid".into())
                            })?;
                            level.narrow(0, i, 1)
                        })
                        .collect::<Result<Vec<_>>>()?;
                    Tensor::cat(&row, 3)
                })
                .collect::<Result<Vec<_>>>()?;
            Tensor::cat(&grid_rows, 2)
        })
        .collect::<Result<Vec<_>>>()?;
    let half_cells = s / 2 / CELL;
    Ok(LocalFeatures {
        levels,
        region: (
            rows[0] / CELL,
            cols[0] / CELL,
            rows.len() * half_cells,
            cols.len() * half_cells,
        ),
    })
}

/// The bounding box (x0, y0, x1, y1) of the pixels > 0 of logits [.., H, W] (the last two
/// dimensions; x1, y1 inclusive), in pixels, or None when there are none. Two small downloads.
pub fn positive_box(logits: &Tensor) -> Result<Option<[f32; 4]>> {
    let rank = logits.rank();
    let (h, w) = (logits.dim(rank - 2)?, logits.dim(rank - 1)?);
    let positive = logits
        .reshape((h, w))?
        .gt(0f32)?
        .to_dtype(candle_core::DType::F32)?;
    let rows = positive.max(1)?.to_vec1::<f32>()?;
    let cols = positive.max(0)?.to_vec1::<f32>()?;
    let first = |v: &[f32]| v.iter().position(|&x| x > 0.0);
    let last = |v: &[f32]| v.iter().rposition(|&x| x > 0.0);
    Ok(
        match (first(&rows), last(&rows), first(&cols), last(&cols)) {
            (Some(y0), Some(y1), Some(x0), Some(x1)) => {
                Some([x0 as f32, y0 as f32, x1 as f32, y1 as f32])
            }
            _ => None,
        },
    )
}

/// The bounding box of clicks.
pub fn points_box(points: &[[f32; 2]]) -> Option<[f32; 4]> {
    let first = points.first()?;
    Some(
        points
            .iter()
            .fold([first[0], first[1], first[0], first[1]], |b, p| {
                [
                    b[0].min(p[0]),
                    b[1].min(p[1]),
                    b[2].max(p[0]),
                    b[3].max(p[1]),
                ]
            }),
    )
}

/// Localization augment's stride-4 local features placed on the frame's stride-2 grid (zero
/// where no crop covers) and the coverage map: mask refinement's inputs.
pub fn stride2_local(local: &LocalFeatures, image_size: usize) -> Result<(Tensor, Tensor)> {
    let (r, c, h, w) = local.region;
    let side = image_size / 2;
    let f = CELL / 2;
    let level = &local.levels[0];
    let place = |x: &Tensor| -> Result<Tensor> {
        x.pad_with_zeros(2, r * f, side - (r + h) * f)?
            .pad_with_zeros(3, c * f, side - (c + w) * f)
    };
    let coverage = level.narrow(1, 0, 1)?.ones_like()?;
    Ok((place(level)?, place(&coverage)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quadrant_crops_tile_the_frame() {
        let (h, w) = (1080, 1920);
        let bounds: Vec<_> = quadrant_origins(256)
            .iter()
            .map(|&o| crop_bounds(o, 256, (h, w)))
            .collect();
        assert_eq!(bounds[0], (0, 540, 0, 960));
        assert_eq!(bounds[3], (540, 1080, 960, 1920));
    }

    #[test]
    fn roi_is_centred_on_the_grid_and_inside() {
        // A box centred at (100, 60) in a 256 input: the 128-px window starts at 36 -> 32, and
        // at -4 -> 0 for rows.
        assert_eq!(roi_origin([80.0, 40.0, 120.0, 80.0], 256), (0, 32));
        // Near the far edge the window stops at S - S/2.
        assert_eq!(roi_origin([240.0, 240.0, 255.0, 255.0], 256), (128, 128));
        // Ties round to even multiples of the cell, as Python's round().
        assert_eq!(roi_origin([88.0, 0.0, 88.0, 0.0], 256).1, 32);
    }
}
