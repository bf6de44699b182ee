//! The worker thread: it owns the tracker (the model and its device), takes frames, prompts and
//! serialized events in order from the streaming thread, and hands rendered buffers and events,
//! in the same order, to the source pad's task.
//!
//! Every input buffer comes out exactly once, in order, with its own frame's masks: buffers and
//! events travel one queue, and the output of a frame is rendered from that frame's result.
//!
//! While it tracks a frame, the worker encodes the next one when that is already queued (the
//! job right after it, a frame to track): the image encoder and the tracking step overlap on the
//! cores (see `tracker::FrameEncoder`). A flush drops the frame taken ahead with the queue.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};
use gst::prelude::*;

use super::OutputMode;
use super::meta::{self, ObjectMask};
use super::prompt_event::{PromptAction, PromptSpec};
use super::render::Renderer;
use super::timeline::{Place, TimedPrompt};
use crate::prompt::Prompt;
use crate::tracker::{EncodedFrame, FrameEncoder, FrameOutput, PromptOutcome, Tracker};

/// What the streaming thread (and the application's threads) hand to the worker, in order.
pub(crate) enum Job {
    /// New input and output formats (the sink's caps, negotiated output caps).
    Caps {
        input: gst_video::VideoInfo,
        output: gst_video::VideoInfo,
        caps: gst::Caps,
    },
    /// A frame; `track` is false when the skip policy carries the last masks over it.
    /// `flushes`: the count of flushes when it was sent (a frame from before a flush is dropped).
    Frame {
        buffer: gst::Buffer,
        track: bool,
        flushes: u64,
    },
    /// A prompt from an event, a signal or a click, and where it came from (for the ack).
    Prompt {
        action: PromptAction,
        source: &'static str,
    },
    /// A serialized event, forwarded in order with the buffers.
    Event(gst::Event),
    /// The timeline broke (a flush, as for a seek): forget the objects' memory, and take the
    /// prompt timeline again from the first frame that comes next.
    Flushed,
    Stop,
}

/// What the worker hands to the source pad's task.
pub(crate) enum Output {
    Buffer(gst::Buffer),
    Event(gst::Event),
    Error(gst::ErrorMessage),
    /// Nothing: wakes the task so that it sees the element flushing or stopping.
    Wake,
}

/// How the worker renders and what it applies besides the stream's own prompts.
pub(crate) struct WorkerSettings {
    pub mode: OutputMode,
    /// The objects in the matte (alpha and mask modes); all when empty.
    pub matte_objects: Vec<u32>,
    /// alpha = sigmoid(logit / softness); 0 gives a hard matte.
    pub softness: f32,
    pub max_objects: usize,
    pub timeline: Vec<TimedPrompt>,
}

/// An object's clicks on one frame: (tracker frame id, points, labels).
type Clicks = (u64, Vec<[f32; 2]>, Vec<i32>);

/// One object's matte at the frame's size and what the meta says of it.
struct ObjectMatte {
    object: u32,
    matte: Vec<u8>,
    score: f32,
    iou: f32,
    refined: bool,
}

/// The last tracked frame's result in the form the output mode renders: each object's matte
/// (meta, overlay), or the one matte of the chosen objects (alpha, mask; `None`: no object).
enum Mattes {
    PerObject(Vec<ObjectMatte>),
    Union(Option<Vec<u8>>),
}

impl Mattes {
    fn none(mode: OutputMode) -> Self {
        match mode {
            OutputMode::Meta | OutputMode::Overlay => Self::PerObject(Vec::new()),
            OutputMode::Alpha | OutputMode::Mask => Self::Union(None),
        }
    }
}

pub(crate) struct Worker {
    thread: Option<JoinHandle<()>>,
    pub jobs: Sender<Job>,
    /// The worker's end of the job queue, kept to drop queued jobs on a flush.
    pending: Receiver<Job>,
    pub outputs: Receiver<Output>,
    outputs_tx: Sender<Output>,
    /// The longest processing time of a frame so far (ns): the element's latency.
    pub max_latency: Arc<AtomicU64>,
    /// Frames queued or being processed: the model is busy when it is not zero.
    pub frames_in_flight: Arc<AtomicUsize>,
    /// Flushes so far: what the worker took from the queue before one is dropped, its output too.
    flushes: Flushes,
}

