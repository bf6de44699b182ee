//! Weights: official PyTorch checkpoints (`{"model": state_dict}`) read directly, and
//! safetensors with the same keys. Loading is strict, like the official `load_state_dict`: a
//! missing, unexpected or mis-shaped tensor is an error naming the key (and both shapes).

use std::collections::{HashMap, HashSet};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::VarBuilder;
use candle_nn::var_builder::SimpleBackend;

use crate::error::{Error, Result};
use crate::model::config::Sam2Config;
use crate::model::sam2_base::Sam2Base;

/// All tensors of a weights file, on the host, in their stored dtype.
#[derive(Debug)]
pub struct WeightFile {
    pub path: PathBuf,
    pub tensors: HashMap<String, Tensor>,
}

impl WeightFile {
    /// Reads a `.pt`/`.pth` checkpoint (the state dict under `"model"`, or at the root) or a
    /// `.safetensors` file. A truncated or corrupt file is an error, never a panic.
    pub fn load(path: &Path) -> Result<Self> {
        if !path.is_file() {
            return Err(Error::io(
                path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
            ));
        }
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("")
            .to_ascii_lowercase();
        // The readers are third-party parsers of untrusted bytes: a panic in one of them on a
        // malformed file must still come out as an error that names the file.
        let read = catch_unwind(AssertUnwindSafe(|| match ext.as_str() {
            "safetensors" => read_safetensors(path),
            "pt" | "pth" | "ckpt" | "bin" => read_pytorch(path),
            _ => Err(format!(
                "unknown weights format {:?} (expected .pt, .pth or .safetensors)",
                path.extension().unwrap_or_default()
            )),
        }));
        let tensors = match read {
            Ok(Ok(tensors)) => tensors,
            Ok(Err(reason)) => return Err(Error::weights(path, reason)),
            Err(_) => {
                return Err(Error::weights(
                    path,
                    "corrupt file (the reader failed on it)",
                ));
            }
        };
        if tensors.is_empty() {
            return Err(Error::weights(path, "no tensors in the file"));
        }
        Ok(Self {
            path: path.to_owned(),
            tensors,
        })
    }

    /// Reads safetensors from memory (built-in weights); `origin` names them in errors.
    pub fn from_safetensors_bytes(bytes: &[u8], origin: &Path) -> Result<Self> {
        let tensors = parse_safetensors(bytes).map_err(|reason| Error::weights(origin, reason))?;
        Ok(Self {
            path: origin.to_owned(),
            tensors,
        })
    }

