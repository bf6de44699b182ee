//! Official defaults (constructor signatures) of fields a YAML may omit, for serde's `default = "..."`.

pub fn sam2_base() -> String {
    "sam2.modeling.sam2_base.SAM2Base".into()
}
pub fn num_maskmem() -> usize {
    7
}
pub fn image_size() -> usize {
    512
}
pub fn image_size_1024() -> usize {
    1024
}
pub fn backbone_stride() -> usize {
    16
}
pub fn one() -> f64 {
    1.0
}
pub fn two() -> f64 {
    2.0
}
pub fn one_usize() -> usize {
    1
}
pub fn three() -> usize {
    3
}
pub fn four() -> usize {
    4
}
pub fn seven() -> usize {
    7
}
pub fn sixteen() -> usize {
    16
}
pub fn minus_one() -> i64 {
    -1
}
pub fn max_obj_ptrs() -> usize {
    16
}
pub fn yes() -> bool {
    true
}
pub fn stability_delta() -> f64 {
    0.05
}
pub fn stability_thresh() -> f64 {
    0.98
}
pub fn embed_dim() -> usize {
    96
}
pub fn q_pool() -> usize {
    3
}
pub fn q_stride() -> [usize; 2] {
    [2, 2]
}
pub fn stages() -> Vec<usize> {
    vec![2, 3, 16, 3]
}
pub fn bkg_size() -> [usize; 2] {
    [14, 14]
}
pub fn window_spec() -> Vec<usize> {
    vec![8, 4, 14, 7]
}
pub fn global_att_blocks() -> Option<Vec<usize>> {
    Some(vec![12, 16, 20])
}
pub fn bilinear() -> String {
    "bilinear".into()
}
pub fn sum() -> String {
    "sum".into()
}
pub fn temperature() -> f64 {
    10000.0
}
pub fn strides() -> Vec<usize> {
    vec![4, 8, 16, 32]
}
pub fn rope_theta() -> f64 {
    10000.0
}
pub fn feat_sizes() -> [usize; 2] {
    [64, 64]
}
pub fn dim_256() -> usize {
    256
}
pub fn layer_scale() -> f64 {
    1e-6
}
