//! The prompt schema shared by every door (the CLI's `--prompts` file; later the element's
//! timeline, events and signals), and its validation.
//!
//! ```json
//! {"prompts": [{"frame": 0, "object": 1, "points": [[x, y], ...], "labels": [1, 0, ...],
//!               "box": [x0, y0, x1, y1]}]}
//! ```
//! Coordinates are pixels of the frame; label 1 is a positive click, 0 a negative one; `box` is
//! optional, and `points` may be empty when a box is given.

use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};

/// One prompt: clicks and/or a box, or a mask, for one object on one frame.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Prompt {
    /// The frame, as the caller identifies frames (an index, or a timestamp).
    pub frame: u64,
    pub object: u32,
    #[serde(default)]
    pub points: Vec<[f32; 2]>,
    #[serde(default)]
    pub labels: Vec<i32>,
    #[serde(default, rename = "box")]
    pub bbox: Option<[f32; 4]>,
    /// A mask prompt, at the frame's size (not in the JSON schema: from the library, or an
    /// element event's mask buffer).
    #[serde(skip)]
    pub mask: Option<PromptMask>,
}

/// A binary mask prompt: `width`×`height` bytes, non-zero where the object is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptMask {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

/// `{"prompts": [...]}`, the file around the entries.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct PromptFile<T> {
    prompts: Vec<T>,
}

impl Prompt {
    /// Checks the prompt against a frame of `width`×`height` pixels.
    pub fn validate(&self, width: usize, height: usize) -> std::result::Result<(), String> {
        if let Some(mask) = &self.mask {
            if !self.points.is_empty() || self.bbox.is_some() {
                return Err("a prompt is clicks and/or a box, or a mask, not both".into());
            }
            if (mask.width, mask.height) != (width, height) || mask.data.len() != width * height {
                return Err(format!(
                    "the mask is {}x{} ({} bytes) but the frame is {width}x{height}",
                    mask.width,
                    mask.height,
                    mask.data.len()
                ));
            }
            return Ok(());
        }
        if self.points.len() != self.labels.len() {
            return Err(format!(
                "{} points but {} labels",
                self.points.len(),
                self.labels.len()
            ));
        }
        if self.points.is_empty() && self.bbox.is_none() {
            return Err("no points and no box".into());
        }
        if let Some(bad) = self.labels.iter().find(|l| !matches!(l, 0 | 1)) {
            return Err(format!(
                "label {bad} (1 is a positive click, 0 a negative one)"
            ));
        }
        let (w, h) = (width as f32, height as f32);
        for &[x, y] in &self.points {
            if !(x.is_finite() && y.is_finite() && (0.0..w).contains(&x) && (0.0..h).contains(&y)) {
                return Err(format!(
                    "point ({x}, {y}) is outside the {width}x{height} image"
                ));
            }
        }
        if let Some([x0, y0, x1, y1]) = self.bbox {
            let inside = |v: f32, max: f32| v.is_finite() && (0.0..=max).contains(&v);
            if !(inside(x0, w) && inside(x1, w) && inside(y0, h) && inside(y1, h)) {
                return Err(format!(
                    "box [{x0}, {y0}, {x1}, {y1}] is outside the {width}x{height} image"
                ));
            }
            if x0 > x1 || y0 > y1 {
                return Err(format!(
                    "box [{x0}, {y0}, {x1}, {y1}] is not [x0, y0, x1, y1] with x0 <= x1, y0 <= y1"
                ));
            }
        }
        Ok(())
    }
}

/// Reads a prompt file. Syntax errors and missing fields name the prompt and the field.
pub fn read_prompt_file(path: &Path) -> Result<Vec<Prompt>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    parse_prompts(&text).map_err(|reason| Error::Prompt(format!("{}: {reason}", path.display())))
}

/// Parses the JSON prompt schema.
pub fn parse_prompts(text: &str) -> std::result::Result<Vec<Prompt>, String> {
    parse_entries(text)
}

/// Parses `{"prompts": [...]}` with entries of type `T` (the schema, or a variant of it such as
/// the element's timeline); errors name the entry and the field.
pub(crate) fn parse_entries<T: serde::de::DeserializeOwned>(
    text: &str,
) -> std::result::Result<Vec<T>, String> {
    let de = &mut serde_json::Deserializer::from_str(text);
    let file: PromptFile<T> = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        // `prompts[2].labels` reads better as "prompt 2 (labels)".
        match path
            .strip_prefix("prompts[")
            .and_then(|p| p.split_once(']'))
        {
            Some((index, rest)) => match rest.trim_start_matches('.') {
                "" | "?" => format!("prompt {index}: {inner}"),
                field => format!("prompt {index} ({field}): {inner}"),
            },
            None => inner.to_string(),
        }
    })?;
    Ok(file.prompts)
}

