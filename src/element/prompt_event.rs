//! The `sam2-prompt` event: the prompt schema (the CLI's JSON fields) carried by a GStreamer
//! event, upstream (an application's `pipeline.send_event`) or serialized downstream
//! (frame-accurate: it applies to the next buffer).
//!
//! Structure `sam2-prompt`, fields:
//! - `action` (string, optional): `add` (the default), `remove` (forget the object), `clear`
//!   (forget its prompts; it is tracked again from its next prompt) or `reset` (every object);
//! - `object` (uint): the object id (not needed for `reset`);
//! - `points` (array of numbers, optional): x0, y0, x1, y1, ...;
//! - `labels` (array of ints, optional): 1 positive, 0 negative, one per point;
//! - `box` (array of 4 numbers, optional): x0, y0, x1, y1;
//! - `mask` (buffer, optional): a GRAY8 mask (non-zero is the object), with a `GstVideoMeta` or
//!   the fields `mask-width` and `mask-height`; any size, scaled to the frame;
//! - `normalized` (boolean, optional, default false): coordinates are fractions of the frame's
//!   width and height instead of pixels;
//! - `pts` (uint64 ns, optional): the frame the prompt was made on (a click on a displayed frame);
//!   without it, the prompt applies to the next frame.

pub const PROMPT_EVENT_NAME: &str = "sam2-prompt";

/// What a prompt event asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum PromptAction {
    Add(PromptSpec),
    Remove { object: u32 },
    Clear { object: u32 },
    Reset,
}

/// A prompt as the event carries it, before it is placed on a frame.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PromptSpec {
    pub object: u32,
    pub points: Vec<[f32; 2]>,
    pub labels: Vec<i32>,
    pub bbox: Option<[f32; 4]>,
    /// A GRAY8 mask, (width, height, bytes), any size.
    pub mask: Option<(u32, u32, Vec<u8>)>,
    pub normalized: bool,
    /// The frame it was made on; `None`: the next frame.
    pub pts: Option<gst::ClockTime>,
}

