//! 8-bit RGB images: PNG files in and out, PIL's resize, and the tensor views the model takes.

mod pil_resize;

pub use pil_resize::resize_bicubic;

use std::fs::File;
use std::io::BufWriter;
use std::path::Path;

use candle_core::{Device, Tensor};

use crate::error::{Error, Result};

/// An 8-bit RGB image, row-major, 3 bytes a pixel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    pub width: usize,
    pub height: usize,
    pub pixels: Vec<u8>,
}

impl RgbImage {
    /// Reads a PNG of any colour type (grey, palette and alpha are converted to RGB, as PIL's
    /// `convert("RGB")` does; 16-bit samples keep their high byte).
    pub fn read_png(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let bad = |e: png::DecodingError| {
            Error::Image(format!("{}: not a readable PNG: {e}", path.display()))
        };
        let mut decoder = png::Decoder::new(std::io::BufReader::new(file));
        decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
        let mut reader = decoder.read_info().map_err(bad)?;
        let mut buf = vec![0; reader.output_buffer_size().unwrap_or(0)];
        let info = reader.next_frame(&mut buf).map_err(bad)?;
        let (width, height) = (info.width as usize, info.height as usize);
        let data = &buf[..info.buffer_size()];
        let channels = info.color_type.samples();
        let pixels = match channels {
            3 => data.to_vec(),
            4 => data
                .chunks_exact(4)
                .flat_map(|p| [p[0], p[1], p[2]])
                .collect(),
            1 => data.iter().flat_map(|&g| [g, g, g]).collect(),
            2 => data
                .chunks_exact(2)
                .flat_map(|p| [p[0], p[0], p[0]])
                .collect(),
            n => return Err(Error::Image(format!("{}: {n} channels", path.display()))),
        };
        if width == 0 || height == 0 {
            return Err(Error::Image(format!("{}: empty image", path.display())));
        }
        Ok(Self {
            width,
            height,
            pixels,
        })
    }

    pub fn write_png(&self, path: &Path) -> Result<()> {
        let file = File::create(path).map_err(|e| Error::io(path, e))?;
        let mut encoder =
            png::Encoder::new(BufWriter::new(file), self.width as u32, self.height as u32);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let fail = |e: png::EncodingError| Error::Image(format!("{}: {e}", path.display()));
        let mut writer = encoder.write_header().map_err(fail)?;
        writer.write_image_data(&self.pixels).map_err(fail)?;
        writer.finish().map_err(fail)
    }

    /// The image as a u8 tensor [H, W, 3].
    pub fn to_tensor(&self, device: &Device) -> Result<Tensor> {
        Ok(Tensor::from_slice(
            &self.pixels,
            (self.height, self.width, 3),
            device,
        )?)
    }
}
