//! The distillation source: a pretrained ImageNet CNN run with tract.
//!
//! Which output to read and how to normalise pixels come from a small TOML sidecar, not from
//! code, so another backbone is a new file, not a new build.

use std::path::{Path, PathBuf};

use image::RgbImage;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tract_onnx::prelude::*;

#[derive(Debug, Error)]
pub enum BackboneError {
    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("{path}: not a usable backbone model: {message}")]
    Model { path: PathBuf, message: String },
    #[error("backbone inference failed: {0}")]
    Run(String),
    #[error(
        "no backbone config for {onnx}: looked for {tried:?}; pass --backbone-config FILE (see models/backbones/)"
    )]
    NoConfig { onnx: PathBuf, tried: Vec<PathBuf> },
}

/// The sidecar: input/output names and per-channel `(pixel − mean) / std` on 0..255 pixels.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackboneConfig {
    pub input: String,
    /// The pooled feature that patch-mode distillation regresses.
    pub output: String,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    /// The feature maps that dense distillation regresses; absent: the backbone serves only
    /// patch mode.
    #[serde(default)]
    pub dense: Option<DenseTargetConfig>,
}

/// Which intermediate maps make the dense target, and how each location is aggregated.
///
/// Each node's map is averaged over `neighbourhood × neighbourhood` locations (zero padding not
/// counted), resampled bilinearly onto the teacher's grid by the centres of the cells, and the
/// nodes are concatenated along channels in the order given.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DenseTargetConfig {
    /// Node names of the backbone graph (tract returns any node's output by name).
    pub nodes: Vec<String>,
    /// Side of the square averaging window on each node's own grid (1 = none).
    #[serde(default = "one")]
    pub neighbourhood: usize,
}

fn one() -> usize {
    1
}

impl BackboneConfig {
    pub fn load(path: &Path) -> Result<Self, BackboneError> {
        let error = |message: String| BackboneError::Config {
            path: path.to_path_buf(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
        let config: Self = toml::from_str(&text).map_err(|e| error(e.to_string()))?;
        if config.std.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
            return Err(error("std must be finite and > 0".into()));
        }
        if let Some(dense) = &config.dense {
            if dense.nodes.is_empty() {
                return Err(error("dense.nodes must name at least one node".into()));
            }
            if dense.neighbourhood == 0 || dense.neighbourhood % 2 == 0 {
                return Err(error(format!(
                    "dense.neighbourhood must be odd and ≥ 1, got {}",
                    dense.neighbourhood
                )));
            }
        }
        Ok(config)
    }

    /// The sidecar for `onnx`: `X.toml` beside `X.onnx`, else `models/backbones/X.toml` under
    /// the current directory or the repository this binary was built from.
    pub fn find(onnx: &Path) -> Result<PathBuf, BackboneError> {
        let stem = onnx
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let name = format!("{stem}.toml");
        let tried = vec![
            onnx.with_extension("toml"),
            PathBuf::from("models/backbones").join(&name),
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../models/backbones")
                .join(&name),
        ];
        tried
            .iter()
            .find(|p| p.is_file())
            .cloned()
            .ok_or(BackboneError::NoConfig {
                onnx: onnx.to_path_buf(),
                tried,
            })
    }
}

fn model_error(onnx: &Path) -> impl Fn(TractError) -> BackboneError + '_ {
    move |e| BackboneError::Model {
        path: onnx.to_path_buf(),
        message: format!("{e:#}"),
    }
}

/// The backbone graph cut after `outputs` and optimised for `batch × 3 × size × size` input.
fn pinned_model(
    onnx: &Path,
    outputs: &[&str],
    batch: usize,
    size: usize,
) -> Result<TypedModel, BackboneError> {
    let error = model_error(onnx);
    if !onnx.is_file() {
        return Err(BackboneError::Model {
            path: onnx.to_path_buf(),
            message: "file not found".into(),
        });
    }
    let mut model = tract_onnx::onnx().model_for_path(onnx).map_err(&error)?;
    model
        .select_outputs_by_name(outputs.iter().copied())
        .map_err(&error)?;
    model
        .with_input_fact(0, f32::fact([batch, 3, size, size]).into())
        .and_then(|m| m.into_optimized())
        .map_err(error)
}

