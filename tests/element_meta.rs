//! `Sam2MaskMeta`: typed round trips, the structure layout applications read, and which
//! transformations keep the meta, checked through real GStreamer 1.22 elements.

use std::sync::Once;

use gst::glib;
use gst::prelude::*;
use gstsam2refiner::element::meta::{self, META_NAME, ObjectMask};

const WIDTH: u32 = 64;
const HEIGHT: u32 = 48;

fn init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        gst::init().unwrap();
        meta::register();
    });
}

/// Three objects covering the cases a consumer must handle: a small mask with a bbox, an empty
/// mask (no bbox) carried forward, and a full-resolution mask.
fn sample_masks() -> Vec<ObjectMask> {
    let small: Vec<u8> = (0..16 * 12).map(|i| (i * 7 % 256) as u8).collect();
    let full: Vec<u8> = (0..WIDTH * HEIGHT).map(|i| (i % 251) as u8).collect();
    vec![
        ObjectMask {
            object: 1,
            object_score: 3.25,
            iou: 0.875,
            bbox: Some([0.125, 0.25, 0.5, 0.75]),
            mask: meta::gray8_buffer(16, 12, &small).unwrap(),
            carried: false,
            refined: false,
        },
        ObjectMask {
            object: 7,
            object_score: -2.5,
            iou: 0.1,
            bbox: None,
            mask: meta::gray8_buffer(8, 6, &[0; 48]).unwrap(),
            carried: true,
            refined: true,
        },
        ObjectMask {
            object: 42,
            object_score: 0.0,
            iou: 1.0,
            bbox: Some([0.0, 0.0, 1.0, 1.0]),
            mask: meta::gray8_buffer(WIDTH, HEIGHT, &full).unwrap(),
            carried: false,
            refined: false,
        },
    ]
}

fn assert_same_masks(got: &[ObjectMask], want: &[ObjectMask]) {
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g.object, w.object);
        assert_eq!(g.object_score, w.object_score);
        assert_eq!(g.iou, w.iou);
        assert_eq!(g.bbox, w.bbox);
        assert_eq!(g.carried, w.carried);
        assert_eq!(g.refined, w.refined);
        assert_eq!(meta::gray8_pixels(&g.mask), meta::gray8_pixels(&w.mask));
    }
}

/// The buffer's `Sam2MaskMeta`s as generic metas: the form `transform()` needs, and the only
/// way to count them (`CustomMeta::from_buffer` returns the first one only).
fn sam2_metas(buffer: &gst::BufferRef) -> Vec<gst::MetaRef<'_, gst::Meta>> {
    buffer
        .iter_meta::<gst::Meta>()
        .filter(|m| {
            m.try_as_custom_meta()
                .is_some_and(|c| c.has_name(META_NAME))
        })
        .collect()
}

fn count_metas(buffer: &gst::BufferRef) -> usize {
    sam2_metas(buffer).len()
}

/// An RGBA frame whose red channel is 4 * x and green channel 4 * y, so that flips and crops
/// are visible in the output pixels.
fn rgba_frame() -> gst::Buffer {
    let mut data = Vec::with_capacity((WIDTH * HEIGHT * 4) as usize);
    for y in 0..HEIGHT {
        for x in 0..WIDTH {
            data.extend_from_slice(&[(4 * x) as u8, (4 * y) as u8, 0, 255]);
        }
    }
    let mut buffer = gst::Buffer::from_slice(data);
    buffer.get_mut().unwrap().set_pts(gst::ClockTime::ZERO);
    buffer
}

fn frame_with_meta() -> (gst::Buffer, Vec<ObjectMask>) {
    let masks = sample_masks();
    let mut buffer = rgba_frame();
    meta::add(buffer.get_mut().unwrap(), 42, &masks).unwrap();
    (buffer, masks)
}

/// Pushes one frame carrying the meta through `appsrc ! <elements> ! appsink` and returns what
/// came out. appsrc and appsink are driven through their signals, which spares a dependency on
/// gstreamer-app.
fn run_through(elements: &str) -> (gst::Sample, Vec<ObjectMask>) {
    run_through_with(elements, |_| {})
}

