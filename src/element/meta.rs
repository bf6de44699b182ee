//! `Sam2MaskMeta`: the object masks `sam2refiner` attaches to each output buffer.
//!
//! The meta is a [`gst::meta::CustomMeta`] so that applications in any language can read it
//! without linking this crate: everything lives in the meta's `GstStructure`, with the layout
//! below. Rust code uses the typed API ([`add`], [`read`], [`ObjectMask`]).
//!
//! # Layout
//!
//! The structure is named `Sam2MaskMeta` and holds:
//!
//! | field     | type                      | meaning                                             |
//! |-----------|---------------------------|-----------------------------------------------------|
//! | `frame`   | `guint64`                 | the frame's number: stream time × frame rate (else frames counted since the start or the last flush) |
//! | `objects` | `GstValueArray` of `GstStructure` | one entry per object                        |
//!
//! Each entry of `objects` is a structure named `object` with:
//!
//! | field          | type                         | meaning                                      |
//! |----------------|------------------------------|----------------------------------------------|
//! | `object`       | `guint`                      | object id, as given in the prompts           |
//! | `object-score` | `gdouble`                    | object-score logit; below 0 the object is judged absent |
//! | `iou`          | `gdouble`                    | predicted IoU of the mask                    |
//! | `bbox`         | `GstValueArray` of 4 `gdouble` | `<x0, y0, x1, y1>` of the mask (> 0.5), normalised to the frame; **absent** when the mask is empty |
//! | `mask`         | `GstBuffer`                  | the soft matte, GRAY8, 0 = background .. 255 = object |
//! | `carried`      | `gboolean`                   | the frame was not tracked: this is the last mask carried forward |
//! | `refined`      | `gboolean`                   | the SAM2Refiner modules refined the mask (`refiner-weights` set, `refine` not `off`) |
//!
//! Scores are stored as `gdouble` (not `gfloat`) because `gst_structure_get_double()` exists and
//! a `get_float` does not, so C applications read them with the ordinary accessors.
//!
//! A mask covers the whole frame whatever its resolution: its width, height and stride are given
//! by the `GstVideoMeta` on the mask buffer, and consumers scale it to the frame they show.
//! Mask buffers are shared between copies of a frame; treat them as read-only.
//!
//! From C:
//!
//! ```c
//! GstCustomMeta *meta = gst_buffer_get_custom_meta (buf, "Sam2MaskMeta");
//! GstStructure *s = gst_custom_meta_get_structure (meta);
//! const GValue *objects = gst_structure_get_value (s, "objects");
//! for (guint i = 0; i < gst_value_array_get_size (objects); i++) {
//!   const GstStructure *o = gst_value_get_structure (gst_value_array_get_value (objects, i));
//!   GstBuffer *mask = gst_value_get_buffer (gst_structure_get_value (o, "mask"));
//!   GstVideoMeta *vmeta = gst_buffer_get_video_meta (mask);
//!   ...
//! }
//! ```
//!
//! From Python: `buf.get_custom_meta("Sam2MaskMeta").get_structure()`.
//!
//! # When the meta survives a transformation
//!
//! Geometry is normalised and every mask covers the whole frame, so the meta stays valid when a
//! frame is copied, converted to another format or scaled, and becomes wrong when the frame is
//! cropped, flipped or rotated. The meta is registered with the tags `video`, `size` and
//! `orientation`, and its transform function accepts only copies (`gst-copy`) and scales
//! (`gst-video-scale`), unchanged. On GStreamer 1.22 (see `tests/element_meta.rs`) this gives:
//!
//! - `gst_buffer_copy()`, `make_writable()`: kept, as a copy;
//! - `videoconvert`, `videoscale`: kept, as a scale (they transform metas whose tags are all
//!   among `video`, `size` and `orientation`, calling the transform with `gst-video-scale`);
//! - elements that pass the buffer on or work in place (`identity`, `queue`, `tee`,
//!   `videorate`, `videobalance`): kept, as the buffer is the same frame or a copy of it;
//! - `videoflip` (even with the identity direction: it is never passthrough), `videocrop`,
//!   `videobox`, and other elements that write a new frame without handling tags (`alpha`):
//!   dropped, since `GstVideoFilter` and `GstBaseTransform` copy only metas that carry no tag
//!   or the `video` tag alone.
//!
//! One case escapes the rule: `videocrop` in its zero-copy mode (downstream accepts
//! `GstVideoCropMeta`) leaves the buffer and its metas as they are and adds a crop rectangle.
//! The masks then still cover the whole buffer, and a consumer that crops the frame by that
//! rectangle must crop the masks by it too.

use std::sync::Once;

use gst::glib;
use gst::meta::{CustomMeta, MetaTag, MetaTransform, MetaTransformCopy};
use gst_video::video_meta::tags;

/// Registered name of the meta, and name of its structure.
pub const META_NAME: &str = "Sam2MaskMeta";

