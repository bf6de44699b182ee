//! What the benchmarks share: their `--flag value` options and the process's memory figures.

#![allow(dead_code)] // each benchmark uses its own part

use std::str::FromStr;
use std::time::Instant;

use candle_core::Device;

pub mod spans;

/// The benchmark's `--flag value` options (cargo's own `--bench` left out).
pub struct Args(Vec<String>);

impl Args {
    pub fn from_env() -> Self {
        Self(
            std::env::args()
                .skip(1)
                .filter(|a| a != "--bench")
                .collect(),
        )
    }

    /// The value after `name`, or `default`.
    pub fn string(&self, name: &str, default: &str) -> String {
        self.0
            .iter()
            .position(|a| a == name)
            .and_then(|i| self.0.get(i + 1).cloned())
            .unwrap_or_else(|| default.to_owned())
    }

    /// Whether the flag `name` (a switch without a value) was given.
    pub fn flag(&self, name: &str) -> bool {
        self.0.iter().any(|a| a == name)
    }

    /// The value after `name` parsed, or `default`; a value that does not parse is an error.
    pub fn parse<T: FromStr>(&self, name: &str, default: T) -> anyhow::Result<T> {
        match self.0.iter().position(|a| a == name) {
            None => Ok(default),
            Some(i) => {
                let value = self.0.get(i + 1).map_or("", String::as_str);
                value
                    .parse()
                    .map_err(|_| anyhow::anyhow!("{name}: cannot read {value:?}"))
            }
        }
    }
}

/// The process's resident set now, in MiB.
pub fn rss_mib() -> f64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: f64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN);
    pages * 4096.0 / (1 << 20) as f64
}

/// The process's peak resident set so far, in MiB.
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Waits for the device to finish queued work (timings must not end early on a GPU).
pub fn sync(device: &Device) {
    device.synchronize().expect("device sync");
}

/// Runs `f` once to warm up, then `reps` times; prints min and median in ms.
pub fn time<T>(label: &str, reps: usize, device: &Device, mut f: impl FnMut() -> T) -> T {
    let mut out = f();
    sync(device);
    let profile = spans::SpanProfile::installed();
    if let Some(p) = profile {
        p.take(1); // the warm-up's spans are not counted
    }
    let mut ms = Vec::with_capacity(reps);
    for _ in 0..reps {
        let start = Instant::now();
        out = f();
        sync(device);
        ms.push(start.elapsed().as_secs_f64() * 1e3);
    }
    ms.sort_by(|a, b| a.total_cmp(b));
    println!(
        "{label:<52} {:>9.1} ms min {:>9.1} ms median",
        ms[0],
        ms[ms.len() / 2]
    );
    if let Some(p) = profile {
        p.print(reps);
    }
    out
}
