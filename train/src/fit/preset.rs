//! Presets: the named speed/accuracy settings of `config/presets/*.toml` and their scales.

use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use ustad_core::judge::decide::ImageScoreRule;
use ustad_core::judge::score::{Calibration, ScaleRole};
use ustad_core::networks::arch::Mode;

/// A scale of a preset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PresetScale {
    pub patch_size: usize,
    pub stride: usize,
    /// What the students of this scale regress.
    #[serde(default)]
    pub teacher: TeacherKind,
    /// The students' hidden widths are the paper's divided by this (1, 2, 4, 8): a student
    /// must match the teacher's receptive field and grid, not its width.
    #[serde(default = "ustad_core::networks::arch::paper_widths")]
    pub student_channel_divisor: usize,
    /// For a backbone teacher: the backbone nodes whose maps it taps, in place of the sidecar's
    /// `dense.nodes` (which the distilled teachers were trained on). Deeper nodes describe
    /// more of the part at once; `scripts/tap_study.py` measures a choice on a dataset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teacher_nodes: Option<Vec<String>>,
    /// For a backbone teacher: which principal components of its taps become the descriptor.
    #[serde(default)]
    pub teacher_components: crate::pca::Components,
    /// The scale sees the input reduced this many times on each side (`ScaleSpec::reduction`):
    /// a 128² view of a 512² input for judging the whole part while a full-resolution scale
    /// localises. Backbone teachers scored alone (`students = 0`) only.
    #[serde(
        default = "ustad_core::bundle::ScaleSpec::full_view",
        skip_serializing_if = "ustad_core::bundle::ScaleSpec::is_full_view"
    )]
    pub reduction: usize,
    /// What the scale's map feeds (`ScaleSpec::role`): `both` (the default), `score` or `map`.
    #[serde(default, skip_serializing_if = "ScaleRole::is_both")]
    pub role: ScaleRole,
}

impl PresetScale {
    /// `teacher_nodes` and `teacher_components` shape a backbone teacher only: on a distilled
    /// one they would be silently ignored, and an empty tap list has nothing to project.
    fn check_teacher_fields(&self) -> Result<()> {
        let backbone_only = self.teacher_nodes.is_some()
            || self.teacher_components != crate::pca::Components::default();
        if self.teacher == TeacherKind::Distilled && backbone_only {
            bail!("teacher_nodes and teacher_components apply to teacher = \"backbone\" only");
        }
        if self.teacher_nodes.as_ref().is_some_and(Vec::is_empty) {
            bail!("teacher_nodes must name at least one backbone node");
        }
        Ok(())
    }

    /// The input size `(height, width)` this scale's networks see: the preset's, divided by
    /// its reduction.
    pub fn view(&self, height: usize, width: usize) -> (usize, usize) {
        (
            height / self.reduction.max(1),
            width / self.reduction.max(1),
        )
    }

    /// A reduced view must divide the input and belong to a backbone teacher scored alone.
    fn check_view(&self, preset: &Preset) -> Result<()> {
        let k = self.reduction;
        if !ustad_core::bundle::ScaleSpec::reduction_divides(k, preset.height, preset.width) {
            bail!(
                "reduction = {k} does not divide the {}×{} input",
                preset.width,
                preset.height
            );
        }
        if k > 1 && (self.teacher != TeacherKind::Backbone || preset.students != 0) {
            bail!(
                "reduction = {k}: a reduced view is for a backbone teacher scored alone \
                 (teacher = \"backbone\", students = 0)"
            );
        }
        Ok(())
    }

    /// The architecture of this scale's students.
    pub fn student_architecture(
        &self,
    ) -> Result<ustad_core::networks::arch::Architecture, ustad_core::networks::arch::ArchError>
    {
        ustad_core::networks::arch::Architecture::new(self.patch_size, self.student_channel_divisor)
    }
}

/// The teacher of a scale.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum TeacherKind {
    /// The distilled patch network `p{patch_size}.ustw` from `--teachers`.
    #[default]
    Distilled,
    /// The backbone's own feature maps (the sidecar's dense taps), projected to the
    /// descriptor by a PCA of the good parts: all of the backbone's knowledge, no distillation.
    Backbone,
}

