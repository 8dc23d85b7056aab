//! What temper's burn crates share beneath them: the one walker that names a module's
//! parameters by path (which, because field names follow the checkpoint keys, are the
//! Hugging Face keys), one safetensors writer, and atomic files and directories.
//!
//! `temper-models`, `temper-lora` and `temper-optim` are siblings that may not depend on one
//! another; they agree on parameter names and on how files reach the disk through this crate.
//! It knows no architecture, adapter or optimizer, and it picks no backend.

mod atomic;
mod error;
pub mod paths;
mod safetensors_io;

pub use atomic::{AtomicDir, partial_path, write_atomic, write_atomic_with};
pub use error::{Error, Result};
pub use paths::{ParamPath, PathMapper, PathVisitor, map_params, param_paths, visit_params};
pub use safetensors_io::{decode_f32, parse_safetensors, write_f32_safetensors};
