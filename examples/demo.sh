#!/usr/bin/env bash
# The README's main command: cut three balls out of a generated clip with the built-in nano model.
#
#   examples/demo.sh [OUT_DIR]        (default: demo-output)
#
# 1. Installs what is missing (Debian/Ubuntu: the GStreamer development and plugin packages, with
#    sudo when not root; Rust through rustup when there is no cargo).
# 2. Builds the plugin in release mode (cargo does nothing the second time).
# 3. Runs one gst-launch-1.0 pipeline: a clip of three videotestsrc balls moving over colour bars
#    and crossing one another, into `sam2refiner` with the prompts of examples/demo-prompts.json
#    (one click per ball on frame 0), with nothing downloaded (the nano model is built in).
# 4. Writes into OUT_DIR: keyed.webm (the balls keyed over another picture), overlay.webm (the
#    element's preview), keyed-NN.png and overlay-NN.png (one still a second), and prints the
#    frames per second.
#
# FRAMES (default 150, five seconds) and DEVICE (auto, cpu, cuda) can be set in the environment.
# When a refiner for the nano model is present (models/refiner/sam2.1_nano.refiner.safetensors, made
# by models/refiner/train.py), both instances refine with it (refine=roi); REFINER=none turns it off.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-demo-output}
FRAMES=${FRAMES:-150}
DEVICE=${DEVICE:-auto}

PACKAGES=(pkg-config libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev
  gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good)

install_missing() {
  local missing=()
  if command -v dpkg-query >/dev/null; then
    for p in "${PACKAGES[@]}"; do
      dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
  fi
  if ((${#missing[@]})); then
    echo "== installing ${missing[*]}"
    local sudo=()
    [[ $(id -u) == 0 ]] || sudo=(sudo)
    "${sudo[@]}" apt-get update
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y --no-install-recommends "${missing[@]}"
  fi
  if ! command -v cargo >/dev/null; then
    if [[ -x $HOME/.cargo/bin/cargo ]]; then
      export PATH="$HOME/.cargo/bin:$PATH"
    else
      echo "== installing Rust (rustup, https://rustup.rs)"
      curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
      export PATH="$HOME/.cargo/bin:$PATH"
    fi
  fi
}

install_missing
echo "== building the plugin (release)"
cargo build --release --locked --lib
export GST_PLUGIN_PATH="$PWD/target/release${GST_PLUGIN_PATH:+:$GST_PLUGIN_PATH}"
gst-inspect-1.0 sam2refiner >/dev/null

mkdir -p "$OUT"
rm -f "$OUT"/keyed-*.png "$OUT"/overlay-*.png
CAPS="video/x-raw,width=640,height=360,framerate=30/1"
BALL="videotestsrc pattern=ball background-color=0x00000000 num-buffers=$FRAMES"

# The clip: bars, and three balls (white, orange, cyan), each drawn by its own videotestsrc in a
# window of another size, so they sweep different ranges and cross. A ball starts at the centre
# of its window: (160,120), (440,210), (540,180), the clicks of demo-prompts.json.
# One tee feeds two sam2refiner: `alpha` (keyed over a zone plate) and `overlay` (the preview).
REFINER=${REFINER:-models/refiner/sam2.1_nano.refiner.safetensors}
REFINE=()
if [ "$REFINER" != none ] && [ -f "$REFINER" ]; then
  REFINE=(refiner-weights="$REFINER" refine=roi)
  echo "== refining with $REFINER"
fi
echo "== running sam2refiner on $FRAMES frames"
start=$(date +%s.%N)
gst-launch-1.0 -q \
  compositor name=clip background=black sink_1::xpos=0 sink_1::ypos=0 \
    sink_2::xpos=240 sink_2::ypos=60 sink_3::xpos=440 sink_3::ypos=0 \
  ! "$CAPS" ! videoconvert ! video/x-raw,format=RGBA ! tee name=t \
  videotestsrc pattern=smpte75 num-buffers="$FRAMES" ! "$CAPS" ! clip.sink_0 \
  $BALL ! video/x-raw,format=BGRA,width=320,height=240,framerate=30/1 ! clip.sink_1 \
  $BALL foreground-color=0xffff8000 ! video/x-raw,format=BGRA,width=400,height=300,framerate=30/1 ! clip.sink_2 \
  $BALL foreground-color=0xff20d0ff ! video/x-raw,format=BGRA,width=200,height=360,framerate=30/1 ! clip.sink_3 \
  compositor name=keyed background=black sink_1::zorder=1 ! "$CAPS" ! tee name=k \
  videotestsrc pattern=zone-plate kx2=20 ky2=20 kt=1 num-buffers="$FRAMES" ! "$CAPS" ! keyed.sink_0 \
  t. ! queue ! sam2refiner device="$DEVICE" ${REFINE[@]+"${REFINE[@]}"} output=alpha prompts=examples/demo-prompts.json ! keyed.sink_1 \
  k. ! queue ! videoconvert ! vp8enc deadline=1 ! webmmux ! filesink location="$OUT/keyed.webm" \
  k. ! queue ! videorate drop-only=true max-rate=1 ! videoconvert ! pngenc ! multifilesink location="$OUT/keyed-%02d.png" \
  t. ! queue ! sam2refiner device="$DEVICE" ${REFINE[@]+"${REFINE[@]}"} output=overlay prompts=examples/demo-prompts.json \
  ! tee name=o \
  o. ! queue ! videoconvert ! vp8enc deadline=1 ! webmmux ! filesink location="$OUT/overlay.webm" \
  o. ! queue ! videorate drop-only=true max-rate=1 ! videoconvert ! pngenc ! multifilesink location="$OUT/overlay-%02d.png"
end=$(date +%s.%N)

awk -v n="$FRAMES" -v s="$(awk "BEGIN { print $end - $start }")" 'BEGIN {
  printf "== %d frames in %.1f s: %.1f frames/s through two sam2refiner instances (alpha and overlay),\n", n, s, n / s
  printf "   model loading, the clip, the encoders and the PNGs included\n"
}'
echo "== wrote $OUT/: keyed.webm, overlay.webm, and stills:"
ls "$OUT"