/// A backbone pinned to `batch × 3 × size × size`, computing feature vectors.
pub struct Backbone {
    plan: Arc<TypedRunnableModel>,
    config: BackboneConfig,
    pub batch: usize,
    pub size: usize,
    pub dim: usize,
}

impl Backbone {
    pub fn load(
        onnx: &Path,
        config: BackboneConfig,
        batch: usize,
        size: usize,
    ) -> Result<Self, BackboneError> {
        let error = model_error(onnx);
        let model = pinned_model(onnx, &[config.output.as_str()], batch, size)?;
        let shape = model
            .output_fact(0)
            .map_err(&error)?
            .shape
            .as_concrete()
            .map(|s| s.to_vec());
        let dim = match shape.as_deref() {
            Some([b, d]) if *b == batch => *d,
            other => {
                return Err(BackboneError::Model {
                    path: onnx.to_path_buf(),
                    message: format!(
                        "output `{}` has shape {other:?}, expected [{batch}, D]",
                        config.output
                    ),
                });
            }
        };
        let plan = model.into_runnable().map_err(&error)?;
        Ok(Self {
            plan,
            config,
            batch,
            size,
            dim,
        })
    }

    /// Features of every image (each resized to `size × size` if needed), `images.len() × dim`
    /// row-major. Batches run in parallel, one tract state each.
    pub fn features(&self, images: &[RgbImage]) -> Result<Vec<f32>, BackboneError> {
        let chunks: Vec<Vec<f32>> = images
            .par_chunks(self.batch)
            .map(|chunk| self.run_batch(chunk))
            .collect::<Result<_, _>>()?;
        Ok(chunks.concat())
    }

    fn run_batch(&self, chunk: &[RgbImage]) -> Result<Vec<f32>, BackboneError> {
        let (b, s) = (self.batch, self.size);
        let plane = s * s;
        let mut input = vec![0.0f32; b * 3 * plane];
        for (i, image) in chunk.iter().enumerate() {
            let resized;
            let image = if image.dimensions() == (s as u32, s as u32) {
                image
            } else {
                resized = image::imageops::resize(
                    image,
                    s as u32,
                    s as u32,
                    image::imageops::FilterType::Triangle,
                );
                &resized
            };
            for (p, px) in image.pixels().enumerate() {
                for c in 0..3 {
                    input[(i * 3 + c) * plane + p] =
                        (px[c] as f32 - self.config.mean[c]) / self.config.std[c];
                }
            }
        }
        let run = |e: TractError| BackboneError::Run(format!("{e:#}"));
        let tensor = Tensor::from_shape(&[b, 3, s, s], &input).map_err(run)?;
        let out = self.plan.run(tvec![tensor.into_tvalue()]).map_err(run)?;
        let view = out[0].try_as_plain_ram().map_err(run)?;
        let values = view.as_slice::<f32>().map_err(run)?;
        Ok(values[..chunk.len() * self.dim].to_vec())
    }
}

/// One node's output map for one image: `channels × height × width`, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureMap {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub values: Vec<f32>,
}

/// A backbone pinned to `batch × 3 × size × size`, returning the feature maps of the nodes
/// that a [`DenseTargetConfig`] names. The graph is cut after the deepest of them.
pub struct FeatureBackbone {
    plan: Arc<TypedRunnableModel>,
    config: BackboneConfig,
    pub nodes: Vec<String>,
    pub batch: usize,
    pub size: usize,
    /// `(channels, height, width)` of each node, in `nodes` order.
    pub shapes: Vec<(usize, usize, usize)>,
}

