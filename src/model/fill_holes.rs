//! Small-region clean-up of mask logits (`fill_holes_in_mask_scores` and the image predictor's
//! hole/sprinkle removal). The official code labels 8-connected components with a CUDA
//! extension; this is the same labelling on the host, on low-resolution masks.

/// Sets, in `target`, every 8-connected region of pixels where `select(source)` holds, of at most
/// `max_area` pixels, to `value`. Both are one [h, w] map, row-major.
pub fn replace_small_regions(
    source: &[f32],
    target: &mut [f32],
    (h, w): (usize, usize),
    select: impl Fn(f32) -> bool,
    max_area: usize,
    value: f32,
) {
    if max_area == 0 {
        return;
    }
    let mut visited = vec![false; h * w];
    let mut region = Vec::new();
    let mut stack = Vec::new();
    for start in 0..h * w {
        if visited[start] || !select(source[start]) {
            continue;
        }
        region.clear();
        stack.push(start);
        visited[start] = true;
        while let Some(p) = stack.pop() {
            region.push(p);
            let (y, x) = ((p / w) as isize, (p % w) as isize);
            for dy in -1..=1 {
                for dx in -1..=1 {
                    let (ny, nx) = (y + dy, x + dx);
                    if ny < 0 || nx < 0 || ny >= h as isize || nx >= w as isize {
                        continue;
                    }
                    let q = ny as usize * w + nx as usize;
                    if !visited[q] && select(source[q]) {
                        visited[q] = true;
                        stack.push(q);
                    }
                }
            }
        }
        if region.len() <= max_area {
            for &p in &region {
                target[p] = value;
            }
        }
    }
}

/// `fill_holes_in_mask_scores`: background regions (score <= 0) of at most `max_area` pixels
/// become foreground with a small positive score (0.1).
pub fn fill_holes(scores: &mut [f32], hw: (usize, usize), max_area: usize) {
    let source = scores.to_vec();
    replace_small_regions(&source, scores, hw, |s| s <= 0.0, max_area, 0.1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_small_holes_only() {
        // A 6x6 foreground with a 1-pixel hole and a 2x2 hole; the outside is background too.
        let (h, w) = (8, 8);
        let mut s = vec![-1f32; h * w];
        for y in 1..7 {
            for x in 1..7 {
                s[y * w + x] = 1.0;
            }
        }
        s[2 * w + 2] = -1.0;
        for (y, x) in [(4, 4), (4, 5), (5, 4), (5, 5)] {
            s[y * w + x] = -1.0;
        }
        let mut one = s.clone();
        fill_holes(&mut one, (h, w), 1);
        assert_eq!(one[2 * w + 2], 0.1);
        assert_eq!(one[4 * w + 4], -1.0);
        assert_eq!(one[0], -1.0);
        let mut four = s.clone();
        fill_holes(&mut four, (h, w), 4);
        assert_eq!(four[4 * w + 4], 0.1);
        assert_eq!(four[0], -1.0, "the 28-pixel border region is not a hole");
    }

    #[test]
    fn diagonal_pixels_are_connected() {
        // Two background pixels touching at a corner form one region of area 2.
        let (h, w) = (4, 4);
        let mut s = vec![1f32; h * w];
        s[w + 1] = -1.0;
        s[2 * w + 2] = -1.0;
        let mut t = s.clone();
        fill_holes(&mut t, (h, w), 1);
        assert_eq!(t[w + 1], -1.0, "area 2 > 1");
        fill_holes(&mut s, (h, w), 2);
        assert_eq!(s[w + 1], 0.1);
        assert_eq!(s[2 * w + 2], 0.1);
    }
}
