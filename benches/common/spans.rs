//! Time spent inside each of the engine's `tracing` spans (`linear in_dim=256 out_dim=1024`,
//! `conv2d kernel=3 stride=2`, `memory_encoder`, ...), for a benchmark's `--spans` table.
//!
//! The engine's modules make their span once, when they are built, so the profiler must be
//! installed before the model is. Times are inclusive (a `memory_encoder` holds its convolutions)
//! and measured on the calling thread, which waits for the work its span hands to other threads.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

/// A span's label and the time spent in it so far.
struct SpanTotal {
    label: String,
    time: Duration,
    entries: u64,
}

#[derive(Default)]
pub struct SpanProfile {
    spans: Mutex<Vec<SpanTotal>>,
}

thread_local! {
    /// When each span open on this thread was entered.
    static ENTERED: RefCell<Vec<(u64, Instant)>> = const { RefCell::new(Vec::new()) };
}

static PROFILE: OnceLock<&'static SpanProfile> = OnceLock::new();

/// Formats a span's fields after its name: `conv2d kernel=3 stride=2`.
struct Label<'a>(&'a mut String);

impl Visit for Label<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, " {}={value:?}", field.name());
    }
}

impl SpanProfile {
    /// Installs the profiler as the process's subscriber (once; later calls return the same one).
    pub fn install() -> &'static SpanProfile {
        PROFILE.get_or_init(|| {
            let profile: &'static SpanProfile = Box::leak(Box::default());
            tracing::subscriber::set_global_default(Forward(profile))
                .expect("no other tracing subscriber");
            profile
        })
    }

    /// The profiler, if `install` ran.
    pub fn installed() -> Option<&'static SpanProfile> {
        PROFILE.get().copied()
    }

    /// Per label: total time in ms divided by `runs`, and entries per run; slowest first. Resets
    /// the totals.
    pub fn take(&self, runs: usize) -> Vec<(String, f64, f64)> {
        let mut spans = self.spans.lock().unwrap();
        let mut by_label: HashMap<&str, (Duration, u64)> = HashMap::new();
        for s in spans.iter() {
            let e = by_label.entry(&s.label).or_default();
            e.0 += s.time;
            e.1 += s.entries;
        }
        let mut rows: Vec<_> = by_label
            .into_iter()
            .filter(|(_, (_, n))| *n > 0)
            .map(|(label, (time, n))| {
                (
                    label.to_owned(),
                    time.as_secs_f64() * 1e3 / runs as f64,
                    n as f64 / runs as f64,
                )
            })
            .collect();
        rows.sort_by(|a, b| b.1.total_cmp(&a.1));
        for s in spans.iter_mut() {
            s.time = Duration::ZERO;
            s.entries = 0;
        }
        rows
    }

    /// Prints `take(runs)`, indented under a benchmark's line.
    pub fn print(&self, runs: usize) {
        for (label, ms, entries) in self.take(runs) {
            if ms >= 0.05 {
                println!("      {label:<46} {ms:>7.2} ms {entries:>6.0}x");
            }
        }
    }
}

/// The subscriber: a `&'static SpanProfile` (the trait wants an owned value).
struct Forward(&'static SpanProfile);

impl Subscriber for Forward {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.is_span()
    }

    fn new_span(&self, span: &Attributes<'_>) -> Id {
        let mut label = span.metadata().name().to_owned();
        span.record(&mut Label(&mut label));
        let mut spans = self.0.spans.lock().unwrap();
        spans.push(SpanTotal {
            label,
            time: Duration::ZERO,
            entries: 0,
        });
        Id::from_u64(spans.len() as u64)
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, _: &Event<'_>) {}

    fn enter(&self, span: &Id) {
        ENTERED.with(|e| e.borrow_mut().push((span.into_u64(), Instant::now())));
    }

    fn exit(&self, span: &Id) {
        let Some((id, start)) = ENTERED.with(|e| e.borrow_mut().pop()) else {
            return;
        };
        debug_assert_eq!(id, span.into_u64());
        let mut spans = self.0.spans.lock().unwrap();
        if let Some(s) = spans.get_mut(id as usize - 1) {
            s.time += start.elapsed();
            s.entries += 1;
        }
    }
}