impl PromptSpec {
    /// The prompt on frame `frame` of a `width`×`height` stream: coordinates in pixels, a mask
    /// scaled (nearest) to the frame.
    pub fn to_prompt(&self, frame: u64, (width, height): (usize, usize)) -> crate::prompt::Prompt {
        let (sx, sy) = if self.normalized {
            (width as f32, height as f32)
        } else {
            (1.0, 1.0)
        };
        let mask = self.mask.as_ref().map(|(w, h, data)| {
            let (w, h) = (*w as usize, *h as usize);
            let data = (0..height)
                .flat_map(|y| {
                    let row = (y * h / height).min(h - 1) * w;
                    (0..width).map(move |x| data[row + (x * w / width).min(w - 1)])
                })
                .collect();
            crate::prompt::PromptMask {
                width,
                height,
                data,
            }
        });
        crate::prompt::Prompt {
            frame,
            object: self.object,
            points: self.points.iter().map(|[x, y]| [x * sx, y * sy]).collect(),
            labels: self.labels.clone(),
            bbox: self
                .bbox
                .map(|[x0, y0, x1, y1]| [x0 * sx, y0 * sy, x1 * sx, y1 * sy]),
            mask,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct PromptEvent {
    pub action: PromptAction,
}

impl PromptEvent {
    pub fn new(action: PromptAction) -> Self {
        Self { action }
    }

    fn structure(&self) -> gst::Structure {
        let mut s = gst::Structure::builder(PROMPT_EVENT_NAME);
        match &self.action {
            PromptAction::Add(spec) => {
                s = s.field("action", "add").field("object", spec.object);
                if !spec.points.is_empty() {
                    let coords: Vec<f64> = spec
                        .points
                        .iter()
                        .flat_map(|p| [p[0] as f64, p[1] as f64])
                        .collect();
                    s = s
                        .field("points", gst::Array::new(coords))
                        .field("labels", gst::Array::new(spec.labels.clone()));
                }
                if let Some(b) = spec.bbox {
                    s = s.field("box", gst::Array::new(b.iter().map(|v| *v as f64)));
                }
                if let Some((w, h, data)) = &spec.mask {
                    s = s
                        .field("mask", gst::Buffer::from_slice(data.clone()))
                        .field("mask-width", *w)
                        .field("mask-height", *h);
                }
                s = s.field("normalized", spec.normalized);
                if let Some(pts) = spec.pts {
                    s = s.field("pts", pts.nseconds());
                }
            }
            PromptAction::Remove { object } => {
                s = s.field("action", "remove").field("object", *object)
            }
            PromptAction::Clear { object } => {
                s = s.field("action", "clear").field("object", *object)
            }
            PromptAction::Reset => s = s.field("action", "reset"),
        }
        s.build()
    }

    /// The event for `pipeline.send_event` (it travels upstream from the sinks).
    pub fn upstream(&self) -> gst::Event {
        gst::event::CustomUpstream::new(self.structure())
    }

    /// The event to send downstream, in order with the buffers: it applies to the next one.
    pub fn downstream(&self) -> gst::Event {
        gst::event::CustomDownstream::new(self.structure())
    }

    /// `None` if the event is not a prompt; `Some(Err)` if it is one but malformed (the error
    /// says what is wrong).
    pub fn parse(event: &gst::EventRef) -> Option<Result<Self, String>> {
        let s = event.structure()?;
        if !matches!(
            event.type_(),
            gst::EventType::CustomUpstream | gst::EventType::CustomDownstream
        ) || s.name() != PROMPT_EVENT_NAME
        {
            return None;
        }
        Some(Self::from_structure(s))
    }

    /// Parses the structure (also what the `prompt` action signal takes as a string).
    pub fn from_structure(s: &gst::StructureRef) -> Result<Self, String> {
        let known = [
            "action",
            "object",
            "points",
            "labels",
            "box",
            "mask",
            "mask-width",
            "mask-height",
            "normalized",
            "pts",
        ];
        if let Some(field) = s.fields().find(|f| !known.contains(&f.as_str())) {
            return Err(format!("unknown field {field:?}"));
        }
        let action = match s
            .get_optional::<String>("action")
            .map_err(|e| format!("action: {e}"))?
        {
            None => "add".to_owned(),
            Some(a) => a,
        };
        let object = || -> Result<u32, String> {
            let v = s.value("object").map_err(|_| "no object".to_owned())?;
            number(v)
                .filter(|n| *n >= 0.0 && n.fract() == 0.0 && *n <= u32::MAX as f64)
                .map(|n| n as u32)
                .ok_or_else(|| format!("object: {v:?} is not an object id"))
        };
        let action = match action.as_str() {
            "remove" => PromptAction::Remove { object: object()? },
            "clear" => PromptAction::Clear { object: object()? },
            "reset" => PromptAction::Reset,
            "add" => {
                let coords = numbers(s, "points")?.unwrap_or_default();
                if coords.len() % 2 != 0 {
                    return Err(format!(
                        "points: {} numbers, not (x, y) pairs",
                        coords.len()
                    ));
                }
                let points = coords
                    .chunks_exact(2)
                    .map(|p| [p[0] as f32, p[1] as f32])
                    .collect();
                let labels = numbers(s, "labels")?
                    .unwrap_or_default()
                    .iter()
                    .map(|l| *l as i32)
                    .collect();
                let bbox = match numbers(s, "box")? {
                    None => None,
                    Some(b) if b.len() == 4 => {
                        Some([b[0] as f32, b[1] as f32, b[2] as f32, b[3] as f32])
                    }
                    Some(b) => return Err(format!("box: {} numbers, not x0, y0, x1, y1", b.len())),
                };
                let mask = match s
                    .get_optional::<gst::Buffer>("mask")
                    .map_err(|e| format!("mask: {e}"))?
                {
                    None => None,
                    Some(buffer) => Some(mask_pixels(s, &buffer)?),
                };
                let normalized = s
                    .get_optional::<bool>("normalized")
                    .map_err(|e| format!("normalized: {e}"))?
                    .unwrap_or(false);
                let pts = s
                    .get_optional::<u64>("pts")
                    .map_err(|e| format!("pts: {e}"))?
                    .map(gst::ClockTime::from_nseconds);
                PromptAction::Add(PromptSpec {
                    object: object()?,
                    points,
                    labels,
                    bbox,
                    mask,
                    normalized,
                    pts,
                })
            }
            other => return Err(format!("action {other:?} (add, remove, clear, reset)")),
        };
        Ok(Self { action })
    }
}

/// A number of any numeric GValue type.
fn number(v: &gst::glib::SendValue) -> Option<f64> {
    v.get::<f64>()
        .ok()
        .or_else(|| v.get::<f32>().ok().map(f64::from))
        .or_else(|| v.get::<i32>().ok().map(f64::from))
        .or_else(|| v.get::<u32>().ok().map(f64::from))
        .or_else(|| v.get::<i64>().ok().map(|n| n as f64))
        .or_else(|| v.get::<u64>().ok().map(|n| n as f64))
}

/// An array or list field of numbers.
fn numbers(s: &gst::StructureRef, field: &str) -> Result<Option<Vec<f64>>, String> {
    let Ok(value) = s.value(field) else {
        return Ok(None);
    };
    let items: Vec<gst::glib::SendValue> = if let Ok(a) = value.get::<gst::Array>() {
        a.iter().cloned().collect()
    } else if let Ok(l) = value.get::<gst::List>() {
        l.iter().cloned().collect()
    } else {
        return Err(format!(
            "{field}: an array of numbers expected, got {}",
            value.type_()
        ));
    };
    items
        .iter()
        .map(|v| {
            number(v)
                .filter(|n| n.is_finite())
                .ok_or_else(|| format!("{field}: {v:?} is not a number"))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// The bytes of a GRAY8 mask buffer and its size (from its video meta or the size fields).
fn mask_pixels(s: &gst::StructureRef, buffer: &gst::Buffer) -> Result<(u32, u32, Vec<u8>), String> {
    let map = buffer
        .map_readable()
        .map_err(|_| "mask: unreadable buffer".to_owned())?;
    let (w, h, stride, offset) = match buffer.meta::<gst_video::VideoMeta>() {
        Some(meta) => (
            meta.width(),
            meta.height(),
            meta.stride()[0] as usize,
            meta.offset()[0],
        ),
        None => {
            let w = s
                .get::<u32>("mask-width")
                .map_err(|_| "mask: no video meta and no mask-width".to_owned())?;
            let h = s
                .get::<u32>("mask-height")
                .map_err(|_| "mask: no video meta and no mask-height".to_owned())?;
            (w, h, w as usize, 0)
        }
    };
    if w == 0 || h == 0 || offset + stride * (h as usize - 1) + w as usize > map.len() {
        return Err(format!(
            "mask: {} bytes for a {w}x{h} GRAY8 mask",
            map.len()
        ));
    }
    let mut data = Vec::with_capacity((w * h) as usize);
    for y in 0..h as usize {
        data.extend_from_slice(&map[offset + y * stride..offset + y * stride + w as usize]);
    }
    Ok((w, h, data))
}

#[cfg(test)]
mod tests {
    use std::str::FromStr as _;

    use super::*;

    fn init() {
        static INIT: std::sync::Once = std::sync::Once::new();
        INIT.call_once(|| gst::init().unwrap());
    }

    #[test]
    fn round_trips_through_both_directions() {
        init();
        let spec = PromptSpec {
            object: 3,
            points: vec![[10.0, 20.5], [30.0, 40.0]],
            labels: vec![1, 0],
            bbox: Some([1.0, 2.0, 50.0, 60.0]),
            mask: Some((2, 2, vec![0, 255, 255, 0])),
            normalized: false,
            pts: Some(gst::ClockTime::from_mseconds(40)),
        };
        for event in [
            PromptEvent::new(PromptAction::Add(spec.clone())).upstream(),
            PromptEvent::new(PromptAction::Add(spec.clone())).downstream(),
        ] {
            let parsed = PromptEvent::parse(&event).unwrap().unwrap();
            assert_eq!(parsed.action, PromptAction::Add(spec.clone()));
        }
        for action in [
            PromptAction::Remove { object: 2 },
            PromptAction::Clear { object: 5 },
            PromptAction::Reset,
        ] {
            let e = PromptEvent::new(action.clone()).upstream();
            assert_eq!(PromptEvent::parse(&e).unwrap().unwrap().action, action);
        }
    }

    #[test]
    fn from_a_string_as_applications_write_it() {
        init();
        let s = gst::Structure::from_str(
            "sam2-prompt, object=(int)2, points=<(int)10, (int)20>, labels=<1>, normalized=false",
        )
        .unwrap();
        let PromptAction::Add(spec) = PromptEvent::from_structure(&s).unwrap().action else {
            panic!()
        };
        assert_eq!(
            (spec.object, spec.points, spec.labels),
            (2, vec![[10.0, 20.0]], vec![1])
        );
    }

    #[test]
    fn placed_on_a_frame() {
        let spec = PromptSpec {
            object: 1,
            points: vec![[0.5, 0.25]],
            labels: vec![1],
            bbox: Some([0.0, 0.0, 1.0, 0.5]),
            mask: Some((2, 1, vec![0, 9])),
            normalized: true,
            pts: None,
        };
        let p = spec.to_prompt(7, (40, 20));
        assert_eq!(
            (p.frame, p.points.clone(), p.bbox),
            (7, vec![[20.0, 5.0]], Some([0.0, 0.0, 40.0, 10.0]))
        );
        let mask = p.mask.unwrap();
        assert_eq!(
            (mask.width, mask.height, mask.data[0], mask.data[39]),
            (40, 20, 0, 9)
        );
    }

    #[test]
    fn malformed_prompts_say_what_is_wrong() {
        init();
        let bad = |text: &str| {
            PromptEvent::from_structure(&gst::Structure::from_str(text).unwrap()).unwrap_err()
        };
        assert!(bad("sam2-prompt, points=<1.0, 2.0>, labels=<1>").contains("object"));
        assert!(bad("sam2-prompt, object=1, points=<1.0, 2.0, 3.0>").contains("pairs"));
        assert!(bad("sam2-prompt, object=1, box=<1.0, 2.0>").contains("box"));
        assert!(bad("sam2-prompt, object=1, action=jump").contains("jump"));
        assert!(bad("sam2-prompt, object=1, colour=red").contains("colour"));
        assert!(bad("sam2-prompt, object=-1, points=<1.0, 2.0>").contains("object"));
        // Other events are not ours.
        let other = gst::event::CustomUpstream::new(gst::Structure::new_empty("something-else"));
        assert!(PromptEvent::parse(&other).is_none());
    }
}