    /// Seeded random weights for `config` (N(0, 0.02), norms near 1): for benchmarks and tests
    /// that need a model of a real size and no checkpoint.
    pub fn random(config: &Sam2Config, seed: u64) -> Result<Self> {
        let mut state = seed ^ 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            // splitmix64, then Box-Muller: deterministic on every platform.
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
        };
        let mut tensors = HashMap::new();
        for (name, shape) in expected_parameters(config)? {
            let n: usize = shape.iter().product();
            let is_norm_weight = name.ends_with("norm.weight")
                || name.contains(".norm") && name.ends_with(".weight") && shape.len() == 1;
            let values: Vec<f32> = (0..n)
                .map(|_| {
                    let (u1, u2) = (next().max(f64::MIN_POSITIVE), next());
                    let g = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
                    (if is_norm_weight {
                        1.0 + 0.02 * g
                    } else {
                        0.02 * g
                    }) as f32
                })
                .collect();
            tensors.insert(name, Tensor::from_vec(values, shape, &Device::Cpu)?);
        }
        Ok(Self {
            path: PathBuf::from(format!("<random seed {seed}>")),
            tensors,
        })
    }

    /// SHA-256 over the tensors as loaded: for each key in sorted order, the key, its shape as
    /// a JSON list (`[256, 32, 1, 1]`) and its values as little-endian f32. Names a model's
    /// weights whatever the container (a `.pt` and its safetensors conversion hash the same);
    /// `models/refiner/refiner.py` computes the same for the refiner file's metadata.
    pub fn content_hash(&self) -> Result<String> {
        use sha2::{Digest, Sha256};
        let mut keys: Vec<&String> = self.tensors.keys().collect();
        keys.sort();
        let mut hasher = Sha256::new();
        for key in keys {
            let tensor = &self.tensors[key];
            let dims: Vec<String> = tensor.dims().iter().map(|d| d.to_string()).collect();
            hasher.update(key.as_bytes());
            hasher.update(format!("[{}]", dims.join(", ")).as_bytes());
            let values = tensor
                .flatten_all()?
                .to_dtype(DType::F32)?
                .to_vec1::<f32>()?;
            for chunk in values.chunks(1 << 16) {
                let bytes: Vec<u8> = chunk.iter().flat_map(|v| v.to_le_bytes()).collect();
                hasher.update(&bytes);
            }
        }
        Ok(hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect())
    }

    /// Writes the tensors as safetensors in `dtype` (f32, f16 or bf16).
    pub fn save_safetensors(&self, out: &Path, dtype: DType) -> Result<()> {
        let converted = self
            .tensors
            .iter()
            .map(|(k, t)| {
                Ok((
                    k.clone(),
                    if t.dtype().is_float() {
                        t.to_dtype(dtype)?
                    } else {
                        t.clone()
                    },
                ))
            })
            .collect::<Result<HashMap<_, _>>>()?;
        candle_core::safetensors::save(&converted, out)
            .map_err(|e| Error::weights(out, e.to_string()))
    }
}

fn read_safetensors(path: &Path) -> std::result::Result<HashMap<String, Tensor>, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    parse_safetensors(&bytes)
}

pub(crate) fn parse_safetensors(
    bytes: &[u8],
) -> std::result::Result<HashMap<String, Tensor>, String> {
    candle_core::safetensors::load_buffer(bytes, &Device::Cpu)
        .map_err(|e| format!("not a valid safetensors file: {e}"))
}

fn read_pytorch(path: &Path) -> std::result::Result<HashMap<String, Tensor>, String> {
    let describe = |e: candle_core::Error| format!("not a readable PyTorch checkpoint: {e}");
    // Official checkpoints hold {"model": state_dict}; a bare state dict is accepted too.
    let infos = candle_core::pickle::read_pth_tensor_info(path, false, Some("model"))
        .or_else(|_| candle_core::pickle::read_pth_tensor_info(path, false, None))
        .map_err(describe)?;
    let key = if infos.is_empty() {
        None
    } else {
        Some("model")
    };
    let tensors = candle_core::pickle::read_all_with_key(path, key)
        .or_else(|_| candle_core::pickle::read_all(path))
        .map_err(describe)?;
    Ok(tensors.into_iter().collect())
}

/// A `VarBuilder` backend that serves the file's tensors by exact key and shape, records every
/// key the model asks for, and remembers the first problem in words for the error message.
struct StrictBackend {
    tensors: HashMap<String, Tensor>,
    used: Mutex<HashSet<String>>,
    problem: Mutex<Option<String>>,
}

impl StrictBackend {
    fn fail(&self, reason: String) -> candle_core::Error {
        let mut problem = self.problem.lock().unwrap_or_else(|e| e.into_inner());
        problem.get_or_insert(reason.clone());
        candle_core::Error::Msg(reason)
    }
}

