//! Every output mode and format of `sam2refiner`, against the tracker's own results for the same
//! frames and prompts.

mod common;

use common::element::*;
use gst::prelude::*;
use gst_video::VideoFrameExt;
use gstsam2refiner::element::meta;

const FRAMES: usize = 4;

/// Pushes FRAMES frames of `caps` (built from the RGBA test frames by `convert`) and pulls them.
fn run(
    props: &[(&str, &str)],
    caps: &str,
    sink_caps: Option<&str>,
) -> (Vec<gst::Buffer>, gst::Caps) {
    let e = element(props);
    let (mut h, _bus) = harness(&e, caps, sink_caps);
    for event in mask_events() {
        assert!(h.push_event(event));
    }
    let info = gst_video::VideoInfo::from_caps(&caps.parse::<gst::Caps>().unwrap()).unwrap();
    let rgba_info = gst_video::VideoInfo::builder(gst_video::VideoFormat::Rgba, W as u32, H as u32)
        .fps(gst::Fraction::new(25, 1))
        .build()
        .unwrap();
    let conv = gst_video::VideoConverter::new(&rgba_info, &info, None).unwrap();
    let out: Vec<gst::Buffer> = (0..FRAMES)
        .map(|t| {
            let src = buffer(rgba_frame(t), t);
            let input = if info.format() == gst_video::VideoFormat::Rgba {
                src
            } else {
                let mut dst = gst::Buffer::with_size(info.size()).unwrap();
                {
                    let f = gst_video::VideoFrameRef::from_buffer_ref_readable(
                        src.as_ref(),
                        &rgba_info,
                    )
                    .unwrap();
                    let mut d = gst_video::VideoFrameRef::from_buffer_ref_writable(
                        dst.get_mut().unwrap(),
                        &info,
                    )
                    .unwrap();
                    conv.frame_ref(&f, &mut d);
                }
                dst.get_mut().unwrap().set_pts(src.pts());
                dst
            };
            h.push(input).unwrap();
            h.pull().unwrap()
        })
        .collect();
    let caps = h.sinkpad().unwrap().current_caps().unwrap();
    (out, caps)
}

/// The alpha (or GRAY8) plane of an output buffer, one byte a pixel.
fn component(buffer: &gst::Buffer, caps: &gst::Caps, comp: u32) -> Vec<u8> {
    let info = gst_video::VideoInfo::from_caps(caps).unwrap();
    let frame = gst_video::VideoFrameRef::from_buffer_ref_readable(buffer.as_ref(), &info).unwrap();
    let pstride = frame.format_info().pixel_stride()[comp as usize] as usize;
    let stride = frame.comp_stride(comp) as usize;
    let data = frame.comp_data(comp).unwrap();
    (0..H)
        .flat_map(|y| (0..W).map(move |x| (y, x)))
        .map(|(y, x)| data[y * stride + x * pstride])
        .collect()
}

#[test]
fn meta_carries_the_trackers_masks() {
    let reference = reference_mattes(FRAMES);
    let (out, caps) = run(&[("output", "meta")], RGBA_CAPS, None);
    assert_eq!(
        caps.structure(0).unwrap().get::<&str>("format").unwrap(),
        "RGBA"
    );
    for (t, buffer) in out.iter().enumerate() {
        // Frames unchanged.
        assert_eq!(
            buffer.map_readable().unwrap().as_slice(),
            rgba_frame(t).as_slice(),
            "frame {t} changed"
        );
        let (frame, masks) = meta::read(buffer).expect("every buffer has the meta");
        assert_eq!(frame, t as u64);
        let ids: Vec<u32> = masks.iter().map(|m| m.object).collect();
        assert_eq!(
            ids,
            reference[t].iter().map(|r| r.0).collect::<Vec<_>>(),
            "frame {t}: objects"
        );
        for (m, (_, expected)) in masks.iter().zip(&reference[t]) {
            let (w, h, pixels) = meta::gray8_pixels(&m.mask).unwrap();
            assert_eq!((w as usize, h as usize), (W, H));
            assert_eq!(&pixels, expected, "frame {t} object {}: matte", m.object);
            assert!(!m.carried);
            if let Some([x0, y0, x1, y1]) = m.bbox {
                assert!(0.0 <= x0 && x0 < x1 && x1 <= 1.0 && 0.0 <= y0 && y0 < y1 && y1 <= 1.0);
            }
        }
    }
    // The mask prompts are frame 0's output: the mattes have their shapes.
    for ((object, matte), (_, mask)) in reference[0].iter().zip(object_masks()) {
        let agree = matte
            .iter()
            .zip(&mask)
            .filter(|(a, b)| (**a > 127) == (**b > 127))
            .count();
        assert!(
            agree as f64 > 0.97 * (W * H) as f64,
            "object {object}: {agree} pixels agree"
        );
    }
}