/// A named speed/accuracy setting (`config/presets/*.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preset {
    pub name: String,
    pub description: String,
    pub width: usize,
    pub height: usize,
    /// Students per scale: at least 2 (the variance needs an ensemble), or 0 for the teacher
    /// alone, scored by its (whitened: Mahalanobis) distance from the good parts' mean.
    pub students: usize,
    pub epochs: usize,
    pub batch: usize,
    pub learning_rate: f64,
    pub scales: Vec<PresetScale>,
    pub image_score: ImageScoreRule,
    /// Weight of the students' variance in the pixel score (`score::Calibration`): 1 is the
    /// paper's `e + v`, 0 scores by the regression error alone.
    #[serde(default = "Calibration::paper_variance_weight")]
    pub variance_weight: f32,
    /// Whiten each scale's residual (`ustad_core::bundle::onnx::whitening`): the error becomes the
    /// Mahalanobis distance of the students' residual on good parts.
    #[serde(default)]
    pub whiten_residual: bool,
    /// At most this many good images measure the whitening: held-out ones (left over by
    /// `max_fit_images`), or the fit images when there are none. A 128×128 covariance from a few
    /// dozen spatially correlated maps is noisy: on MTD the edge-shallow bundle scored image
    /// AUROC 0.841 whitened on 80 images and 0.846 on 400 (`ustad eval`). Held-out images
    /// beyond this many calibrate the threshold instead. Every map of the scale's networks
    /// is held while it is measured: about 210 MB for 400 images at p = 65/stride 8 on 128², four
    /// times that at stride 4.
    #[serde(default = "default_whitening_images")]
    pub whitening_images: usize,
    /// Train on at most this many fit images (0 = all): bounds the training time of CPU presets.
    #[serde(default)]
    pub max_fit_images: usize,
    /// How the learning rate moves over the run (constant when the preset does not say).
    #[serde(default)]
    pub schedule: Schedule,
}

/// Learning-rate schedule of the student training.
///
/// With small batches the gradient noise sets a floor under the loss at a constant rate;
/// decaying the rate towards the end lets the students settle below it without a longer run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// The preset's learning rate for every step.
    #[default]
    Constant,
    /// Half a cosine from the preset's rate down to zero over all steps of the run
    /// (`epochs × steps per epoch`). A run resumed with the same epochs continues the same
    /// curve; more epochs on resume stretch the rest of it.
    Cosine,
}

impl Schedule {
    /// The learning rate of step `step` (0-based) out of `total` steps.
    pub fn rate(self, base: f64, step: usize, total: usize) -> f64 {
        match self {
            Schedule::Constant => base,
            Schedule::Cosine => {
                let progress = step as f64 / total.max(1) as f64;
                base * 0.5 * (1.0 + (std::f64::consts::PI * progress.min(1.0)).cos())
            }
        }
    }
}

/// Presets compiled into the binary; a path to a `.toml` file works too.
pub(super) const BUILTIN_PRESETS: [(&str, &str); 9] = [
    ("edge", include_str!("../../../config/presets/edge.toml")),
    (
        "edge-teacher",
        include_str!("../../../config/presets/edge-teacher.toml"),
    ),
    (
        "edge-map",
        include_str!("../../../config/presets/edge-map.toml"),
    ),
    (
        "edge-fast",
        include_str!("../../../config/presets/edge-fast.toml"),
    ),
    (
        "edge-shallow",
        include_str!("../../../config/presets/edge-shallow.toml"),
    ),
    (
        "edge-p33",
        include_str!("../../../config/presets/edge-p33.toml"),
    ),
    (
        "edge-distilled",
        include_str!("../../../config/presets/edge-distilled.toml"),
    ),
    (
        "edge-p65",
        include_str!("../../../config/presets/edge-p65.toml"),
    ),
    ("paper", include_str!("../../../config/presets/paper.toml")),
];

pub(super) fn default_whitening_images() -> usize {
    400
}

impl Preset {
    /// A built-in preset by name, or a preset file by path.
    pub fn load(name_or_path: &str) -> Result<Self> {
        let (origin, text) = match BUILTIN_PRESETS.iter().find(|(n, _)| *n == name_or_path) {
            Some((name, text)) => (format!("built-in preset `{name}`"), text.to_string()),
            None if Path::new(name_or_path).is_file() => (
                name_or_path.to_string(),
                std::fs::read_to_string(name_or_path)
                    .with_context(|| format!("reading {name_or_path}"))?,
            ),
            None => bail!(
                "unknown preset `{name_or_path}` (built in: {}; or give a path to a preset .toml)",
                BUILTIN_PRESETS.map(|(n, _)| n).join(", ")
            ),
        };
        let preset: Preset =
            toml::from_str(&text).with_context(|| format!("{origin}: invalid preset"))?;
        if preset.whiten_residual && preset.whitening_images == 0 {
            bail!("{origin}: whitening_images = 0, but whiten_residual needs at least one image");
        }
        let roles: Vec<ScaleRole> = preset.scales.iter().map(|s| s.role).collect();
        if let Some(output) = ScaleRole::unfed(&roles) {
            bail!("{origin}: no scale feeds {output} (scales' `role`)");
        }
        for scale in &preset.scales {
            scale
                .check_teacher_fields()
                .and_then(|()| scale.check_view(&preset))
                .with_context(|| format!("{origin}: scale p = {}", scale.patch_size))?;
            let arch = scale.student_architecture().with_context(|| {
                format!(
                    "{origin}: scale p = {}: student_channel_divisor",
                    scale.patch_size
                )
            })?;
            let (height, width) = scale.view(preset.height, preset.width);
            arch.output_size(
                Mode::Image {
                    stride: scale.stride,
                },
                height,
                width,
            )
            .with_context(|| format!("{origin}: scale p = {}", scale.patch_size))?;
        }
        Ok(preset)
    }
}