impl FeatureBackbone {
    pub fn load(
        onnx: &Path,
        config: BackboneConfig,
        nodes: &[String],
        batch: usize,
        size: usize,
    ) -> Result<Self, BackboneError> {
        let error = model_error(onnx);
        let names: Vec<&str> = nodes.iter().map(String::as_str).collect();
        let model = pinned_model(onnx, &names, batch, size)?;
        let mut shapes = Vec::with_capacity(nodes.len());
        for (i, node) in nodes.iter().enumerate() {
            let shape = model
                .output_fact(i)
                .map_err(&error)?
                .shape
                .as_concrete()
                .map(|s| s.to_vec());
            match shape.as_deref() {
                Some([b, c, h, w]) if *b == batch => shapes.push((*c, *h, *w)),
                other => {
                    return Err(BackboneError::Model {
                        path: onnx.to_path_buf(),
                        message: format!(
                            "node `{node}` has shape {other:?}, expected [{batch}, C, H, W]"
                        ),
                    });
                }
            }
        }
        let plan = model.into_runnable().map_err(&error)?;
        Ok(Self {
            plan,
            config,
            nodes: nodes.to_vec(),
            batch,
            size,
            shapes,
        })
    }

    /// The maps of every node for every image (`size × size` RGB), `[image][node]`.
    /// Batches run in parallel, one tract state each.
    pub fn maps(&self, images: &[RgbImage]) -> Result<Vec<Vec<FeatureMap>>, BackboneError> {
        let chunks: Vec<Vec<Vec<FeatureMap>>> = images
            .par_chunks(self.batch)
            .map(|chunk| self.run_batch(chunk))
            .collect::<Result<_, _>>()?;
        Ok(chunks.into_iter().flatten().collect())
    }

    fn run_batch(&self, chunk: &[RgbImage]) -> Result<Vec<Vec<FeatureMap>>, BackboneError> {
        let (b, s) = (self.batch, self.size);
        let input = backbone_input(chunk, b, s, &self.config)?;
        let run = |e: TractError| BackboneError::Run(format!("{e:#}"));
        let tensor = Tensor::from_shape(&[b, 3, s, s], &input).map_err(run)?;
        let outputs = self.plan.run(tvec![tensor.into_tvalue()]).map_err(run)?;
        let mut per_image: Vec<Vec<FeatureMap>> = vec![Vec::new(); chunk.len()];
        for (output, &(channels, height, width)) in outputs.iter().zip(&self.shapes) {
            let view = output.try_as_plain_ram().map_err(run)?;
            let values = view.as_slice::<f32>().map_err(run)?;
            let len = channels * height * width;
            for (i, maps) in per_image.iter_mut().enumerate() {
                maps.push(FeatureMap {
                    channels,
                    height,
                    width,
                    values: values[i * len..(i + 1) * len].to_vec(),
                });
            }
        }
        Ok(per_image)
    }
}

/// `[batch, 3, size, size]` backbone input: the images (which must be `size × size`) with the
/// sidecar's normalisation, zero rows for a short last batch.
fn backbone_input(
    images: &[RgbImage],
    batch: usize,
    size: usize,
    config: &BackboneConfig,
) -> Result<Vec<f32>, BackboneError> {
    let plane = size * size;
    let mut input = vec![0.0f32; batch * 3 * plane];
    for (i, image) in images.iter().enumerate() {
        if image.dimensions() != (size as u32, size as u32) {
            return Err(BackboneError::Run(format!(
                "image {i} is {}×{}, the backbone is pinned to {size}×{size}",
                image.width(),
                image.height()
            )));
        }
        for (p, px) in image.pixels().enumerate() {
            for c in 0..3 {
                input[(i * 3 + c) * plane + p] = (px[c] as f32 - config.mean[c]) / config.std[c];
            }
        }
    }
    Ok(input)
}