impl SimpleBackend for StrictBackend {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let Some(tensor) = self.tensors.get(name) else {
            return Err(self.fail(format!(
                "missing key {name} (the config expects shape {:?})",
                shape.dims()
            )));
        };
        if tensor.shape() != &shape {
            return Err(self.fail(format!(
                "key {name} has shape {:?} but the config expects {:?}",
                tensor.dims(),
                shape.dims()
            )));
        }
        self.used
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_owned());
        tensor.to_dtype(dtype)?.to_device(dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        match self.tensors.get(name) {
            Some(t) => t.to_dtype(dtype)?.to_device(dev),
            None => Err(self.fail(format!("missing key {name}"))),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
}

/// Builds the model of `config` from `weights`, strictly: every key of the file must be used
/// and every tensor the config needs must be there with its shape.
pub fn build_model(
    config: &Sam2Config,
    weights: WeightFile,
    dtype: DType,
    device: &Device,
) -> Result<Sam2Base> {
    build_strict(weights, dtype, device, |vb| Sam2Base::new(config, vb))
}

/// Builds a module from `weights` as `build_model` does: a missing, mis-shaped or unused key is
/// an error naming it.
pub(crate) fn build_strict<T>(
    weights: WeightFile,
    dtype: DType,
    device: &Device,
    build: impl FnOnce(VarBuilder) -> candle_core::Result<T>,
) -> Result<T> {
    let path = weights.path.clone();
    let keys: Vec<String> = weights.tensors.keys().cloned().collect();
    let backend = Arc::new(StrictBackend {
        tensors: weights.tensors,
        used: Mutex::new(HashSet::new()),
        problem: Mutex::new(None),
    });
    let vb = VarBuilder::from_backend(Box::new(Shared(backend.clone())), dtype, device.clone());
    let model = build(vb).map_err(|e| {
        match backend
            .problem
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            Some(reason) => Error::weights(&path, reason),
            None => Error::weights(&path, e.to_string()),
        }
    })?;
    let used = backend.used.lock().unwrap_or_else(|e| e.into_inner());
    let mut unexpected: Vec<&String> = keys.iter().filter(|k| !used.contains(*k)).collect();
    if !unexpected.is_empty() {
        unexpected.sort();
        let more = if unexpected.len() > 1 {
            format!(" (and {} more)", unexpected.len() - 1)
        } else {
            String::new()
        };
        return Err(Error::weights(
            &path,
            format!(
                "unexpected key {}{more}: the model has no such parameter (wrong config for these weights?)",
                unexpected[0]
            ),
        ));
    }
    Ok(model)
}

/// Loads weights from a file and builds the model.
pub fn load_model(
    config: &Sam2Config,
    weights: &Path,
    dtype: DType,
    device: &Device,
) -> Result<Sam2Base> {
    build_model(config, WeightFile::load(weights)?, dtype, device)
}

/// Lets the caller keep a handle on a backend the `VarBuilder` owns.
struct Shared<T>(Arc<T>);

impl<T: SimpleBackend> SimpleBackend for Shared<T> {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.0.get(s, name, h, dtype, dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.0.get_unchecked(name, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0.contains_tensor(name)
    }
}

/// The (key, shape) list the model of `config` asks for, without any weights: a dry run whose
/// tensors are stride-0 zeros. Used to check configs against official state-dict key lists.
pub fn expected_parameters(config: &Sam2Config) -> Result<Vec<(String, Vec<usize>)>> {
    struct Recorder(Mutex<Vec<(String, Vec<usize>)>>);
    impl SimpleBackend for Recorder {
        fn get(
            &self,
            s: Shape,
            name: &str,
            _: candle_nn::Init,
            dtype: DType,
            dev: &Device,
        ) -> candle_core::Result<Tensor> {
            self.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((name.to_owned(), s.dims().to_vec()));
            Tensor::zeros((), dtype, dev)?.broadcast_as(s)
        }
        fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
            candle_core::bail!("unchecked access to {name}")
        }
        fn contains_tensor(&self, _: &str) -> bool {
            true
        }
    }
    let recorder = Arc::new(Recorder(Mutex::new(Vec::new())));
    let vb = VarBuilder::from_backend(Box::new(Shared(recorder.clone())), DType::F32, Device::Cpu);
    Sam2Base::new(config, vb)?;
    let mut params = recorder.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
    params.sort();
    Ok(params)
}