/// [`run_through`], with `prepare` called on the pipeline before it starts.
fn run_through_with(
    elements: &str,
    prepare: impl FnOnce(&gst::Pipeline),
) -> (gst::Sample, Vec<ObjectMask>) {
    init();
    let description = format!(
        "appsrc name=src format=time \
           caps=video/x-raw,format=RGBA,width={WIDTH},height={HEIGHT},framerate=30/1 \
         ! {elements} ! appsink name=sink sync=false"
    );
    let pipeline = gst::parse::launch(&description)
        .unwrap()
        .downcast::<gst::Pipeline>()
        .unwrap();
    let src = pipeline.by_name("src").unwrap();
    let sink = pipeline.by_name("sink").unwrap();
    prepare(&pipeline);
    pipeline.set_state(gst::State::Playing).unwrap();

    let (buffer, masks) = frame_with_meta();
    let flow = src.emit_by_name::<gst::FlowReturn>("push-buffer", &[&buffer]);
    assert_eq!(flow, gst::FlowReturn::Ok);
    drop(buffer);
    let flow = src.emit_by_name::<gst::FlowReturn>("end-of-stream", &[]);
    assert_eq!(flow, gst::FlowReturn::Ok);

    let timeout = gst::ClockTime::from_seconds(10);
    let sample = sink.emit_by_name::<Option<gst::Sample>>("try-pull-sample", &[&timeout]);
    let Some(sample) = sample else {
        let error = pipeline
            .bus()
            .unwrap()
            .timed_pop_filtered(gst::ClockTime::ZERO, &[gst::MessageType::Error]);
        pipeline.set_state(gst::State::Null).unwrap();
        panic!("no output from `{elements}`: {error:?}");
    };
    pipeline.set_state(gst::State::Null).unwrap();
    (sample, masks)
}

fn output_size(sample: &gst::Sample) -> (String, u32, u32) {
    let info = gst_video::VideoInfo::from_caps(sample.caps().unwrap()).unwrap();
    (info.format().to_string(), info.width(), info.height())
}

fn assert_kept(sample: &gst::Sample, masks: &[ObjectMask]) {
    let buffer = sample.buffer().unwrap();
    assert_eq!(count_metas(buffer), 1, "exactly one Sam2MaskMeta");
    let (frame, got) = meta::read(buffer).expect("the meta survives");
    assert_eq!(frame, 42);
    assert_same_masks(&got, masks);
}

fn assert_dropped(sample: &gst::Sample) {
    let buffer = sample.buffer().unwrap();
    assert_eq!(count_metas(buffer), 0, "the meta is dropped");
    assert!(meta::read(buffer).is_none());
}

fn first_pixel(sample: &gst::Sample) -> [u8; 4] {
    let map = sample.buffer().unwrap().map_readable().unwrap();
    map[..4].try_into().unwrap()
}

// ---- typed API ---------------------------------------------------------------------------

#[test]
fn round_trip_keeps_every_field() {
    init();
    let (buffer, masks) = frame_with_meta();
    let (frame, got) = meta::read(&buffer).unwrap();
    assert_eq!(frame, 42);
    assert_same_masks(&got, &masks);
    // The stored masks are the producer's buffers, not copies.
    for (g, w) in got.iter().zip(&masks) {
        assert_eq!(g.mask.as_ptr(), w.mask.as_ptr());
    }
    let (w, h, pixels) = meta::gray8_pixels(&got[0].mask).unwrap();
    assert_eq!((w, h), (16, 12));
    assert_eq!(pixels[..4], [0, 7, 14, 21]);
}

#[test]
fn no_objects_round_trips_as_empty() {
    init();
    let mut buffer = rgba_frame();
    meta::add(buffer.get_mut().unwrap(), 3, &[]).unwrap();
    let (frame, masks) = meta::read(&buffer).unwrap();
    assert_eq!(frame, 3);
    assert!(masks.is_empty());
}

#[test]
fn add_replaces_the_previous_meta() {
    init();
    let (mut buffer, masks) = frame_with_meta();
    meta::add(buffer.get_mut().unwrap(), 43, &masks[1..2]).unwrap();
    assert_eq!(count_metas(&buffer), 1);
    let (frame, got) = meta::read(&buffer).unwrap();
    assert_eq!(frame, 43);
    assert_same_masks(&got, &masks[1..2]);
}

