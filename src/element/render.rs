//! From input buffers to the model's RGB frames, and from mattes to output buffers.
//!
//! Buffers are in system memory, so format conversion uses GStreamer's own `VideoConverter`
//! (multithreaded, SIMD); what is ours is only writing mattes into an alpha plane, tinting the
//! objects for the preview, or filling a GRAY8 frame.

use gst_video::prelude::*;

use super::OutputMode;
use crate::image::RgbImage;

/// Component index of alpha in `GstVideoFormatInfo` (GST_VIDEO_COMP_A).
const COMP_A: u32 = 3;

/// Formats each output mode produces (the meta mode passes its input format through).
pub(crate) fn output_formats(mode: OutputMode) -> &'static [gst_video::VideoFormat] {
    use gst_video::VideoFormat::*;
    match mode {
        OutputMode::Meta => INPUT_FORMATS,
        OutputMode::Alpha => &[Rgba, Bgra, Argb, Abgr, Ayuv],
        OutputMode::Overlay => &[Rgba, Bgra, Argb, Abgr, Rgbx, Bgrx, Xrgb, Xbgr, Rgb, Bgr],
        OutputMode::Mask => &[Gray8],
    }
}

/// The raw formats the element takes.
pub(crate) const INPUT_FORMATS: &[gst_video::VideoFormat] = {
    use gst_video::VideoFormat::*;
    &[
        I420, Yv12, Nv12, Nv21, Y42b, Y444, Yuy2, Uyvy, Rgb, Bgr, Rgbx, Bgrx, Xrgb, Xbgr, Rgba,
        Bgra, Argb, Abgr, Ayuv, Gray8,
    ]
};

fn converter(
    from: &gst_video::VideoInfo,
    to: &gst_video::VideoInfo,
) -> Result<gst_video::VideoConverter, gst::glib::BoolError> {
    let mut config = gst_video::VideoConverterConfig::new();
    config.set_threads(std::thread::available_parallelism().map_or(1, |n| n.get() as u32));
    gst_video::VideoConverter::new(from, to, Some(config))
}

/// An info like `info` with another format.
fn with_format(
    info: &gst_video::VideoInfo,
    format: gst_video::VideoFormat,
) -> Result<gst_video::VideoInfo, gst::glib::BoolError> {
    gst_video::VideoInfo::builder(format, info.width(), info.height())
        .fps(info.fps())
        .par(info.par())
        .interlace_mode(info.interlace_mode())
        .build()
}

/// Converts one stream's buffers, set up for one input and output caps.
pub(crate) struct Renderer {
    input: gst_video::VideoInfo,
    output: gst_video::VideoInfo,
    mode: OutputMode,
    rgb_info: gst_video::VideoInfo,
    to_rgb: Option<gst_video::VideoConverter>,
    to_output: Option<gst_video::VideoConverter>,
}

impl Renderer {
    pub fn new(
        input: &gst_video::VideoInfo,
        output: &gst_video::VideoInfo,
        mode: OutputMode,
    ) -> Result<Self, gst::glib::BoolError> {
        let rgb_info = with_format(input, gst_video::VideoFormat::Rgb)?;
        let to_rgb = (input.format() != gst_video::VideoFormat::Rgb)
            .then(|| converter(input, &rgb_info))
            .transpose()?;
        let to_output = match mode {
            OutputMode::Alpha | OutputMode::Overlay if input.format() != output.format() => {
                Some(converter(input, output)?)
            }
            _ => None,
        };
        Ok(Self {
            input: input.clone(),
            output: output.clone(),
            mode,
            rgb_info,
            to_rgb,
            to_output,
        })
    }

    pub fn input_info(&self) -> &gst_video::VideoInfo {
        &self.input
    }

