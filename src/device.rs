//! Choosing the compute device at run time.

use candle_core::{DType, Device};

use crate::error::{Error, Result};

/// Parses a device name: `cpu`, `cuda` (first GPU), `cuda:N`, or `auto` (the first GPU when
/// this build has CUDA support and a GPU answers, else the CPU).
pub fn select_device(name: &str) -> Result<Device> {
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
