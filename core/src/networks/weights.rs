//! Framework-free network weights and their file format.
//!
//! The trainer converts its burn modules to [`NetworkWeights`] and back; the exporter reads them
//! to write ONNX. Keeping weights as plain `f32` vectors means the edge library never links the
//! training framework, and teachers shipped in `models/teachers/` are readable by both sides.
//!
//! File format (`.ustw`, little endian):
//! `b"USTW"`, `u32` format version, `u32` header length, a JSON [`WeightsHeader`], then for each
//! conv its weights (OIHW) and its bias as `f32`.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::networks::arch::{ArchError, Architecture};

const MAGIC: &[u8; 4] = b"USTW";
const FORMAT_VERSION: u32 = 1;

/// Weights and bias of one convolution.
#[derive(Debug, Clone, PartialEq)]
pub struct ConvWeights {
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel: usize,
    /// `out × in × kernel × kernel`, row-major (ONNX/PyTorch OIHW).
    pub weight: Vec<f32>,
    /// `out`.
    pub bias: Vec<f32>,
}

/// All convolutions of one patch network, in order, plus free-form provenance.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkWeights {
    pub patch_size: usize,
    /// Hidden widths divided by this ([`Architecture::channel_divisor`]; 1 = the paper's).
    pub channel_divisor: usize,
    pub convs: Vec<ConvWeights>,
    /// Provenance (corpus, iterations, losses…); written into the header as strings.
    pub metadata: Vec<(String, String)>,
}

/// Problems reading, writing or validating weights. Each names the file where there is one.
#[derive(Debug, Error)]
pub enum WeightsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a ustad weights file (bad magic bytes)")]
    BadMagic { path: PathBuf },
    #[error(
        "{path}: weights format version {found} is not supported (this build reads {FORMAT_VERSION})"
    )]
    UnsupportedVersion { path: PathBuf, found: u32 },
    #[error("{path}: header: {message}")]
    BadHeader { path: PathBuf, message: String },
    #[error("{path}: file is truncated: {needed} more bytes of weights expected")]
    Truncated { path: PathBuf, needed: usize },
    #[error("{context}: {source}")]
    Arch { context: String, source: ArchError },
    #[error("{context}: conv {index}: {message}")]
    Shape {
        context: String,
        index: usize,
        message: String,
    },
    #[error("{context}: conv {index} has a non-finite {what}")]
    NotFinite {
        context: String,
        index: usize,
        what: &'static str,
    },
}

/// The JSON header of a `.ustw` file.
#[derive(Debug, Serialize, Deserialize)]
pub struct WeightsHeader {
    pub patch_size: usize,
    /// Absent in files written before narrow students existed: those have the paper's widths.
    #[serde(
        default = "crate::networks::arch::paper_widths",
        skip_serializing_if = "crate::networks::arch::is_paper_widths"
    )]
    pub channel_divisor: usize,
    /// `(in, out, kernel)` of each conv.
    pub convs: Vec<(usize, usize, usize)>,
    #[serde(default)]
    pub metadata: Vec<(String, String)>,
}

impl NetworkWeights {
    /// The architecture these weights belong to.
    pub fn architecture(&self) -> Result<Architecture, ArchError> {
        Architecture::new(self.patch_size, self.channel_divisor)
    }

    /// Checks that every conv has the shape the architecture prescribes and finite values.
    /// `context` names the source (a file, a module) in errors.
    pub fn validate(&self, context: &str) -> Result<Architecture, WeightsError> {
        let arch = self.architecture().map_err(|source| WeightsError::Arch {
            context: context.to_string(),
            source,
        })?;
        let shapes = arch.conv_shapes();
        if shapes.len() != self.convs.len() {
            return Err(WeightsError::Shape {
                context: context.to_string(),
                index: self.convs.len().min(shapes.len()),
                message: format!(
                    "p = {} has {} convs, found {}",
                    self.patch_size,
                    shapes.len(),
                    self.convs.len()
                ),
            });
        }
        for (index, (conv, &(i, o, k))) in self.convs.iter().zip(&shapes).enumerate() {
            let shape_error = |message: String| WeightsError::Shape {
                context: context.to_string(),
                index,
                message,
            };
            if (conv.in_channels, conv.out_channels, conv.kernel) != (i, o, k) {
                return Err(shape_error(format!(
                    "expected {o}×{i}×{k}×{k}, found {}×{}×{k2}×{k2}",
                    conv.out_channels,
                    conv.in_channels,
                    k2 = conv.kernel
                )));
            }
            if conv.weight.len() != o * i * k * k || conv.bias.len() != o {
                return Err(shape_error(format!(
                    "expected {} weights and {o} biases, found {} and {}",
                    o * i * k * k,
                    conv.weight.len(),
                    conv.bias.len()
                )));
            }
            let not_finite = |what| WeightsError::NotFinite {
                context: context.to_string(),
                index,
                what,
            };
            if !conv.weight.iter().all(|v| v.is_finite()) {
                return Err(not_finite("weight"));
            }
            if !conv.bias.iter().all(|v| v.is_finite()) {
                return Err(not_finite("bias"));
            }
        }
        Ok(arch)
    }