/// Validates every prompt against the frame size; the error names the first bad prompt.
pub fn validate_all(prompts: &[Prompt], width: usize, height: usize) -> Result<()> {
    for (i, p) in prompts.iter().enumerate() {
        p.validate(width, height).map_err(|reason| {
            Error::Prompt(format!(
                "prompt {i} (object {}, frame {}): {reason}",
                p.object, p.frame
            ))
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(json: &str) -> std::result::Result<Vec<Prompt>, String> {
        parse_prompts(json)
    }

    #[test]
    fn parses_the_schema() {
        let p = one(
            r#"{"prompts": [{"frame": 0, "object": 1, "points": [[1, 2]], "labels": [1]},
                                     {"frame": 3, "object": 2, "box": [0, 0, 5, 6]}]}"#,
        )
        .unwrap();
        assert_eq!(p[0].points, vec![[1.0, 2.0]]);
        assert_eq!(p[1].bbox, Some([0.0, 0.0, 5.0, 6.0]));
        assert!(p[1].points.is_empty());
    }

    #[test]
    fn missing_and_unknown_fields_are_named() {
        let e = one(r#"{"prompts": [{"frame": 0, "object": 1, "points": [[1, 2]], "labels": [1]}, {"frame": 0, "points": []}]}"#).unwrap_err();
        assert!(e.contains("prompt 1") && e.contains("object"), "{e}");
        let e = one(r#"{"prompts": [{"frame": 0, "object": 1, "point": [[1, 2]]}]}"#).unwrap_err();
        assert!(e.contains("prompt 0") && e.contains("point"), "{e}");
        let e =
            one(r#"{"prompts": [{"frame": 0, "object": 1, "points": [[1, 2, 3]]}]}"#).unwrap_err();
        assert!(e.contains("prompt 0") && e.contains("points"), "{e}");
    }

    #[test]
    fn validation() {
        let ok = Prompt {
            frame: 0,
            object: 1,
            points: vec![[5.0, 5.0]],
            labels: vec![1],
            bbox: None,
            mask: None,
        };
        assert!(ok.validate(10, 10).is_ok());
        let outside = Prompt {
            points: vec![[10.0, 5.0]],
            ..ok.clone()
        };
        assert!(outside.validate(10, 10).unwrap_err().contains("outside"));
        let mismatch = Prompt {
            labels: vec![1, 0],
            ..ok.clone()
        };
        assert!(mismatch.validate(10, 10).unwrap_err().contains("2 labels"));
        let empty = Prompt {
            points: vec![],
            labels: vec![],
            ..ok.clone()
        };
        assert!(empty.validate(10, 10).unwrap_err().contains("no points"));
        let bad_label = Prompt {
            labels: vec![2],
            ..ok.clone()
        };
        assert!(bad_label.validate(10, 10).is_err());
        let flipped = Prompt {
            bbox: Some([8.0, 1.0, 2.0, 9.0]),
            ..ok.clone()
        };
        assert!(flipped.validate(10, 10).is_err());
        let edge_box = Prompt {
            bbox: Some([0.0, 0.0, 10.0, 10.0]),
            ..ok
        };
        assert!(edge_box.validate(10, 10).is_ok());
        let e = validate_all(&[edge_box.clone(), outside], 10, 10)
            .unwrap_err()
            .to_string();
        assert!(e.contains("prompt 1 (object 1, frame 0)"), "{e}");
        let mask = PromptMask {
            width: 10,
            height: 10,
            data: vec![1; 100],
        };
        let mask_only = Prompt {
            points: vec![],
            labels: vec![],
            bbox: None,
            mask: Some(mask.clone()),
            ..edge_box.clone()
        };
        assert!(mask_only.validate(10, 10).is_ok());
        assert!(mask_only.validate(12, 10).unwrap_err().contains("12x10"));
        let both = Prompt {
            mask: Some(mask),
            ..edge_box
        };
        assert!(both.validate(10, 10).unwrap_err().contains("not both"));
    }
}
