//! Optimizer checkpoints: one safetensors file holding every state tensor bit for bit, with
//! the kind, step and hyper-parameters in its metadata, so a resumed run continues exactly.
//!
//! Tensors per parameter i: `i.m`, `i.v` (f32) or, for 8-bit state, `i.m_codes`, `i.v_codes`
//! (u8) and `i.m_absmax`, `i.v_absmax` (f32). A 32-bit state inside an 8-bit optimizer is
//! marked by metadata `i.bnb32 = "1"`.

use super::optimizer::{Optimizer, ParamState};
use crate::optim::adamw8bit::State8;
use crate::optim::{OptimConfig, OptimError, OptimKind};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use crate::backend::Backend;

const FORMAT: &str = "recipe-optimizer-v1";

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn file_err(path: &Path, msg: impl Into<String>) -> OptimError {
    OptimError::File {
        path: path.display().to_string(),
        msg: msg.into(),
    }
}

impl Optimizer {
    /// Write the whole state to `path` (safetensors).
    pub fn save(&self, path: &Path) -> Result<(), OptimError> {
        let mut meta = HashMap::new();
        meta.insert("format".to_string(), FORMAT.to_string());
        meta.insert("kind".to_string(), self.kind.name().to_string());
        meta.insert("step".to_string(), self.step.to_string());
        meta.insert("beta1".to_string(), format!("{:?}", self.config.betas.0));
        meta.insert("beta2".to_string(), format!("{:?}", self.config.betas.1));
        meta.insert("eps".to_string(), format!("{:?}", self.config.eps));
        meta.insert(
            "weight_decay".to_string(),
            format!("{:?}", self.config.weight_decay),
        );
        meta.insert(
            "min_8bit_size".to_string(),
            self.config.min_8bit_size.to_string(),
        );
        meta.insert("params".to_string(), self.states.len().to_string());
        let mut bufs: Vec<(String, Dtype, Vec<u8>)> = Vec::new();
        let be = &*self.backend;
        let f32s = |t| f32_bytes(&be.download(t));
        for (i, st) in self.states.iter().enumerate() {
            match st {
                ParamState::F32 { m, v } | ParamState::Bnb32 { m, v } => {
                    if matches!(st, ParamState::Bnb32 { .. }) {
                        meta.insert(format!("{i}.bnb32"), "1".to_string());
                    }
                    bufs.push((format!("{i}.m"), Dtype::F32, f32s(m)));
                    bufs.push((format!("{i}.v"), Dtype::F32, f32s(v)));
                }
                ParamState::Q8(s) => {
                    bufs.push((format!("{i}.m_codes"), Dtype::U8, be.download_u8(&s.m)));
                    bufs.push((format!("{i}.v_codes"), Dtype::U8, be.download_u8(&s.v)));
                    bufs.push((format!("{i}.m_absmax"), Dtype::F32, f32s(&s.absmax_m)));
                    bufs.push((format!("{i}.v_absmax"), Dtype::F32, f32s(&s.absmax_v)));
                }
            }
        }
        let views = bufs
            .iter()
            .map(|(name, dt, data)| {
                let n = if *dt == Dtype::F32 {
                    data.len() / 4
                } else {
                    data.len()
                };
                TensorView::new(*dt, vec![n], data).map(|v| (name.clone(), v))
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| file_err(path, e.to_string()))?;
        safetensors::serialize_to_file(views, Some(meta), path)
            .map_err(|e| file_err(path, e.to_string()))
    }

    /// Read a state written by [`Optimizer::save`] onto `backend`.
    pub fn load(backend: Arc<dyn Backend>, path: &Path) -> Result<Optimizer, OptimError> {
        let be = &*backend;
        let bytes = std::fs::read(path).map_err(|e| file_err(path, e.to_string()))?;
        let (_, md) =
            SafeTensors::read_metadata(&bytes).map_err(|e| file_err(path, e.to_string()))?;
        let st = SafeTensors::deserialize(&bytes).map_err(|e| file_err(path, e.to_string()))?;
        let meta = md.metadata().clone().unwrap_or_default();
        let get = |k: &str| {
            meta.get(k)
                .cloned()
                .ok_or_else(|| file_err(path, format!("metadata has no `{k}`")))
        };
        let num = |k: &str| -> Result<f64, OptimError> {
            get(k)?
                .parse::<f64>()
                .map_err(|e| file_err(path, format!("metadata `{k}`: {e}")))
        };
        let int = |k: &str| -> Result<u64, OptimError> {
            get(k)?
                .parse::<u64>()
                .map_err(|e| file_err(path, format!("metadata `{k}`: {e}")))
        };
        if get("format")? != FORMAT {
            return Err(file_err(path, format!("format is not {FORMAT}")));
        }
        let kind = OptimKind::from_name(&get("kind")?)?;
        let config = OptimConfig {
            betas: (num("beta1")?, num("beta2")?),
            eps: num("eps")?,
            weight_decay: num("weight_decay")?,
            min_8bit_size: int("min_8bit_size")? as usize,
        };
        let f32s = |name: &str| -> Result<Vec<f32>, OptimError> {
            let t = st
                .tensor(name)
                .map_err(|_| file_err(path, format!("missing tensor `{name}`")))?;
            if t.dtype() != Dtype::F32 {
                return Err(file_err(
                    path,
                    format!("tensor `{name}`: expected F32, got {:?}", t.dtype()),
                ));
            }
            Ok(t.data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect())
        };
        let u8s = |name: &str| -> Result<Vec<u8>, OptimError> {
            let t = st
                .tensor(name)
                .map_err(|_| file_err(path, format!("missing tensor `{name}`")))?;
            if t.dtype() != Dtype::U8 {
                return Err(file_err(
                    path,
                    format!("tensor `{name}`: expected U8, got {:?}", t.dtype()),
                ));
            }
            Ok(t.data().to_vec())
        };
        let mut states = Vec::new();
        for i in 0..int("params")? {
            let state = if st.tensor(&format!("{i}.m_codes")).is_ok() {
                let host = State8 {
                    m: u8s(&format!("{i}.m_codes"))?,
                    v: u8s(&format!("{i}.v_codes"))?,
                    absmax_m: f32s(&format!("{i}.m_absmax"))?,
                    absmax_v: f32s(&format!("{i}.v_absmax"))?,
                };
                ParamState::q8(be, &host)
            } else {
                let (m, v) = (f32s(&format!("{i}.m"))?, f32s(&format!("{i}.v"))?);
                let (m, v) = (be.upload(&m), be.upload(&v));
                if meta.contains_key(&format!("{i}.bnb32")) {
                    ParamState::Bnb32 { m, v }
                } else {
                    ParamState::F32 { m, v }
                }
            };
            states.push(state);
        }
        let mut opt = Optimizer::new(backend.clone(), kind, &config, &[]);
        opt.step = int("step")?;
        opt.states = states;
        Ok(opt)
    }

    /// Check that a loaded state fits parameters of `param_sizes` elements.
    pub fn check_sizes(&self, param_sizes: &[usize]) -> Result<(), OptimError> {
        let got: Vec<usize> = self.states.iter().map(|s| s.len()).collect();
        if got != param_sizes {
            return Err(OptimError::Mismatch {
                what: "optimizer state sizes".into(),
                expected: format!("{param_sizes:?}"),
                got: format!("{got:?}"),
            });
        }
        Ok(())
    }
}
