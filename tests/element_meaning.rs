//! Masks that mean something: the element with its defaults (the built-in nano model) follows
//! `videotestsrc pattern=ball` through seconds of motion from one click on the first frame.

mod common;

use common::element::{harness, init, timeline};
use gst_check::Harness;

const WIDTH: usize = 320;
const HEIGHT: usize = 240;
/// Three seconds at 30 fps: the ball crosses most of the frame (its period is 200 frames).
const FRAMES: usize = 90;
const MIN_BALL_COVERED: f64 = 0.90;
const MAX_REST_COVERED: f64 = 0.05;

/// One frame's score: the share of the ball's pixels inside the matte, and of the other pixels.
struct Score {
    ball: f64,
    rest: f64,
}

fn score(frame: &[u8], matte: &[u8]) -> Score {
    // The ball is white on black, anti-aliased at its rim: a pixel is the ball's when it is more
    // than half white.
    let (mut ball, mut ball_in, mut rest, mut rest_in) = (0usize, 0usize, 0usize, 0usize);
    for (rgba, &m) in frame.chunks_exact(4).zip(matte) {
        let is_ball = (rgba[0] as u32 + rgba[1] as u32 + rgba[2] as u32) > 3 * 127;
        let inside = m > 127;
        if is_ball {
            ball += 1;
            ball_in += inside as usize;
        } else {
            rest += 1;
            rest_in += inside as usize;
        }
    }
    assert!(
        ball > 500,
        "the ball should be in the frame ({ball} pixels)"
    );
    Score {
        ball: ball_in as f64 / ball as f64,
        rest: rest_in as f64 / rest as f64,
    }
}

fn mapped(buffer: &gst::Buffer) -> Vec<u8> {
    buffer.map_readable().unwrap().as_slice().to_vec()
}

#[test]
fn nano_follows_the_videotestsrc_ball_from_one_click() {
    init();
    let caps = format!("video/x-raw,format=RGBA,width={WIDTH},height={HEIGHT},framerate=30/1");
    let mut source = Harness::new_parse(&format!(
        "videotestsrc pattern=ball ! capsfilter caps=\"{caps}\""
    ));
    source.play();
    // The ball starts at the centre of the frame; nothing but the click is given.
    let prompts = timeline(
        "ball.json",
        r#"{"prompts": [{"frame": 0, "object": 1, "points": [[160, 120]], "labels": [1]}]}"#,
    );
    let element = gst::ElementFactory::make("sam2refiner")
        .property("device", "cpu")
        .property("prompts", prompts)
        .property_from_str("output", "mask")
        .build()
        .unwrap();
    let (mut h, _bus) = harness(&element, &caps, None);
    let mut worst = Score {
        ball: 1.0,
        rest: 0.0,
    };
    for t in 0..FRAMES {
        let frame = source.pull().unwrap();
        let pixels = mapped(&frame);
        assert_eq!(h.push(frame), Ok(gst::FlowSuccess::Ok));
        let matte = mapped(&h.pull().unwrap());
        assert_eq!(
            matte.len(),
            WIDTH * HEIGHT,
            "a GRAY8 matte of the frame's size"
        );
        let s = score(&pixels, &matte);
        assert!(
            s.ball >= MIN_BALL_COVERED && s.rest <= MAX_REST_COVERED,
            "frame {t}: the matte covers {:.3} of the ball (≥ {MIN_BALL_COVERED}) and {:.4} of the rest (≤ {MAX_REST_COVERED})",
            s.ball,
            s.rest
        );
        worst.ball = worst.ball.min(s.ball);
        worst.rest = worst.rest.max(s.rest);
    }
    eprintln!(
        "{FRAMES} frames: worst ball coverage {:.3}, worst rest coverage {:.4}",
        worst.ball, worst.rest
    );
}
