//! The frames of the official video loader are PIL-resized: ours must match to the byte.

use std::path::PathBuf;

use gstsam2refiner::image::{RgbImage, resize_bicubic};

fn fixture(name: &str) -> RgbImage {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/pil_resize")
        .join(name);
    RgbImage::read_png(&path).unwrap()
}

#[test]
fn bicubic_resize_matches_pil_byte_for_byte() {
    let input = fixture("input.png");
    for size in [256, 64] {
        let expected = fixture(&format!("expected_{size}.png"));
        let ours = resize_bicubic(&input, size, size);
        assert_eq!((ours.width, ours.height), (size, size));
        let differing = ours
            .pixels
            .iter()
            .zip(&expected.pixels)
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!(
            differing, 0,
            "{size}x{size}: {differing} bytes differ from PIL"
        );
    }
}

#[test]
fn an_image_of_the_target_size_is_unchanged() {
    let input = fixture("input.png");
    let same = resize_bicubic(&input, input.width, input.height);
    assert_eq!(same, input);
}
