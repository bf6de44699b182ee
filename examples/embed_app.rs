//! Embedding `sam2refiner` in an application, as a video editor or a broadcast tool would: the
//! element in a pipeline that ends in an appsink, prompts from the application's code while the
//! video plays, and each frame's per-object masks read from the buffer metadata.
//!
//! ```text
//! cargo run --release --example embed_app -- [--config CONFIG --weights WEIGHTS] [--uri URI]
//! cargo run --release --example embed_app -- --config sam2.1_hiera_t --weights sam2.1_hiera_tiny.pt \
//!     --uri file:///path/to/clip.mp4
//! ```
//! Without `--weights` it runs the built-in nano model (`sam2.1_nano`) on `videotestsrc`'s ball.
//!
//! The prompts use the two doors an application has: the `add-point` action signal, and the
//! `sam2-prompt` event sent upstream from the appsink (a plain `GstStructure`, so the same works
//! from C, Python or any language with GStreamer bindings). Each prompt is acknowledged by a
//! `sam2-prompt-ack` element message on the bus. Applications in other languages read the
//! masks with `gst_buffer_get_custom_meta (buffer, "Sam2MaskMeta")`; the layout is in the README.

use std::str::FromStr;

use anyhow::{Context, Result, bail};
use gst::prelude::*;
use gstsam2refiner::element::meta;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
    };
    // Unset properties keep the element's defaults: the built-in nano model.
    let model = match (arg("--config"), arg("--weights")) {
        (config, Some(weights)) => format!(
            "config=\"{}\" weights=\"{weights}\"",
            config.as_deref().unwrap_or("sam2.1_hiera_t")
        ),
        (None, None) => String::new(),
        (Some(_), None) => bail!("--config needs --weights"),
    };
    let source = match arg("--uri") {
        Some(uri) => format!("uridecodebin uri=\"{uri}\" ! videoconvert ! videoscale"),
        None => "videotestsrc pattern=ball num-buffers=40".into(),
    };

    gst::init()?;
    // An application links the installed plugin instead; the example registers it in-process.
    gstsam2refiner::plugin_register_static()?;

    let pipeline = gst::parse::launch(&format!(
        "{source} ! video/x-raw,width=320,height=240 \
         ! sam2refiner name=refiner {model} output=meta \
         ! appsink name=out sync=false"
    ))?
    .downcast::<gst::Pipeline>()
    .map_err(|_| anyhow::anyhow!("not a pipeline"))?;
    let refiner = pipeline.by_name("refiner").context("the element")?;
    // appsink through its action signals; a Rust application may use gstreamer-app's AppSink.
    let appsink = pipeline.by_name("out").context("the appsink")?;
    let pull_sample = || appsink.emit_by_name::<Option<gst::Sample>>("pull-sample", &[]);
    let bus = pipeline.bus().context("a pipeline has a bus")?;

    // Prompts are taken from PAUSED on (the model is loaded on READY->PAUSED).
    pipeline.set_state(gst::State::Paused)?;
    // Object 1: a positive click in the middle of the frame, for the next frame.
    refiner.emit_by_name::<bool>("add-point", &[&1u32, &160.0f64, &120.0f64, &true]);
    // Object 2: a box, as an upstream event carrying a plain structure.
    let prompt = gst::Structure::from_str(
        "sam2-prompt, object=(uint)2, box=<(double)10, (double)10, (double)100, (double)80>",
    )?;
    appsink.send_event(gst::event::CustomUpstream::new(prompt));
    pipeline.set_state(gst::State::Playing)?;

    let mut frames = 0;
    while let Some(sample) = pull_sample() {
        let buffer = sample.buffer().context("a sample without a buffer")?;
        if let Some((frame, masks)) = meta::read(buffer) {
            let objects: Vec<String> = masks
                .iter()
                .map(|m| {
                    let coverage = meta::gray8_pixels(&m.mask).map_or(0.0, |(_, _, px)| {
                        px.iter().filter(|&&v| v > 127).count() as f64 / px.len() as f64
                    });
                    format!(
                        "object {} score {:+.2} iou {:.2} covers {:5.1}%{}{}",
                        m.object,
                        m.object_score,
                        m.iou,
                        100.0 * coverage,
                        m.bbox.map_or(String::new(), |b| format!(
                            " box [{:.2}, {:.2}, {:.2}, {:.2}]",
                            b[0], b[1], b[2], b[3]
                        )),
                        if m.carried { " (carried)" } else { "" }
                    )
                })
                .collect();
            println!(
                "frame {frame:4}: {}",
                if objects.is_empty() {
                    "no object".into()
                } else {
                    objects.join("; ")
                }
            );
        }
        frames += 1;
        if frames == 20 {
            // The application drops object 2 halfway through.
            refiner.emit_by_name::<bool>("remove-object", &[&2u32]);
        }
        for message in bus.iter() {
            match message.view() {
                gst::MessageView::Element(e)
                    if e.structure().is_some_and(|s| s.name() == "sam2-prompt-ack") =>
                {
                    println!("           ack: {}", e.structure().unwrap());
                }
                gst::MessageView::Error(e) => {
                    pipeline.set_state(gst::State::Null)?;
                    bail!("{} ({:?})", e.error(), e.debug());
                }
                _ => {}
            }
        }
    }
    pipeline.set_state(gst::State::Null)?;
    println!("{frames} frames");
    Ok(())
}