    /// The frame as 8-bit RGB, for the model.
    pub fn rgb(&self, buffer: &gst::BufferRef) -> Result<RgbImage, gst::glib::BoolError> {
        let frame = gst_video::VideoFrameRef::from_buffer_ref_readable(buffer, &self.input)?;
        let (w, h) = (self.input.width() as usize, self.input.height() as usize);
        let mut pixels = vec![0u8; w * h * 3];
        let mut copy_rows =
            |f: &gst_video::VideoFrameRef<&gst::BufferRef>| -> Result<(), gst::glib::BoolError> {
                let stride = f.plane_stride()[0] as usize;
                let data = f.plane_data(0)?;
                for (y, row) in pixels.chunks_exact_mut(w * 3).enumerate() {
                    row.copy_from_slice(&data[y * stride..y * stride + w * 3]);
                }
                Ok(())
            };
        match &self.to_rgb {
            None => copy_rows(&frame)?,
            Some(conv) => {
                let mut rgb = gst::Buffer::with_size(self.rgb_info.size())
                    .map_err(|_| gst::glib::bool_error!("out of memory"))?;
                {
                    let rgb = rgb.get_mut().expect("a new buffer is writable");
                    let mut out =
                        gst_video::VideoFrameRef::from_buffer_ref_writable(rgb, &self.rgb_info)?;
                    conv.frame_ref(&frame, &mut out);
                }
                let out = gst_video::VideoFrameRef::from_buffer_ref_readable(
                    rgb.as_ref(),
                    &self.rgb_info,
                )?;
                copy_rows(&out)?;
            }
        }
        Ok(RgbImage {
            width: w,
            height: h,
            pixels,
        })
    }

    /// The output buffer of a frame: `matte` is the union of the chosen objects' mattes (alpha
    /// and mask modes), `tinted` each object's matte with its colour (overlay mode). Timestamps
    /// and flags are those of the input. The meta mode returns the input itself.
    pub fn render(
        &self,
        input: gst::Buffer,
        matte: Option<&[u8]>,
        tinted: &[(u32, &[u8])],
    ) -> Result<gst::Buffer, gst::glib::BoolError> {
        let mut out = match (self.mode, &self.to_output) {
            (OutputMode::Meta, _) => return Ok(input),
            // Same format: the input buffer itself becomes the output (copied only if shared).
            (OutputMode::Alpha | OutputMode::Overlay, None) => {
                let mut out = input;
                out.make_mut();
                out
            }
            (OutputMode::Alpha | OutputMode::Overlay, Some(conv)) => {
                let mut out = self.new_buffer_like(&input)?;
                let src = gst_video::VideoFrameRef::from_buffer_ref_readable(
                    input.as_ref(),
                    &self.input,
                )?;
                let buf = out.get_mut().expect("a new buffer is writable");
                let mut dst =
                    gst_video::VideoFrameRef::from_buffer_ref_writable(buf, &self.output)?;
                conv.frame_ref(&src, &mut dst);
                drop(dst);
                out
            }
            (OutputMode::Mask, _) => self.new_buffer_like(&input)?,
        };
        let buf = out.get_mut().expect("the output buffer is writable");
        let mut frame = gst_video::VideoFrameRef::from_buffer_ref_writable(buf, &self.output)?;
        match self.mode {
            OutputMode::Alpha => write_alpha(&mut frame, matte)?,
            OutputMode::Overlay => tint(&mut frame, tinted)?,
            OutputMode::Mask => write_gray(&mut frame, matte)?,
            OutputMode::Meta => {}
        }
        drop(frame);
        Ok(out)
    }

    /// An output-sized buffer with the input's timestamps, offsets and flags.
    fn new_buffer_like(&self, input: &gst::Buffer) -> Result<gst::Buffer, gst::glib::BoolError> {
        let mut out = gst::Buffer::with_size(self.output.size())
            .map_err(|_| gst::glib::bool_error!("out of memory"))?;
        let buf = out.get_mut().expect("a new buffer is writable");
        buf.set_pts(input.pts());
        buf.set_dts(input.dts());
        buf.set_duration(input.duration());
        buf.set_offset(input.offset());
        buf.set_offset_end(input.offset_end());
        buf.set_flags(input.flags() & !gst::BufferFlags::TAG_MEMORY);
        Ok(out)
    }
}