#[test]
fn read_without_meta_is_none() {
    init();
    assert!(meta::read(&rgba_frame()).is_none());
}

#[test]
fn read_malformed_meta_is_none() {
    init();
    let mut buffer = rgba_frame();
    {
        let mut custom = gst::meta::CustomMeta::add(buffer.get_mut().unwrap(), META_NAME).unwrap();
        custom.mut_structure().set("frame", 1u64);
        // An object lacking its mask.
        let object = gst::Structure::builder("object")
            .field("object", 1u32)
            .field("object-score", 1.0f64)
            .field("iou", 1.0f64)
            .field("carried", false)
            .build();
        custom
            .mut_structure()
            .set("objects", gst::Array::new([object]));
    }
    assert!(meta::read(&buffer).is_none());
}

#[test]
fn add_rejects_a_mask_without_video_meta() {
    init();
    let mut masks = sample_masks();
    masks[0].mask = gst::Buffer::from_slice(vec![0u8; 16]);
    let mut buffer = rgba_frame();
    assert!(meta::add(buffer.get_mut().unwrap(), 0, &masks).is_err());
    assert!(meta::read(&buffer).is_none());
}

#[test]
fn register_is_idempotent() {
    init();
    meta::register();
    meta::register();
    assert!(gst::meta::CustomMeta::is_registered(META_NAME));
}

#[test]
fn gray8_buffer_checks_its_size() {
    init();
    assert!(meta::gray8_buffer(4, 4, &[0; 15]).is_err());
    assert!(meta::gray8_buffer(0, 4, &[]).is_err());
    let buffer = meta::gray8_buffer(3, 2, &[1, 2, 3, 4, 5, 6]).unwrap();
    assert_eq!(
        meta::gray8_pixels(&buffer),
        Some((3, 2, vec![1, 2, 3, 4, 5, 6]))
    );
}

#[test]
fn gray8_pixels_honours_offset_and_stride() {
    init();
    // 3x2 image at offset 2 with rows padded to 4 bytes; 9 marks the padding.
    let data = vec![9, 9, 1, 2, 3, 9, 4, 5, 6, 9];
    let mut buffer = gst::Buffer::from_slice(data);
    gst_video::VideoMeta::add_full(
        buffer.get_mut().unwrap(),
        gst_video::VideoFrameFlags::empty(),
        gst_video::VideoFormat::Gray8,
        3,
        2,
        &[2],
        &[4],
    )
    .unwrap();
    assert_eq!(
        meta::gray8_pixels(&buffer),
        Some((3, 2, vec![1, 2, 3, 4, 5, 6]))
    );
    // Too short for what the video meta claims.
    let mut short = gst::Buffer::from_slice(vec![0u8; 5]);
    gst_video::VideoMeta::add_full(
        short.get_mut().unwrap(),
        gst_video::VideoFrameFlags::empty(),
        gst_video::VideoFormat::Gray8,
        3,
        2,
        &[0],
        &[3],
    )
    .unwrap();
    assert_eq!(meta::gray8_pixels(&short), None);
    // Not GRAY8.
    let rgba = rgba_frame();
    assert_eq!(meta::gray8_pixels(&rgba), None);
}

/// The layout is what C and Python applications read: pin names and GValue types.
#[test]
fn structure_layout_is_as_documented() {
    init();
    let (buffer, _) = frame_with_meta();
    let custom = gst::meta::CustomMeta::from_buffer(&buffer, META_NAME).unwrap();
    let s = custom.structure();
    assert_eq!(s.name(), META_NAME);
    assert_eq!(s.value("frame").unwrap().type_(), glib::Type::U64);
    let objects = s.get::<gst::ArrayRef>("objects").unwrap();
    assert_eq!(objects.len(), 3);

    let first = objects[0].get::<&gst::StructureRef>().unwrap();
    assert_eq!(first.name(), "object");
    let types: Vec<(&str, glib::Type)> = first
        .iter()
        .map(|(name, value)| (name.as_str(), value.type_()))
        .collect();
    assert_eq!(
        types,
        [
            ("object", glib::Type::U32),
            ("object-score", glib::Type::F64),
            ("iou", glib::Type::F64),
            ("bbox", gst::Array::static_type()),
            ("mask", gst::Buffer::static_type()),
            ("carried", glib::Type::BOOL),
            ("refined", glib::Type::BOOL),
        ]
    );
    let bbox = first.get::<gst::ArrayRef>("bbox").unwrap();
    assert!(bbox.iter().all(|v| v.type_() == glib::Type::F64));

    let second = objects[1].get::<&gst::StructureRef>().unwrap();
    assert!(!second.has_field("bbox"), "an empty mask has no bbox");
}