/// The count of flushes. Its lock spans a flush's drain of the queues and the worker's check
/// and send of a frame's output, so an output either leaves before the drain (and is drained)
/// or sees the new count (and is dropped): a frame in the works when a flush came, or taken
/// ahead of it, never comes out after it.
type Flushes = Arc<Mutex<u64>>;

fn flush_count(flushes: &Flushes) -> std::sync::MutexGuard<'_, u64> {
    flushes.lock().unwrap_or_else(|e| e.into_inner())
}

/// Queues frames for the worker ([`Worker::frame_sender`]).
pub(crate) struct FrameSender {
    jobs: Sender<Job>,
    in_flight: Arc<AtomicUsize>,
    flushes: Flushes,
}

impl FrameSender {
    /// Queues a frame; blocks while the queue is full.
    pub fn send(&self, buffer: gst::Buffer, track: bool) -> bool {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let flushes = *flush_count(&self.flushes);
        let sent = self
            .jobs
            .send(Job::Frame {
                buffer,
                track,
                flushes,
            })
            .is_ok();
        if !sent {
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
        }
        sent
    }
}

impl Worker {
    pub fn spawn(
        element: gst::Element,
        tracker: Tracker,
        settings: WorkerSettings,
        queue: usize,
    ) -> std::io::Result<Self> {
        let (jobs, jobs_rx) = crossbeam_channel::bounded(queue.max(1));
        let (outputs_tx, outputs) = crossbeam_channel::unbounded();
        let max_latency = Arc::new(AtomicU64::new(0));
        let frames_in_flight = Arc::new(AtomicUsize::new(0));
        let flushes = Flushes::default();
        let timeline_waiting = settings.timeline.clone();
        let last = Mattes::none(settings.mode);
        let mut state = WorkerState {
            element,
            tracker,
            settings,
            renderer: None,
            segment: gst::FormattedSegment::new(),
            next_id: 0,
            frame_count: 0,
            recent: VecDeque::new(),
            last,
            clicks: HashMap::new(),
            timeline_waiting,
            before_caps: Vec::new(),
            seeked: false,
            out: outputs_tx.clone(),
            max_latency: max_latency.clone(),
            reported_latency: 0,
            jobs: jobs_rx.clone(),
            ahead: None,
            encoded: None,
            flushes: flushes.clone(),
        };
        let rx = jobs_rx.clone();
        let in_flight = frames_in_flight.clone();
        let thread = std::thread::Builder::new()
            .name("sam2refiner-worker".into())
            .spawn(move || {
                loop {
                    state.encoded = None;
                    let (job, taken_at) = match state.ahead.take() {
                        Some(ahead) => {
                            state.encoded = ahead.encoded;
                            (ahead.job, Some(ahead.flushes))
                        }
                        None => match rx.recv() {
                            Ok(job) => (job, None),
                            Err(_) => break,
                        },
                    };
                    let frame = matches!(job, Job::Frame { .. });
                    if state.is_from_before_a_flush(&job, taken_at) {
                        // Dropped with the queue it came from.
                        if frame {
                            in_flight.fetch_sub(1, Ordering::SeqCst);
                        }
                        continue;
                    }
                    if matches!(job, Job::Stop) {
                        break;
                    }
                    // A panic here (a bug) must not leave the pipeline waiting on a dead thread:
                    // it becomes the element's error, and the worker stops.
                    let handled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        state.handle(job)
                    }));
                    if frame {
                        in_flight.fetch_sub(1, Ordering::SeqCst);
                    }
                    if let Err(panic) = handled {
                        let what = panic
                            .downcast_ref::<&str>()
                            .map(|s| s.to_string())
                            .or_else(|| panic.downcast_ref::<String>().cloned())
                            .unwrap_or_else(|| "unknown panic".into());
                        state.fail(gst::error_msg!(
                            gst::LibraryError::Failed,
                            ("Internal error in the model thread: {what}")
                        ));
                        break;
                    }
                }
            })?;
        Ok(Self {
            thread: Some(thread),
            jobs,
            pending: jobs_rx,
            outputs,
            outputs_tx,
            max_latency,
            frames_in_flight,
            flushes,
        })
    }

    /// What the streaming thread queues frames with, without holding the element's state.
    pub fn frame_sender(&self) -> FrameSender {
        FrameSender {
            jobs: self.jobs.clone(),
            in_flight: self.frames_in_flight.clone(),
            flushes: self.flushes.clone(),
        }
    }

    /// Drops every queued job and output (a flush), and wakes the source pad's task. Queued caps
    /// stay (the last of them): caps are sticky, and no flush sends them again.
    pub fn discard_queued(&self) {
        let mut caps = None;
        {
            let mut flushes = flush_count(&self.flushes);
            *flushes += 1;
            while let Ok(job) = self.pending.try_recv() {
                match job {
                    Job::Frame { .. } => {
                        self.frames_in_flight.fetch_sub(1, Ordering::SeqCst);
                    }
                    Job::Caps { .. } => caps = Some(job),
                    _ => {}
                }
            }
            while self.outputs.try_recv().is_ok() {}
        }
        // After the lock: the worker may need it to take jobs while this waits for room.
        if let Some(caps) = caps {
            let _ = self.jobs.send(caps);
        }
        let _ = self.outputs_tx.send(Output::Wake);
    }

    pub fn stop(mut self) {
        self.discard_queued();
        let _ = self.jobs.send(Job::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct WorkerState {
    element: gst::Element,
    tracker: Tracker,
    settings: WorkerSettings,
    renderer: Option<Renderer>,
    segment: gst::FormattedSegment<gst::ClockTime>,
    /// The tracker's id of the next tracked frame.
    next_id: u64,
    /// Frames seen since the start (or the last flush): the timeline's frame numbers otherwise.
    frame_count: u64,
    /// (pts, tracker id) of the last tracked frames, to place prompts made on a displayed frame.
    recent: VecDeque<(gst::ClockTime, u64)>,
    /// The last tracked frame's mattes, carried over frames the skip policy does not track.
    last: Mattes,
    /// Clicks on the current frame per object, accumulated as the official demo does.
    clicks: HashMap<u32, Clicks>,
    /// The timeline's prompts not applied yet.
    timeline_waiting: Vec<TimedPrompt>,
    /// Prompts that came before the first caps, for the first frame.
    before_caps: Vec<(PromptAction, &'static str)>,
    /// A flush came: the next frame may lie anywhere in the stream (a seek), and the timeline's
    /// prompts placed before it do not apply to it.
    seeked: bool,
    out: Sender<Output>,
    max_latency: Arc<AtomicU64>,
    reported_latency: u64,
    /// The worker's end of the job queue, to take the next job ahead of its turn.
    jobs: Receiver<Job>,
    /// The job after the one being handled, taken ahead (see the module docs).
    ahead: Option<Ahead>,
    /// The frame being handled, when it was encoded ahead.
    encoded: Option<Result<EncodedFrame, gst::ErrorMessage>>,
    flushes: Flushes,
}

/// A job taken from the queue ahead of its turn, and, for a frame to track, what was made of it
/// while the frame before it was tracked.
struct Ahead {
    job: Job,
    /// `Worker::flushes` when it was taken.
    flushes: u64,
    encoded: Option<Result<EncodedFrame, gst::ErrorMessage>>,
}

impl WorkerState {
    fn handle(&mut self, job: Job) {
        match job {
            Job::Caps {
                input,
                output,
                caps,
            } => {
                let resized = self.renderer.as_ref().is_some_and(|r| {
                    (r.input_info().width(), r.input_info().height())
                        != (input.width(), input.height())
                });
                if resized {
                    gst::element_warning!(
                        self.element,
                        gst::StreamError::Format,
                        (
                            "The frame size changed to {}x{}: the objects' memory restarts",
                            input.width(),
                            input.height()
                        )
                    );
                    self.reset();
                }
                match Renderer::new(&input, &output, self.settings.mode) {
                    Ok(r) => self.renderer = Some(r),
                    Err(e) => {
                        return self.fail(gst::error_msg!(
                            gst::CoreError::Negotiation,
                            ("Cannot convert {caps}: {e}")
                        ));
                    }
                }
                let _ = self.out.send(Output::Event(gst::event::Caps::new(&caps)));
                for (action, source) in std::mem::take(&mut self.before_caps) {
                    self.prompt(action, source);
                }
            }
            Job::Frame {
                buffer,
                track,
                flushes,
            } => {
                if let Err(e) = self.frame(buffer, track, flushes) {
                    self.fail(e);
                }
            }
            Job::Prompt { action, source } => self.prompt(action, source),
            Job::Event(event) => {
                if let gst::EventView::Segment(s) = event.view()
                    && let Ok(segment) = s.segment().clone().downcast::<gst::ClockTime>()
                {
                    self.segment = segment;
                }
                let _ = self.out.send(Output::Event(event));
            }
            Job::Flushed => {
                self.reset();
                self.frame_count = 0;
                self.timeline_waiting = self.settings.timeline.clone();
                self.seeked = true;
            }
            Job::Stop => {}
        }
    }

    fn fail(&mut self, error: gst::ErrorMessage) {
        let _ = self.out.send(Output::Error(error));
    }

    /// Forgets the objects' memory and the frame history (the timeline broke).
    fn reset(&mut self) {
        self.tracker.reset();
        self.next_id = 0;
        self.recent.clear();
        self.last = Mattes::none(self.settings.mode);
        self.before_caps.clear();
        self.clicks.clear();
    }

    /// Tracks (or carries the last masks over) a frame sent when `flushes` flushes had come,
    /// and sends its output unless a flush came since.
    fn frame(
        &mut self,
        buffer: gst::Buffer,
        track: bool,
        flushes: u64,
    ) -> Result<(), gst::ErrorMessage> {
        if self.renderer.is_none() {
            return Err(gst::error_msg!(
                gst::CoreError::Negotiation,
                ("A buffer before the caps")
            ));
        }
        let number = self.frame_number(&buffer);
        self.frame_count += 1;
        let start = Instant::now();
        if track {
            self.apply_timeline(number, buffer.as_ref());
            let id = self.next_id;
            self.next_id += 1;
            let encoder = self.tracker.encoder();
            let encoded = match self.encoded.take() {
                Some(encoded) => encoded?,
                None => encode(self.renderer.as_ref(), &encoder, buffer.as_ref())?,
            };
            // The next frame, when it is already queued, goes through the image encoder while
            // this one is tracked.
            self.take_next_job();
            let next = match &self.ahead {
                Some(Ahead {
                    job:
                        Job::Frame {
                            buffer,
                            track: true,
                            ..
                        },
                    ..
                }) => Some(buffer.clone()),
                _ => None,
            };
            let (tracker, renderer) = (&mut self.tracker, self.renderer.as_ref());
            let (output, next_encoded) = rayon::join(
                || {
                    tracing::trace_span!("element_track")
                        .in_scope(|| tracker.push_encoded(id, encoded))
                },
                || next.map(|b| encode(renderer, &encoder, b.as_ref())),
            );
            if let Some(ahead) = self.ahead.as_mut() {
                ahead.encoded = next_encoded;
            }
            let output = output.map_err(|e| {
                gst::error_msg!(
                    gst::LibraryError::Failed,
                    ("Tracking failed on frame {number}: {e}")
                )
            })?;
            if let Some(pts) = buffer.pts() {
                self.recent.push_back((pts, id));
                while self.recent.len() > self.tracker.options().feature_history.max(1) {
                    self.recent.pop_front();
                }
            }
            self.last = tracing::trace_span!("element_mattes").in_scope(|| self.mattes(&output))?;
        }
        let out = tracing::trace_span!("element_render")
            .in_scope(|| self.render(buffer, number, !track))?;
        if track {
            self.note_latency(start.elapsed().as_nanos() as u64);
        }
        let count = flush_count(&self.flushes);
        if *count == flushes {
            let _ = self.out.send(Output::Buffer(out));
        }
        Ok(())
    }

    /// Whether a job, taken from the queue when `taken_at` flushes had come (taken ahead of its
    /// turn) or just now (`None`), belongs to the stream from before a flush. The caps stay:
    /// they are sticky, and no flush sends them again.
    fn is_from_before_a_flush(&self, job: &Job, taken_at: Option<u64>) -> bool {
        let now = *flush_count(&self.flushes);
        let taken_before = taken_at.is_some_and(|count| count != now);
        match job {
            Job::Frame { flushes, .. } => *flushes != now || taken_before,
            Job::Prompt { .. } | Job::Event(_) => taken_before,
            Job::Caps { .. } | Job::Flushed | Job::Stop => false,
        }
    }

    /// Takes the next queued job, if there is one, ahead of its turn.
    fn take_next_job(&mut self) {
        if self.ahead.is_some() {
            return;
        }
        // Under the lock a flush drains the queue with: the count is the job's own.
        let flushes = flush_count(&self.flushes);
        if let Ok(job) = self.jobs.try_recv() {
            self.ahead = Some(Ahead {
                job,
                flushes: *flushes,
                encoded: None,
            });
        }
    }

    /// The timeline's frame number of a buffer: its stream time times the frame rate, rounded to
    /// the nearest (timestamps are whole nanoseconds: frame 1 at 30 fps starts at 33333333 ns),
    /// when both are known (right across seeks); else the count of frames seen.
    fn frame_number(&self, buffer: &gst::Buffer) -> u64 {
        let fps = self.renderer.as_ref().map(|r| r.input_info().fps());
        match (
            buffer
                .pts()
                .and_then(|pts| self.segment.to_stream_time(pts)),
            fps,
        ) {
            (Some(t), Some(fps)) if fps.numer() > 0 && fps.denom() > 0 => {
                let per_frame = fps.denom() as u128 * 1_000_000_000;
                ((t.nseconds() as u128 * fps.numer() as u128 + per_frame / 2) / per_frame) as u64
            }
            _ => self.frame_count,
        }
    }

    /// Applies the timeline's prompts placed at or before this frame (those a frame-rate
    /// rounding or a late start stepped over included), except, right after a seek, those placed
    /// before it: they belong to frames that were not tracked, and apply when a seek goes back.
    fn apply_timeline(&mut self, number: u64, buffer: &gst::BufferRef) {
        let stream_time = buffer.pts().and_then(|p| self.segment.to_stream_time(p));
        let due_now = |place: &Place| match *place {
            Place::Frame(f) => f <= number,
            Place::Time(t) => stream_time.is_some_and(|s| t <= s),
        };
        // Placed on an earlier frame: a frame number before this one, or a time the previous
        // frame (one duration back) had already reached.
        let earlier = |place: &Place| match *place {
            Place::Frame(f) => f < number,
            Place::Time(t) => stream_time.is_some_and(|s| {
                t + buffer.duration().unwrap_or(gst::ClockTime::ZERO) <= s && t < s
            }),
        };
        if std::mem::take(&mut self.seeked) {
            self.timeline_waiting.retain(|t| !earlier(&t.place));
        }
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.timeline_waiting)
            .into_iter()
            .partition(|t| due_now(&t.place));
        self.timeline_waiting = later;
        for t in due {
            let prompt = Prompt {
                frame: self.next_id,
                ..t.prompt
            };
            self.add(prompt, "timeline");
        }
    }

    /// The mattes the output mode renders, at the frame's size (computed on the device; one
    /// download).
    fn mattes(&self, output: &FrameOutput) -> Result<Mattes, gst::ErrorMessage> {
        let failed =
            |e: crate::Error| gst::error_msg!(gst::LibraryError::Failed, ("Matte failed: {e}"));
        let softness = self.settings.softness;
        match self.settings.mode {
            OutputMode::Meta | OutputMode::Overlay => {
                let mattes = self
                    .tracker
                    .frame_mattes(output, softness)
                    .map_err(failed)?;
                Ok(Mattes::PerObject(
                    mattes
                        .into_iter()
                        .zip(&output.objects)
                        .map(|((object, matte), o)| ObjectMatte {
                            object,
                            matte,
                            score: o.object_score,
                            iou: o.iou,
                            refined: o.refined.is_some(),
                        })
                        .collect(),
                ))
            }
            OutputMode::Alpha | OutputMode::Mask => {
                let chosen = &self.settings.matte_objects;
                self.tracker
                    .frame_matte_union(output, softness, |o| {
                        chosen.is_empty() || chosen.contains(&o)
                    })
                    .map(Mattes::Union)
                    .map_err(failed)
            }
        }
    }

    fn render(
        &self,
        buffer: gst::Buffer,
        number: u64,
        carried: bool,
    ) -> Result<gst::Buffer, gst::ErrorMessage> {
        let renderer = self.renderer.as_ref().expect("caps came first");
        let info = renderer.input_info();
        let (w, h) = (info.width() as usize, info.height() as usize);
        let fail = |e: gst::glib::BoolError| {
            gst::error_msg!(gst::StreamError::Failed, ("Rendering failed: {e}"))
        };
        match &self.last {
            Mattes::PerObject(mattes) if self.settings.mode == OutputMode::Meta => {
                let mut out = buffer;
                let masks = mattes
                    .iter()
                    .map(|o| {
                        Ok(ObjectMask {
                            object: o.object,
                            object_score: o.score,
                            iou: o.iou,
                            bbox: bbox(&o.matte, w, h),
                            mask: meta::gray8_buffer(w as u32, h as u32, &o.matte)?,
                            carried,
                            refined: o.refined,
                        })
                    })
                    .collect::<Result<Vec<_>, gst::glib::BoolError>>()
                    .map_err(fail)?;
                meta::add(out.make_mut(), number, &masks).map_err(fail)?;
                Ok(out)
            }
            Mattes::PerObject(mattes) => {
                let tinted: Vec<(u32, &[u8])> = mattes
                    .iter()
                    .map(|o| (o.object, o.matte.as_slice()))
                    .collect();
                renderer.render(buffer, None, &tinted).map_err(fail)
            }
            Mattes::Union(matte) => renderer.render(buffer, matte.as_deref(), &[]).map_err(fail),
        }
    }

    fn note_latency(&mut self, ns: u64) {
        let previous = self.max_latency.fetch_max(ns, Ordering::Relaxed).max(ns);
        // Tell the pipeline when processing got noticeably slower than what it was told.
        if previous > self.reported_latency + self.reported_latency / 10 {
            self.reported_latency = previous;
            let _ = self
                .element
                .post_message(gst::message::Latency::builder().src(&self.element).build());
        }
    }

    /// A prompt from an event, a signal or a click.
    fn prompt(&mut self, action: PromptAction, source: &'static str) {
        match action {
            PromptAction::Reset => {
                self.reset();
                self.ack(None, source, Ok("reset"));
            }
            PromptAction::Remove { object } => {
                self.clicks.remove(&object);
                let result = self
                    .tracker
                    .remove_object(object)
                    .map(|_| "removed")
                    .map_err(|e| e.to_string());
                self.ack(Some(object), source, result);
            }
            PromptAction::Clear { object } => {
                self.clicks.remove(&object);
                let result = self
                    .tracker
                    .clear_prompts(object)
                    .map(|_| "cleared")
                    .map_err(|e| e.to_string());
                self.ack(Some(object), source, result);
            }
            PromptAction::Add(spec) => {
                let Some(renderer) = &self.renderer else {
                    // Before the caps the frame size is unknown: the prompt waits for them.
                    self.before_caps.push((PromptAction::Add(spec), source));
                    return;
                };
                let size = (
                    renderer.input_info().width() as usize,
                    renderer.input_info().height() as usize,
                );
                let frame = self.place(&spec);
                let mut prompt = spec.to_prompt(frame, size);
                // A bad click must not join the object's later clicks: check it alone first.
                if let Err(reason) = prompt.validate(size.0, size.1) {
                    return self.ack(Some(spec.object), source, Err(reason));
                }
                if source == "click" {
                    prompt = self.accumulate(prompt);
                }
                self.add(prompt, source);
            }
        }
    }

    /// The tracker frame a prompt applies to: the displayed frame it names if still known,
    /// else the next frame.
    fn place(&self, spec: &PromptSpec) -> u64 {
        spec.pts
            .and_then(|pts| {
                self.recent
                    .iter()
                    .rev()
                    .find(|(p, _)| *p <= pts)
                    .map(|(_, id)| *id)
            })
            .unwrap_or(self.next_id)
    }

    /// Clicks for one object on one frame add up (each click sends them all, with the frame's
    /// previous mask), as in the official interactive demo.
    fn accumulate(&mut self, prompt: Prompt) -> Prompt {
        let entry =
            self.clicks
                .entry(prompt.object)
                .or_insert((prompt.frame, Vec::new(), Vec::new()));
        if entry.0 != prompt.frame {
            *entry = (prompt.frame, Vec::new(), Vec::new());
        }
        entry.1.extend(&prompt.points);
        entry.2.extend(&prompt.labels);
        Prompt {
            points: entry.1.clone(),
            labels: entry.2.clone(),
            ..prompt
        }
    }

    fn add(&mut self, prompt: Prompt, source: &'static str) {
        let object = prompt.object;
        let known = self.tracker.objects().any(|o| o == object);
        if !known && self.tracker.objects().count() >= self.settings.max_objects {
            let reason = format!(
                "object {object} would be one more than max-objects ({})",
                self.settings.max_objects
            );
            return self.ack(Some(object), source, Err(reason));
        }
        let result = self
            .tracker
            .add_prompt(&prompt)
            .map_err(|e| e.to_string())
            .map(|outcome| match outcome {
                PromptOutcome::Applied(_) => "applied",
                PromptOutcome::Queued => "queued",
                PromptOutcome::Deferred => "deferred",
            });
        self.ack(Some(object), source, result);
    }

    /// The `sam2-prompt-ack` element message; a rejected prompt is also a warning.
    fn ack(&self, object: Option<u32>, source: &str, result: Result<&str, String>) {
        let mut s = gst::Structure::builder("sam2-prompt-ack")
            .field("source", source)
            .field("accepted", result.is_ok());
        if let Some(object) = object {
            s = s.field("object", object);
        }
        s = match &result {
            Ok(outcome) => s.field("outcome", *outcome),
            Err(reason) => s.field("reason", reason.as_str()),
        };
        if let Err(reason) = &result {
            gst::element_warning!(
                self.element,
                gst::StreamError::Format,
                ("Prompt from {source} rejected: {reason}")
            );
        }
        let _ = self.element.post_message(
            gst::message::Element::builder(s.build())
                .src(&self.element)
                .build(),
        );
    }
}

/// The bounding box of a matte's object (> 127), normalised to the frame.
/// A frame read from its buffer and through the tracker's image encoder.
fn encode(
    renderer: Option<&Renderer>,
    encoder: &FrameEncoder,
    buffer: &gst::BufferRef,
) -> Result<EncodedFrame, gst::ErrorMessage> {
    let renderer = renderer.ok_or_else(|| {
        gst::error_msg!(gst::CoreError::Negotiation, ("A buffer before the caps"))
    })?;
    let rgb = tracing::trace_span!("element_frame_to_rgb")
        .in_scope(|| renderer.rgb(buffer))
        .map_err(|e| gst::error_msg!(gst::StreamError::Decode, ("Cannot read the frame: {e}")))?;
    tracing::trace_span!("element_encode")
        .in_scope(|| encoder.encode(&rgb))
        .map_err(|e| {
            gst::error_msg!(
                gst::LibraryError::Failed,
                (
                    "Encoding the frame at {} failed: {e}",
                    buffer.pts().display()
                )
            )
        })
}

fn bbox(matte: &[u8], w: usize, h: usize) -> Option<[f32; 4]> {
    let (mut x0, mut y0, mut x1, mut y1) = (usize::MAX, usize::MAX, 0, 0);
    for (i, v) in matte.iter().enumerate() {
        if *v > 127 {
            let (x, y) = (i % w, i / w);
            (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x + 1), y1.max(y + 1));
        }
    }
    (x0 != usize::MAX).then(|| {
        [
            x0 as f32 / w as f32,
            y0 as f32 / h as f32,
            x1 as f32 / w as f32,
            y1 as f32 / h as f32,
        ]
    })
}