/// Fills a GRAY8 frame with the matte (or black).
fn write_gray(
    frame: &mut gst_video::VideoFrameRef<&mut gst::BufferRef>,
    matte: Option<&[u8]>,
) -> Result<(), gst::glib::BoolError> {
    let (w, h) = (frame.width() as usize, frame.height() as usize);
    let stride = frame.plane_stride()[0] as usize;
    let data = frame.plane_data_mut(0)?;
    for y in 0..h {
        let row = &mut data[y * stride..y * stride + w];
        match matte {
            Some(m) => row.copy_from_slice(&m[y * w..(y + 1) * w]),
            None => row.fill(0),
        }
    }
    Ok(())
}

/// Writes the matte (or full transparency) into the alpha component.
fn write_alpha(
    frame: &mut gst_video::VideoFrameRef<&mut gst::BufferRef>,
    matte: Option<&[u8]>,
) -> Result<(), gst::glib::BoolError> {
    let (w, h) = (frame.width() as usize, frame.height() as usize);
    let info = frame.format_info();
    let pstride = info.pixel_stride()[COMP_A as usize] as usize;
    let stride = frame.comp_stride(COMP_A) as usize;
    let data = frame.comp_data_mut(COMP_A)?;
    for y in 0..h {
        let row = &mut data[y * stride..];
        for x in 0..w {
            row[x * pstride] = matte.map_or(0, |m| m[y * w + x]);
        }
    }
    Ok(())
}

/// A distinct, saturated colour per object id (RGB).
pub(crate) fn object_colour(object: u32) -> [u8; 3] {
    const PALETTE: [[u8; 3]; 8] = [
        [255, 64, 64],
        [64, 200, 255],
        [80, 255, 80],
        [255, 200, 40],
        [220, 80, 255],
        [255, 128, 0],
        [0, 255, 200],
        [255, 100, 180],
    ];
    PALETTE[object as usize % PALETTE.len()]
}

/// Tints each object with its colour at half opacity (times its matte), and draws its outline
/// (where the hard mask changes between neighbouring pixels) opaque.
fn tint(
    frame: &mut gst_video::VideoFrameRef<&mut gst::BufferRef>,
    objects: &[(u32, &[u8])],
) -> Result<(), gst::glib::BoolError> {
    let (w, h) = (frame.width() as usize, frame.height() as usize);
    let info = frame.format_info();
    let pstride = info.pixel_stride()[0] as usize;
    let stride = frame.comp_stride(0) as usize;
    // Offsets of R, G and B inside a pixel, relative to the R component's.
    let offsets: [isize; 3] = {
        let p = info.poffset();
        [
            0,
            p[1] as isize - p[0] as isize,
            p[2] as isize - p[0] as isize,
        ]
    };
    let base = info.poffset()[0] as usize;
    let data = frame.plane_data_mut(0)?;
    for (object, matte) in objects {
        let colour = object_colour(*object);
        let inside = |x: usize, y: usize| matte[y * w + x] > 127;
        for y in 0..h {
            for x in 0..w {
                let a = matte[y * w + x] as u32;
                let edge = inside(x, y)
                    && ((x > 0 && !inside(x - 1, y))
                        || (x + 1 < w && !inside(x + 1, y))
                        || (y > 0 && !inside(x, y - 1))
                        || (y + 1 < h && !inside(x, y + 1)));
                if a == 0 && !edge {
                    continue;
                }
                let weight = if edge { 256 } else { a / 2 };
                let px = y * stride + x * pstride + base;
                for (c, off) in offsets.iter().enumerate() {
                    let i = (px as isize + off) as usize;
                    let v = data[i] as u32;
                    data[i] = ((v * (256 - weight) + colour[c] as u32 * weight) >> 8) as u8;
                }
            }
        }
    }
    Ok(())
}