#[test]
fn registered_tags() {
    init();
    let (buffer, _) = frame_with_meta();
    let custom = gst::meta::CustomMeta::from_buffer(&buffer, META_NAME).unwrap();
    let tags: Vec<&str> = custom.tags().iter().map(|t| t.as_str()).collect();
    assert_eq!(tags, ["video", "size", "orientation"]);
}

// ---- transform function, called directly ---------------------------------------------------

#[test]
fn buffer_copies_keep_the_meta() {
    init();
    let (buffer, masks) = frame_with_meta();
    for copy in [buffer.copy(), buffer.copy_deep().unwrap()] {
        assert_eq!(count_metas(&copy), 1);
        let (frame, got) = meta::read(&copy).unwrap();
        assert_eq!(frame, 42);
        assert_same_masks(&got, &masks);
    }
    // make_writable() on a shared buffer copies it.
    let mut shared = buffer.clone();
    let writable = shared.make_mut();
    assert_ne!(writable.as_ptr(), buffer.as_ptr());
    assert_eq!(count_metas(writable), 1);
    assert_same_masks(&meta::read(writable).unwrap().1, &masks);
}

#[test]
fn scale_transform_keeps_the_meta() {
    init();
    let (buffer, masks) = frame_with_meta();
    let in_info = gst_video::VideoInfo::builder(gst_video::VideoFormat::Rgba, WIDTH, HEIGHT)
        .build()
        .unwrap();
    let out_info = gst_video::VideoInfo::builder(gst_video::VideoFormat::I420, 32, 24)
        .build()
        .unwrap();
    let scale = gst_video::video_meta::VideoMetaTransformScale::new(&in_info, &out_info);
    let mut out = gst::Buffer::with_size(out_info.size()).unwrap();
    sam2_metas(&buffer)[0]
        .transform(out.get_mut().unwrap(), &scale)
        .unwrap();
    assert_eq!(count_metas(&out), 1);
    assert_same_masks(&meta::read(&out).unwrap().1, &masks);
}

/// A transformation the meta does not know, standing for crop or flip transforms of later
/// GStreamer versions (1.28's matrix transform).
struct UnknownTransform(u8);

unsafe impl gst::meta::MetaTransform for UnknownTransform {
    type GLibType = u8;

    fn quark() -> glib::Quark {
        glib::Quark::from_str("sam2-test-unknown-transform")
    }

    fn as_ptr(&self) -> *const u8 {
        &self.0
    }
}

#[test]
fn unknown_transform_drops_the_meta() {
    init();
    let (buffer, _) = frame_with_meta();
    let unknown = UnknownTransform(0);
    let mut out = gst::Buffer::with_size(16).unwrap();
    let result = sam2_metas(&buffer)[0].transform(out.get_mut().unwrap(), &unknown);
    assert!(result.is_err());
    assert_eq!(count_metas(&out), 0);
}

// ---- real elements -------------------------------------------------------------------------

#[test]
fn identity_keeps_the_meta() {
    let (sample, masks) = run_through("identity");
    assert_kept(&sample, &masks);
}

#[test]
fn videoconvert_keeps_the_meta() {
    let (sample, masks) = run_through("videoconvert ! video/x-raw,format=I420");
    assert_eq!(output_size(&sample), ("I420".into(), WIDTH, HEIGHT));
    assert_kept(&sample, &masks);
}

#[test]
fn videoscale_keeps_the_meta() {
    let (sample, masks) = run_through("videoscale ! video/x-raw,width=32,height=24");
    assert_eq!(output_size(&sample), ("RGBA".into(), 32, 24));
    assert_kept(&sample, &masks);
}

#[test]
fn in_place_filter_keeps_the_meta() {
    let (sample, masks) = run_through("videobalance brightness=0.1");
    assert_ne!(first_pixel(&sample), [0, 0, 0, 255], "the filter ran");
    assert_kept(&sample, &masks);
}