    /// Random weights (He-uniform, zero bias) from a seed: for tests, benchmarks and the
    /// "untrained teacher" baseline. Not a substitute for the trainer's initialisation.
    pub fn random(patch_size: usize, seed: u64) -> Result<Self, ArchError> {
        Self::random_for(Architecture::for_patch_size(patch_size)?, seed)
    }

    /// [`Self::random`] for any architecture, narrow ones included.
    pub fn random_for(arch: Architecture, seed: u64) -> Result<Self, ArchError> {
        let mut rng = SplitMix64(seed);
        let convs = arch
            .conv_shapes()
            .into_iter()
            .map(|(in_channels, out_channels, kernel)| {
                let fan_in = (in_channels * kernel * kernel) as f32;
                let bound = (6.0 / fan_in).sqrt();
                let weight = (0..out_channels * in_channels * kernel * kernel)
                    .map(|_| (rng.next_f32() * 2.0 - 1.0) * bound)
                    .collect();
                let bias = (0..out_channels)
                    .map(|_| (rng.next_f32() * 2.0 - 1.0) * 0.1)
                    .collect();
                ConvWeights {
                    in_channels,
                    out_channels,
                    kernel,
                    weight,
                    bias,
                }
            })
            .collect();
        Ok(Self {
            patch_size: arch.patch_size,
            channel_divisor: arch.channel_divisor,
            convs,
            metadata: vec![("init".into(), format!("random seed {seed}"))],
        })
    }

