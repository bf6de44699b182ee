//! Every official config asks for exactly the official state dict: the same keys with the same
//! shapes (dumped from the official models, `tests/fixtures/state-dicts/`), so official
//! checkpoints load strictly, with no renaming.

use std::collections::BTreeMap;

use gstsam2refiner::model::Sam2Config;
use gstsam2refiner::model::weights::expected_parameters;

fn official_keys(file: &str) -> BTreeMap<String, Vec<usize>> {
    let path = format!(
        "{}/tests/fixtures/state-dicts/{file}",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (key, shape) = l.split_once('\t').unwrap();
            let dims = shape
                .trim_matches(|c| c == '[' || c == ']')
                .split(',')
                .filter(|s| !s.trim().is_empty())
                .map(|s| s.trim().parse().unwrap())
                .collect();
            (key.to_owned(), dims)
        })
        .collect()
}

#[track_caller]
fn check(preset: &str, file: &str) {
    let mut config = Sam2Config::preset(preset).unwrap();
    // Parameter shapes do not depend on the input size; a small one keeps the dry run cheap.
    config.image_size = 256;
    let ours: BTreeMap<String, Vec<usize>> =
        expected_parameters(&config).unwrap().into_iter().collect();
    let official = official_keys(file);
    let missing: Vec<_> = official.keys().filter(|k| !ours.contains_key(*k)).collect();
    let extra: Vec<_> = ours.keys().filter(|k| !official.contains_key(*k)).collect();
    assert!(
        missing.is_empty(),
        "{preset}: the model does not ask for {missing:?}"
    );
    assert!(
        extra.is_empty(),
        "{preset}: the model asks for keys the official one lacks: {extra:?}"
    );
    for (key, shape) in &official {
        assert_eq!(&ours[key], shape, "{preset}: shape of {key}");
    }
}

#[test]
fn sam2_1_tiny() {
    check("sam2.1_hiera_t", "sam2.1-tiny-state-dict-keys.txt");
}

#[test]
fn sam2_1_small() {
    check("sam2.1_hiera_s", "sam2.1-small-state-dict-keys.txt");
}

#[test]
fn sam2_1_base_plus() {
    check("sam2.1_hiera_b+", "sam2.1-base_plus-state-dict-keys.txt");
}

#[test]
fn sam2_1_large() {
    check("sam2.1_hiera_l", "sam2.1-large-state-dict-keys.txt");
}

#[test]
fn sam2_tiny() {
    check("sam2_hiera_t", "sam2-tiny-state-dict-keys.txt");
}

#[test]
fn sam2_small() {
    check("sam2_hiera_s", "sam2-small-state-dict-keys.txt");
}

#[test]
fn sam2_base_plus() {
    check("sam2_hiera_b+", "sam2-base_plus-state-dict-keys.txt");
}

#[test]
fn sam2_large() {
    check("sam2_hiera_l", "sam2-large-state-dict-keys.txt");
}
