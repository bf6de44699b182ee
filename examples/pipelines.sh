#!/bin/sh
# gst-launch pipelines for each use of sam2refiner. Run one by name:
#
#   examples/pipelines.sh meta|alpha|overlay|mask|keying|alphacombine|click|live
#
# CONFIG and WEIGHTS choose the model (default: the built-in nano model, sam2.1_nano); INPUT a video file instead of a test pattern;
# SINK the video sink (default autovideosink; fakesink runs without a display); BACKGROUND what
# the keying pipeline keys over (default: 30 frames of colour bars). The plugin is
# looked up in target/release unless GST_PLUGIN_PATH says otherwise (cargo build --release first).
#
#   CONFIG=sam2.1_hiera_t WEIGHTS=sam2.1_hiera_tiny.pt INPUT=clip.mp4 examples/pipelines.sh keying
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export GST_PLUGIN_PATH="${GST_PLUGIN_PATH:-$ROOT/target/release}"
CONFIG="${CONFIG:-sam2.1_nano}"
SINK="${SINK:-autovideosink}"
PROMPTS="$ROOT/examples/prompts.json"   # a box around the middle of a 640x360 frame
MODEL="config=$CONFIG${WEIGHTS:+ weights=$WEIGHTS}"
SIZE="video/x-raw,width=640,height=360"
if [ -n "${INPUT:-}" ]; then
  SOURCE="filesrc location=$INPUT ! decodebin ! videoconvert ! videoscale ! $SIZE"
else
  SOURCE="videotestsrc pattern=ball num-buffers=30 ! $SIZE"
fi

case "${1:-}" in
meta)  # Frames unchanged, each object's mask as Sam2MaskMeta (read by an application downstream).
  gst-launch-1.0 $SOURCE ! sam2refiner $MODEL prompts=$PROMPTS output=meta ! videoconvert ! $SINK ;;
alpha)  # The cut-out: the matte in the alpha channel.
  gst-launch-1.0 $SOURCE ! sam2refiner $MODEL prompts=$PROMPTS output=alpha edge-softness=1.5 \
    ! videoconvert ! $SINK ;;
overlay)  # A preview: each object tinted and outlined.
  gst-launch-1.0 $SOURCE ! sam2refiner $MODEL prompts=$PROMPTS output=overlay ! videoconvert ! $SINK ;;
mask)  # The matte alone, as PNG files (GRAY8, 0 background .. 255 object).
  gst-launch-1.0 $SOURCE ! sam2refiner $MODEL prompts=$PROMPTS output=mask \
    ! pngenc ! multifilesink location=matte-%05d.png ;;
keying)  # The tracked object keyed over another video with compositor.
  gst-launch-1.0 compositor name=comp ! videoconvert ! $SINK \
    ${BACKGROUND:-videotestsrc pattern=smpte num-buffers=30} ! videoconvert ! videoscale ! $SIZE ! comp.sink_0 \
    $SOURCE ! sam2refiner $MODEL prompts=$PROMPTS output=alpha ! queue ! comp.sink_1 ;;
alphacombine)  # The GRAY8 matte as the alpha plane of the picture (A420), with alphacombine,
               # which wants both in the same range: the matte is full range, so the picture too.
  gst-launch-1.0 $SOURCE ! videoconvert ! video/x-raw,format=I420,colorimetry=1:4:0:0 ! tee name=t \
    t. ! queue ! alphacombine name=ac ! videoconvert ! $SINK \
    t. ! queue ! sam2refiner $MODEL prompts=$PROMPTS output=mask ! ac.alpha ;;
click)  # Click to segment: left click adds a positive point, right click a negative one;
        # Shift+click (or the key n, then a click) starts a new object.
  gst-launch-1.0 $SOURCE ! sam2refiner $MODEL output=overlay ! videoconvert ! "${CLICK_SINK:-xvimagesink}" ;;
live)  # A camera, keyed in real time: frames that arrive while the model is busy keep the last matte.
  gst-launch-1.0 v4l2src ! videoconvert ! videoscale ! $SIZE \
    ! sam2refiner $MODEL prompts=$PROMPTS output=alpha skip-policy=realtime ! videoconvert ! $SINK ;;
*)
  echo "usage: $0 meta|alpha|overlay|mask|keying|alphacombine|click|live" >&2
  exit 2 ;;
esac