const FIELD_FRAME: &str = "frame";
const FIELD_OBJECTS: &str = "objects";
const OBJECT_STRUCTURE: &str = "object";
const FIELD_OBJECT: &str = "object";
const FIELD_OBJECT_SCORE: &str = "object-score";
const FIELD_IOU: &str = "iou";
const FIELD_BBOX: &str = "bbox";
const FIELD_MASK: &str = "mask";
const FIELD_CARRIED: &str = "carried";
const FIELD_REFINED: &str = "refined";

/// One object's mask on one frame.
#[derive(Debug, Clone)]
pub struct ObjectMask {
    /// Object id, as given in the prompts.
    pub object: u32,
    /// Object-score logit: below 0 the object is judged absent on this frame.
    pub object_score: f32,
    /// Predicted IoU of the mask.
    pub iou: f32,
    /// Bounding box of the object's mask (> 0.5), normalised to the frame: [x0, y0, x1, y1] in
    /// [0, 1]; None when the mask is empty.
    pub bbox: Option<[f32; 4]>,
    /// The soft matte, GRAY8 (0 background .. 255 object), covering the whole frame; its size is
    /// given by its [`gst_video::VideoMeta`] (any size: consumers scale it to the frame).
    pub mask: gst::Buffer,
    /// The frame was not tracked (the element's skip policy) and this is the last mask carried
    /// forward.
    pub carried: bool,
    /// The refiner refined the mask.
    pub refined: bool,
}

/// Registers the meta with GStreamer; idempotent, and called from `plugin_init`.
///
/// [`add`] registers on demand too, so producers need not call it; consumers that may see a
/// buffer before the plugin is loaded should.
pub fn register() {
    static REGISTER: Once = Once::new();
    REGISTER.call_once(|| {
        // Another copy of this plugin (static and dynamic in one process) may have registered
        // the name already; registering it twice would fail in GType.
        if !CustomMeta::is_registered(META_NAME) {
            CustomMeta::register_with_transform(
                META_NAME,
                &[
                    tags::Video::TAG_NAME.as_str(),
                    tags::Size::TAG_NAME.as_str(),
                    tags::Orientation::TAG_NAME.as_str(),
                ],
                transform,
            );
        }
    });
}

/// Decides whether the meta follows a buffer through a transformation, and copies it if so.
///
/// Only a copy (same frame) and a scale (same content at another size, possibly another format)
/// keep the masks valid, since they are normalised to the frame. Everything else, including
/// transformations newer than 1.22 (the matrix transform 1.28 uses for flips and rotations),
/// may move the content relative to the frame, so the meta is dropped rather than left wrong.
fn transform(
    dest: &mut gst::BufferRef,
    meta: &CustomMeta,
    _src: &gst::BufferRef,
    kind: glib::Quark,
) -> bool {
    // The binding does not expose GstMetaTransformCopy's region, so a partial byte-range copy
    // (gst_buffer_copy_region) keeps the meta too; raw video frames are not split that way.
    let keeps_geometry = kind == MetaTransformCopy::quark()
        || kind == gst_video::video_meta::VideoMetaTransformScale::quark();
    keeps_geometry && replace(dest, |structure| copy_fields(meta.structure(), structure)).is_ok()
}

/// Attaches the masks of `frame` (the element's frame counter) to `buffer`, replacing any
/// `Sam2MaskMeta` already there.
///
/// Fails if a mask has no GRAY8 [`gst_video::VideoMeta`] (see [`gray8_buffer`]), as consumers
/// could not tell its size.
pub fn add(
    buffer: &mut gst::BufferRef,
    frame: u64,
    masks: &[ObjectMask],
) -> Result<(), glib::BoolError> {
    register();
    for mask in masks {
        match mask.mask.meta::<gst_video::VideoMeta>() {
            Some(vmeta) if vmeta.format() == gst_video::VideoFormat::Gray8 => {}
            _ => {
                return Err(glib::bool_error!(
                    "mask of object {} has no GRAY8 video meta",
                    mask.object
                ));
            }
        }
    }
    let objects = gst::Array::new(masks.iter().map(object_structure));
    replace(buffer, |structure| {
        structure.set(FIELD_FRAME, frame);
        structure.set(FIELD_OBJECTS, objects);
    })
}

/// Reads the frame counter and the masks of `buffer`'s `Sam2MaskMeta`.
///
/// Returns None when the buffer has no such meta, and also when its structure does not follow
/// the layout (a field missing or of another type), as there is no partial reading that a
/// caller could trust.
pub fn read(buffer: &gst::BufferRef) -> Option<(u64, Vec<ObjectMask>)> {
    let meta = CustomMeta::from_buffer(buffer, META_NAME).ok()?;
    let structure = meta.structure();
    let frame = structure.get::<u64>(FIELD_FRAME).ok()?;
    let objects = structure.get::<gst::ArrayRef>(FIELD_OBJECTS).ok()?;
    let masks = objects
        .iter()
        .map(|value| parse_object(value.get::<&gst::StructureRef>().ok()?))
        .collect::<Option<Vec<_>>>()?;
    Some((frame, masks))
}