    /// A metadata value by key.
    pub fn meta(&self, key: &str) -> Option<&str> {
        self.metadata
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Writes the weights atomically (temporary file, then rename) so a crash mid-write never
    /// leaves a truncated checkpoint under the final name.
    pub fn save(&self, path: &Path) -> Result<(), WeightsError> {
        let io = |source| WeightsError::Io {
            path: path.to_path_buf(),
            source,
        };
        let header = WeightsHeader {
            patch_size: self.patch_size,
            channel_divisor: self.channel_divisor,
            convs: self
                .convs
                .iter()
                .map(|c| (c.in_channels, c.out_channels, c.kernel))
                .collect(),
            metadata: self.metadata.clone(),
        };
        let header = serde_json::to_vec(&header).map_err(|e| WeightsError::BadHeader {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let mut bytes = Vec::with_capacity(12 + header.len());
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        bytes.extend_from_slice(&(header.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&header);
        for conv in &self.convs {
            for v in conv.weight.iter().chain(&conv.bias) {
                bytes.extend_from_slice(&v.to_le_bytes());
            }
        }
        let tmp = path.with_extension("ustw.tmp");
        let mut file = std::fs::File::create(&tmp).map_err(io)?;
        file.write_all(&bytes).map_err(io)?;
        file.sync_all().map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }

    /// Reads and validates a `.ustw` file.
    pub fn load(path: &Path) -> Result<Self, WeightsError> {
        let io = |source| WeightsError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(io)?;
        let p = || path.to_path_buf();
        if bytes.len() < 12 || &bytes[..4] != MAGIC {
            return Err(WeightsError::BadMagic { path: p() });
        }
        let word = |at: usize| {
            u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        let version = word(4);
        if version != FORMAT_VERSION {
            return Err(WeightsError::UnsupportedVersion {
                path: p(),
                found: version,
            });
        }
        let header_len = word(8) as usize;
        let header_end = 12 + header_len;
        let header: WeightsHeader = bytes
            .get(12..header_end)
            .ok_or_else(|| WeightsError::Truncated {
                path: p(),
                needed: header_end.saturating_sub(bytes.len()),
            })
            .and_then(|raw| {
                serde_json::from_slice(raw).map_err(|e| WeightsError::BadHeader {
                    path: p(),
                    message: e.to_string(),
                })
            })?;
        let needed: usize = header
            .convs
            .iter()
            .map(|&(i, o, k)| (o * i * k * k + o) * 4)
            .sum();
        let body = &bytes[header_end..];
        if body.len() < needed {
            return Err(WeightsError::Truncated {
                path: p(),
                needed: needed - body.len(),
            });
        }
        let mut floats = body
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]));
        let convs = header
            .convs
            .iter()
            .map(|&(in_channels, out_channels, kernel)| ConvWeights {
                in_channels,
                out_channels,
                kernel,
                weight: floats
                    .by_ref()
                    .take(out_channels * in_channels * kernel * kernel)
                    .collect(),
                bias: floats.by_ref().take(out_channels).collect(),
            })
            .collect();
        let weights = Self {
            patch_size: header.patch_size,
            channel_divisor: header.channel_divisor,
            convs,
            metadata: header.metadata,
        };
        weights.validate(&path.display().to_string())?;
        Ok(weights)
    }
}

/// A tiny deterministic generator, so random weights need no dependency and are identical on
/// every platform. Also the one generator of random test inputs in every crate (re-exported by
/// `ustad_core::testing`).
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.ustw");
        let w = NetworkWeights::random(33, 7).unwrap();
        w.save(&path).unwrap();
        let back = NetworkWeights::load(&path).unwrap();
        assert_eq!(w, back);

        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
        let err = NetworkWeights::load(&path).unwrap_err();
        assert!(
            matches!(err, WeightsError::Truncated { needed: 10, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("t.ustw"));

        std::fs::write(&path, b"not weights at all").unwrap();
        assert!(matches!(
            NetworkWeights::load(&path),
            Err(WeightsError::BadMagic { .. })
        ));
    }

    #[test]
    fn narrow_weights_round_trip_and_are_told_apart_from_full_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("narrow.ustw");
        let arch = Architecture::for_patch_size(65)
            .unwrap()
            .with_channel_divisor(2)
            .unwrap();
        let narrow = NetworkWeights::random_for(arch, 3).unwrap();
        assert_eq!(narrow.convs[0].out_channels, 64);
        narrow.save(&path).unwrap();
        let back = NetworkWeights::load(&path).unwrap();
        assert_eq!(back, narrow);
        assert_eq!(back.architecture().unwrap(), arch);
        // The same tensors claimed as full width are refused at the first conv.
        let claimed_full = NetworkWeights {
            channel_divisor: 1,
            ..narrow
        };
        let err = claimed_full.validate("narrow.ustw").unwrap_err();
        assert!(matches!(err, WeightsError::Shape { index: 0, .. }), "{err}");
        // A file written before the field existed reads as the paper's widths.
        let header: WeightsHeader =
            serde_json::from_str(r#"{"patch_size":17,"convs":[]}"#).unwrap();
        assert_eq!(header.channel_divisor, 1);
    }

    #[test]
    fn validation_names_the_bad_conv() {
        let mut w = NetworkWeights::random(17, 1).unwrap();
        w.convs[2].bias[3] = f32::NAN;
        let err = w.validate("teacher.ustw").unwrap_err();
        assert_eq!(
            err.to_string(),
            "teacher.ustw: conv 2 has a non-finite bias"
        );
        let mut w = NetworkWeights::random(17, 1).unwrap();
        w.convs[1].weight.pop();
        assert!(matches!(
            w.validate("x"),
            Err(WeightsError::Shape { index: 1, .. })
        ));
    }

    #[test]
    fn random_weights_depend_on_the_seed_only() {
        let a = NetworkWeights::random(17, 3).unwrap();
        assert_eq!(a, NetworkWeights::random(17, 3).unwrap());
        assert_ne!(
            a.convs[0].weight,
            NetworkWeights::random(17, 4).unwrap().convs[0].weight
        );
    }
}
