//! What the benchmarks share: their `--flag value` options and the process's memory figures.

#![allow(dead_code)] // each benchmark uses its own part

use std::str::FromStr;

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