/// Helper for producers: a GRAY8 buffer of `width` x `height` with a [`gst_video::VideoMeta`],
/// from tightly packed rows (`data.len() == width * height`).
pub fn gray8_buffer(width: u32, height: u32, data: &[u8]) -> Result<gst::Buffer, glib::BoolError> {
    if width == 0 || height == 0 || data.len() != width as usize * height as usize {
        return Err(glib::bool_error!(
            "{} bytes do not make a {width}x{height} GRAY8 image",
            data.len()
        ));
    }
    let stride = i32::try_from(width).map_err(|_| glib::bool_error!("width {width} too large"))?;
    let mut buffer = gst::Buffer::from_slice(data.to_vec());
    gst_video::VideoMeta::add_full(
        buffer.get_mut().expect("a new buffer is writable"),
        gst_video::VideoFrameFlags::empty(),
        gst_video::VideoFormat::Gray8,
        width,
        height,
        &[0],
        &[stride],
    )?;
    Ok(buffer)
}

/// Helper for consumers: `(width, height, bytes)` of a mask buffer, rows tightly packed.
///
/// Honours the offset and stride of the mask's [`gst_video::VideoMeta`], as a producer other
/// than [`gray8_buffer`] may pad rows. None if the buffer has no GRAY8 video meta or is too
/// small for it.
pub fn gray8_pixels(mask: &gst::BufferRef) -> Option<(u32, u32, Vec<u8>)> {
    let vmeta = mask.meta::<gst_video::VideoMeta>()?;
    if vmeta.format() != gst_video::VideoFormat::Gray8 {
        return None;
    }
    let (width, height) = (vmeta.width(), vmeta.height());
    let offset = *vmeta.offset().first()?;
    let stride = usize::try_from(*vmeta.stride().first()?).ok()?;
    let row = width as usize;
    if stride < row {
        return None;
    }
    let map = mask.map_readable().ok()?;
    let mut pixels = Vec::with_capacity(row * height as usize);
    for y in 0..height as usize {
        let start = offset + y * stride;
        pixels.extend_from_slice(map.get(start..start + row)?);
    }
    Some((width, height, pixels))
}

/// Puts a fresh `Sam2MaskMeta` on `buffer`, filled by `fill`.
///
/// `gst_buffer_get_custom_meta()` only ever finds the first meta of a name, so a second one
/// would be invisible: the old one is removed first.
fn replace(
    buffer: &mut gst::BufferRef,
    fill: impl FnOnce(&mut gst::StructureRef),
) -> Result<(), glib::BoolError> {
    if let Ok(old) = CustomMeta::from_mut_buffer(buffer, META_NAME) {
        old.remove()?;
    }
    let mut meta = CustomMeta::add(buffer, META_NAME)?;
    fill(meta.mut_structure());
    Ok(())
}

fn copy_fields(from: &gst::StructureRef, to: &mut gst::StructureRef) {
    // Copying the values only refs the mask buffers: the masks are shared, not duplicated.
    for (name, value) in from {
        to.set_value(name, value.clone());
    }
}

fn object_structure(mask: &ObjectMask) -> gst::Structure {
    gst::Structure::builder(OBJECT_STRUCTURE)
        .field(FIELD_OBJECT, mask.object)
        .field(FIELD_OBJECT_SCORE, f64::from(mask.object_score))
        .field(FIELD_IOU, f64::from(mask.iou))
        .field_if_some(
            FIELD_BBOX,
            mask.bbox.map(|b| gst::Array::new(b.map(f64::from))),
        )
        .field(FIELD_MASK, mask.mask.clone())
        .field(FIELD_CARRIED, mask.carried)
        .field(FIELD_REFINED, mask.refined)
        .build()
}

fn parse_object(s: &gst::StructureRef) -> Option<ObjectMask> {
    let bbox = match s.get_optional::<gst::ArrayRef>(FIELD_BBOX).ok()? {
        None => None,
        Some(values) => {
            let [x0, y0, x1, y1] = values.as_slice() else {
                return None;
            };
            let coord = |v: &glib::SendValue| v.get::<f64>().ok().map(|c| c as f32);
            Some([coord(x0)?, coord(y0)?, coord(x1)?, coord(y1)?])
        }
    };
    Some(ObjectMask {
        object: s.get(FIELD_OBJECT).ok()?,
        object_score: s.get::<f64>(FIELD_OBJECT_SCORE).ok()? as f32,
        iou: s.get::<f64>(FIELD_IOU).ok()? as f32,
        bbox,
        mask: s.get(FIELD_MASK).ok()?,
        carried: s.get(FIELD_CARRIED).ok()?,
        // Written by every version that refines; absent, the mask was not refined.
        refined: s.get(FIELD_REFINED).unwrap_or(false),
    })
}