#[test]
fn format_changing_filter_drops_the_meta() {
    let (sample, _) = run_through("alpha alpha=0.5");
    assert_eq!(output_size(&sample).0, "AYUV");
    assert_dropped(&sample);
}

// videoflip in 1.22 is never passthrough and leaves meta handling to GstVideoFilter, which
// copies only untagged or `video`-only metas: even the identity drops ours. That costs nothing
// worth keeping a special case for, and is what the flips and rotations need.
#[test]
fn videoflip_identity_drops_the_meta() {
    let (sample, _) = run_through("videoflip video-direction=identity");
    assert_eq!(first_pixel(&sample), [0, 0, 0, 255]);
    assert_dropped(&sample);
}

#[test]
fn videoflip_horizontal_drops_the_meta() {
    let (sample, _) = run_through("videoflip video-direction=horiz");
    // The pixel at (0, 0) now comes from x = 63.
    assert_eq!(first_pixel(&sample), [252, 0, 0, 255]);
    assert_dropped(&sample);
}

/// The deprecated `method` property is broken in videoflip 1.22.0: the element goes passthrough
/// and the frame comes out unflipped (`video-direction` works). The meta must follow the frame
/// either way, so the test accepts a fixed videoflip too.
#[test]
fn videoflip_method_keeps_the_meta_consistent() {
    let (sample, masks) = run_through("videoflip method=horizontal-flip");
    if first_pixel(&sample) == [0, 0, 0, 255] {
        assert_kept(&sample, &masks);
    } else {
        assert_eq!(first_pixel(&sample), [252, 0, 0, 255]);
        assert_dropped(&sample);
    }
}

#[test]
fn videoflip_rotation_drops_the_meta() {
    let (sample, _) = run_through("videoflip video-direction=90r");
    assert_eq!(output_size(&sample), ("RGBA".into(), HEIGHT, WIDTH));
    assert_dropped(&sample);
}

#[test]
fn videocrop_drops_the_meta() {
    let (sample, _) = run_through("videocrop left=4");
    assert_eq!(output_size(&sample), ("RGBA".into(), WIDTH - 4, HEIGHT));
    assert_eq!(first_pixel(&sample), [16, 0, 0, 255]);
    assert_dropped(&sample);
}

/// When downstream accepts `GstVideoCropMeta`, videocrop crops without copying: the buffer, and
/// so the meta, go through untouched, with a crop rectangle added. The masks still match the
/// buffer's full frame, and consumers apply the rectangle to both (the documented caveat).
#[test]
fn videocrop_zero_copy_keeps_the_meta_beside_a_crop_meta() {
    let (sample, masks) = run_through_with("videocrop left=4", |pipeline| {
        let sink_pad = pipeline
            .by_name("sink")
            .unwrap()
            .static_pad("sink")
            .unwrap();
        sink_pad.add_probe(gst::PadProbeType::QUERY_DOWNSTREAM, |_, info| {
            if let Some(gst::PadProbeData::Query(query)) = &mut info.data
                && let gst::QueryViewMut::Allocation(allocation) = query.view_mut()
            {
                allocation.add_allocation_meta::<gst_video::VideoMeta>(None);
                allocation.add_allocation_meta::<gst_video::VideoCropMeta>(None);
            }
            gst::PadProbeReturn::Ok
        });
    });
    let buffer = sample.buffer().unwrap();
    let crop = buffer
        .meta::<gst_video::VideoCropMeta>()
        .expect("zero-copy crop");
    assert_eq!(crop.rect(), (4, 0, WIDTH - 4, HEIGHT));
    assert_kept(&sample, &masks);
}

#[test]
fn videobox_crop_drops_the_meta() {
    let (sample, _) = run_through("videobox left=4");
    assert_eq!(output_size(&sample).1, WIDTH - 4);
    assert_dropped(&sample);
}

#[test]
fn scale_after_convert_keeps_the_meta() {
    let (sample, masks) =
        run_through("videoconvert ! videoscale ! video/x-raw,format=NV12,width=96,height=72");
    assert_eq!(output_size(&sample), ("NV12".into(), 96, 72));
    assert_kept(&sample, &masks);
}