#[test]
fn alpha_in_every_rgba_family_format() {
    let reference = reference_mattes(FRAMES);
    for format in ["RGBA", "BGRA", "ARGB", "ABGR", "AYUV"] {
        let (out, caps) = run(
            &[("output", "alpha")],
            RGBA_CAPS,
            Some(&format!("video/x-raw,format={format}")),
        );
        assert_eq!(
            caps.structure(0).unwrap().get::<&str>("format").unwrap(),
            format
        );
        for (t, buffer) in out.iter().enumerate() {
            assert_eq!(
                component(buffer, &caps, 3),
                union(&reference[t]),
                "{format} frame {t}: alpha"
            );
        }
        if format == "RGBA" {
            // The colour is the input's.
            let rgb: Vec<u8> = out[1]
                .map_readable()
                .unwrap()
                .chunks_exact(4)
                .flat_map(|p| [p[0], p[1], p[2]])
                .collect();
            assert_eq!(rgb, rgb_image(&rgba_frame(1)).pixels);
        }
    }
}

#[test]
fn alpha_only_for_the_chosen_objects() {
    let reference = reference_mattes(FRAMES);
    let (out, caps) = run(
        &[("output", "alpha"), ("matte-objects", "2")],
        RGBA_CAPS,
        None,
    );
    let only_two: Vec<(u32, Vec<u8>)> = reference[0].iter().filter(|r| r.0 == 2).cloned().collect();
    assert_eq!(component(&out[0], &caps, 3), union(&only_two));
    assert_ne!(
        union(&only_two),
        union(&reference[0]),
        "the objects differ, so the choice matters"
    );
}

#[test]
fn mask_is_a_full_range_gray8_matte() {
    let reference = reference_mattes(FRAMES);
    let (out, caps) = run(&[("output", "mask")], RGBA_CAPS, None);
    assert_eq!(
        caps.structure(0).unwrap().get::<&str>("format").unwrap(),
        "GRAY8"
    );
    for (t, buffer) in out.iter().enumerate() {
        assert_eq!(
            component(buffer, &caps, 0),
            union(&reference[t]),
            "frame {t}"
        );
        assert_eq!(
            buffer.pts(),
            Some(gst::ClockTime::from_mseconds(40 * t as u64))
        );
    }
}

#[test]
fn overlay_tints_the_objects_only() {
    let reference = reference_mattes(FRAMES);
    let (out, _) = run(&[("output", "overlay")], RGBA_CAPS, None);
    let last = out[0].map_readable().unwrap();
    let input = rgba_frame(0);
    let u = union(&reference[0]);
    let (mut tinted, mut untouched) = (0, 0);
    for i in 0..W * H {
        let same = last[i * 4..i * 4 + 3] == input[i * 4..i * 4 + 3];
        if u[i] == 0 {
            assert!(same, "pixel {i}: changed outside every object");
            untouched += 1;
        } else if u[i] > 127 && !same {
            tinted += 1;
        }
    }
    assert!(tinted > 0 && untouched > 0);
}

#[test]
fn any_common_input_format() {
    let reference = reference_mattes(FRAMES);
    for format in ["I420", "NV12", "RGB", "BGRx", "AYUV", "YUY2"] {
        let caps = format!("video/x-raw,format={format},width=64,height=48,framerate=25/1");
        let (out, out_caps) = run(&[("output", "mask")], &caps, None);
        assert_eq!(out.len(), FRAMES);
        // YUV round trips change the pixels a little: the masks stay close to the RGBA run's.
        let got = component(&out[0], &out_caps, 0);
        let expected = union(&reference[0]);
        let agree = got
            .iter()
            .zip(&expected)
            .filter(|(a, b)| (**a > 127) == (**b > 127))
            .count();
        assert!(
            agree as f64 > 0.95 * (W * H) as f64,
            "{format}: {agree} of {} pixels agree",
            W * H
        );
    }
}
