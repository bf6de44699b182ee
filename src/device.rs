//! Choosing the compute device at run time.

use candle_core::{DType, Device};

use crate::error::{Error, Result};

/// Parses a device name: `cpu`, `cuda` (first GPU), `cuda:N`, or `auto` (the first GPU when
/// this build has CUDA support and a GPU answers, else the CPU).
pub fn select_device(name: &str) -> Result<Device> {
    keep_candle_pool_off_the_cores();
    match name.trim() {
        "cpu" => Ok(Device::Cpu),
        "auto" => Ok(Device::new_cuda(0).unwrap_or(Device::Cpu)),
        "cuda" | "gpu" => cuda(0),
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(ordinal)) => cuda(ordinal),
            _ => Err(Error::Device(format!(
                "unknown device {other:?} (auto, cpu, cuda, cuda:N)"
            ))),
        },
    }
}

/// candle runs its element-wise operations on large tensors (64 Ki values and up: most of the
/// nano model's) on a thread pool of its own, beside rayon's, which runs every other operation of
/// the engine. That pool's workers spin for some 25,000 rounds after each operation before they
/// sleep, on the cores rayon's threads are working on, and its one lock makes two threads' models
/// (a stream encoding its next frame while it tracks this one) take turns. So, unless the user
/// sized it (`CANDLE_NUM_THREADS`, or `CANDLE_BARRIER_POOL_SPIN_LIMIT`), the pool gets no workers
/// and its operations run on the thread that calls them. Measured with the nano model, 256², on
/// two cores (2026-12-08): a tracking step 35 → 33 ms, and the next frame's encoder beside the
/// step 50 → 37 ms; SAM 2.1 tiny at 1024² unchanged. It must run before candle's first such
/// operation in the process: `select_device` and the plugin's registration call it.
pub fn keep_candle_pool_off_the_cores() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let set = |name| std::env::var_os(name).is_some();
        if !set("CANDLE_NUM_THREADS") && !set("CANDLE_BARRIER_POOL_SPIN_LIMIT") {
            // SAFETY: `set_var` must not race with a read of the environment on another
            // thread. This runs once, before any model exists, so no thread of ours reads it;
            // the CLI calls it first thing in `main`, with no other thread, and the plugin when
            // GStreamer loads it. What remains is a host application's thread calling `getenv`
            // at that instant: glibc's `setenv` copies `environ` into a new array and frees the
            // old one only if an earlier `setenv` had allocated it.
            unsafe { std::env::set_var("CANDLE_NUM_THREADS", "1") };
        }
    });
}

fn cuda(ordinal: usize) -> Result<Device> {
    if !cfg!(feature = "cuda") {
        return Err(Error::Device(
            "this build has no CUDA support (rebuild with --features cuda)".into(),
        ));
    }
    Device::new_cuda(ordinal).map_err(|e| Error::Device(format!("cuda:{ordinal}: {e}")))
}

/// Refuses a compute precision the device cannot run: candle's CPU backend has no bf16 matrix
/// product. (f32 is the parity reference everywhere; f16 runs on both.)
pub fn check_dtype(device: &Device, dtype: DType) -> Result<()> {
    if device.is_cpu() && dtype == DType::BF16 {
        return Err(Error::Device(
            "bf16 is not supported on the CPU (use f32, or f16; bf16 needs a CUDA device)".into(),
        ));
    }
    Ok(())
}

/// A short human name of a device, for logs and benchmark output.
pub fn describe(device: &Device) -> String {
    match device {
        Device::Cpu => format!("cpu ({} threads)", candle_core::utils::get_num_threads()),
        Device::Cuda(_) => "cuda".into(),
        Device::Metal(_) => "metal".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(select_device("cpu").unwrap().is_cpu());
        assert!(select_device("auto").is_ok());
        assert!(
            select_device("tpu")
                .unwrap_err()
                .to_string()
                .contains("tpu")
        );
        assert!(select_device("cuda:x").is_err());
        #[cfg(not(feature = "cuda"))]
        assert!(
            select_device("cuda:0")
                .unwrap_err()
                .to_string()
                .contains("--features cuda")
        );
    }
}
