//! The library's error type: what went wrong, named so a user can act on it.
//!
//! `model/` internals return `candle_core::Result`; everything that touches files, configs,
//! prompts or devices returns this `Error`, whose `Display` is one line that says the cause.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    /// A config that is malformed, or asks for something this engine does not implement.
    #[error("config {origin}: {reason}")]
    Config { origin: String, reason: String },

    /// A weights file that cannot be read or does not match the config.
    #[error("weights {}: {reason}", path.display())]
    Weights { path: PathBuf, reason: String },

    /// A prompt that cannot be applied (malformed, out of the image, for an unknown object...).
    #[error("{0}")]
    Prompt(String),

    /// An input image or frame that cannot be used.
    #[error("image: {0}")]
    Image(String),

    #[error("device: {0}")]
    Device(String),

    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl Error {
    pub(crate) fn config(origin: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Config {
            origin: origin.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn weights(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::Weights {
            path: path.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
