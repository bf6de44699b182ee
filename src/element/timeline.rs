//! The `prompts` property: a JSON timeline of prompts for batch pipelines, in the CLI's schema,
//! each placed by frame number or by time.
//!
//! ```json
//! {"prompts": [{"frame": 0, "object": 1, "points": [[410, 220]], "labels": [1]},
//!              {"time": 2.5, "object": 2, "box": [40, 60, 300, 420]}]}
//! ```
//! `frame` counts frames from the start of the stream; `time` is the stream time in seconds (it
//! stays right across seeks). Each entry applies to the first frame at or after its place.
//! After a seek (a flush) the entries placed before the first frame that comes are left out,
//! since the frames they name were not tracked; seeking back before them applies them again.

use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::prompt::Prompt;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    #[serde(default)]
    frame: Option<u64>,
    #[serde(default)]
    time: Option<f64>,
    object: u32,
    #[serde(default)]
    points: Vec<[f32; 2]>,
    #[serde(default)]
    labels: Vec<i32>,
    #[serde(default, rename = "box")]
    bbox: Option<[f32; 4]>,
}

/// Where a timeline prompt applies.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Place {
    Frame(u64),
    Time(gst::ClockTime),
}

#[derive(Debug, Clone)]
pub(crate) struct TimedPrompt {
    pub place: Place,
    /// The prompt; its `frame` is set when it is placed on a frame.
    pub prompt: Prompt,
}

/// Reads a timeline; errors name the file and the entry.
pub(crate) fn read(path: &Path) -> Result<Vec<TimedPrompt>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    parse(&text).map_err(|reason| Error::Prompt(format!("{}: {reason}", path.display())))
}

pub(crate) fn parse(text: &str) -> std::result::Result<Vec<TimedPrompt>, String> {
    crate::prompt::parse_entries::<Entry>(text)?
        .into_iter()
        .enumerate()
        .map(|(i, e)| {
            let place = match (e.frame, e.time) {
                (Some(f), None) => Place::Frame(f),
                (None, Some(t)) if t.is_finite() && t >= 0.0 => {
                    Place::Time(gst::ClockTime::from_nseconds((t * 1e9).round() as u64))
                }
                (None, Some(t)) => {
                    return Err(format!("prompt {i}: time {t} is not a time in seconds"));
                }
                _ => return Err(format!("prompt {i}: give either frame or time")),
            };
            let prompt = Prompt {
                frame: 0,
                object: e.object,
                points: e.points,
                labels: e.labels,
                bbox: e.bbox,
                mask: None,
            };
            Ok(TimedPrompt { place, prompt })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_and_times() {
        let t = parse(
            r#"{"prompts": [{"frame": 3, "object": 1, "points": [[1, 2]], "labels": [1]},
                                      {"time": 0.5, "object": 2, "box": [0, 0, 4, 4]}]}"#,
        )
        .unwrap();
        assert_eq!(t[0].place, Place::Frame(3));
        assert_eq!(t[1].place, Place::Time(gst::ClockTime::from_mseconds(500)));
        assert_eq!(t[1].prompt.bbox, Some([0.0, 0.0, 4.0, 4.0]));
    }

    #[test]
    fn errors_name_the_entry() {
        let e = parse(r#"{"prompts": [{"frame": 1, "time": 2, "object": 1}]}"#).unwrap_err();
        assert!(e.contains("prompt 0") && e.contains("either"), "{e}");
        let e = parse(r#"{"prompts": [{"frame": 1, "object": 1, "colour": 3}]}"#).unwrap_err();
        assert!(e.contains("colour"), "{e}");
    }
}
