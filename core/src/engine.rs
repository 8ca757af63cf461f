//! The scoring engine: a bundle loaded into tract, run frame after frame.
//!
//! Every network is optimised once with pinned input shapes and gets its own
//! [`TypedSimpleState`], so a frame costs only tract's own work: the networks of all scales run
//! in parallel on a dedicated thread pool, and the error/variance/fusion/score buffers are
//! allocated once at load and reused.
//!
//! A frame is judged in two passes. [`Engine::judge`] runs the scales that feed the image score
//! and gives the verdict; [`Engine::map`] runs the scales that only draw the anomaly map, on the
//! same input, when someone wants to see it. A bundle that judges on small views and maps on a
//! large one (`edge-map`) so decides in the time of its small views, and the daemon draws the
//! large map only for the parts it rejects, after the actuator has its verdict.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use image::{DynamicImage, RgbImage};
use rayon::prelude::*;
use thiserror::Error;
use tract_linalg::multithread::{Executor, multithread_tract_scope};
use tract_onnx::prelude::*;

pub mod strided_depthwise;

use crate::bundle::{Bundle, BundleError, Precision};
use crate::judge::decide::{ImageScorer, Verdict};
use crate::judge::preprocess;
use crate::judge::score::{self, Calibration, ScaleRole};
use crate::networks::arch::DESCRIPTOR_DIM;

/// Why the engine could not load or judge.
#[derive(Debug, Error)]
pub enum EngineError {
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error("{path}: {message}")]
    Model { path: PathBuf, message: String },
    #[error(
        "bundle has no {precision} networks for scale {scale} (export it with --precision {precision})"
    )]
    MissingPrecision { precision: Precision, scale: usize },
    #[error("could not build the thread pool: {0}")]
    ThreadPool(String),
    #[error("{network}: inference failed: {message}")]
    Inference { network: String, message: String },
    #[error("the anomaly map is not finite (NaN): the part cannot be judged")]
    NotFinite,
    #[error("no frame has been judged since the last failure: there is no anomaly map to draw")]
    NotJudged,
    #[error("input has {found} values, the bundle expects {expected}")]
    InputSize { found: usize, expected: usize },
}

/// Engine settings that are not part of the bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EngineOptions {
    pub precision: Precision,
    /// Threads for the networks; 0 = one per core. The networks run side by side, one per
    /// thread; threads beyond the number of networks split each network's work.
    pub threads: usize,
}

/// One network with its plan and state.
struct NetworkRunner {
    label: String,
    state: TypedSimpleState,
    half: bool,
    output: Option<TValue>,
    elapsed: Duration,
}

impl NetworkRunner {
    fn load(
        path: &Path,
        label: String,
        input_shape: [usize; 4],
        expected_output: [usize; 4],
        half: bool,
    ) -> Result<Self, EngineError> {
        let error = |e: TractError| EngineError::Model {
            path: path.to_path_buf(),
            message: format!("{e:#}"),
        };
        let mut model = tract_onnx::onnx()
            .model_for_path(path)
            .and_then(|m| m.with_input_fact(0, f32::fact(input_shape).into()))
            .and_then(|m| m.into_typed())
            .and_then(|m| m.into_decluttered())
            .map_err(error)?;
        strided_depthwise::to_channel_last(&mut model).map_err(error)?;
        if half {
            let transform = tract_onnx::tract_core::transform::get_transform("f32_to_f16")
                .map_err(error)?
                .ok_or_else(|| EngineError::Model {
                    path: path.to_path_buf(),
                    message: "this tract build has no f32_to_f16 transform".into(),
                })?;
            model = transform.transform_into(model).map_err(error)?;
        }
        let model = model.into_optimized().map_err(error)?;
        let shape = model
            .output_fact(0)
            .map_err(error)?
            .shape
            .as_concrete()
            .map(|s| s.to_vec())
            .ok_or_else(|| EngineError::Model {
                path: path.to_path_buf(),
                message: "output shape is not concrete".into(),
            })?;
        if shape != expected_output {
            return Err(EngineError::Model {
                path: path.to_path_buf(),
                message: format!("output shape {shape:?}, expected {expected_output:?}"),
            });
        }
        let plan = model.into_runnable().map_err(error)?;
        let state = plan.spawn().map_err(error)?;
        Ok(Self {
            label,
            state,
            half,
            output: None,
            elapsed: Duration::ZERO,
        })
    }

    fn run(&mut self, input: &TValue) -> Result<(), EngineError> {
        let start = Instant::now();
        let error = |e: TractError| EngineError::Inference {
            network: self.label.clone(),
            message: format!("{e:#}"),
        };
        let input = if self.half {
            input
                .cast_to::<f16>()
                .map_err(error)?
                .into_owned()
                .into_tvalue()
        } else {
            input.clone()
        };
        let mut outputs = self.state.run(tvec![input]).map_err(error)?;
        let output = outputs.remove(0);
        self.output = Some(if self.half {
            output
                .cast_to::<f32>()
                .map_err(error)?
                .into_owned()
                .into_tvalue()
        } else {
            output
        });
        self.elapsed = start.elapsed();
        Ok(())
    }

    fn output(&self) -> &[f32] {
        self.output
            .as_ref()
            .and_then(|t| t.as_plain_ram())
            .and_then(|view| view.as_slice::<f32>().ok())
            .unwrap_or(&[])
    }
}

/// Per-scale geometry, calibration and buffers.
struct ScaleState {
    networks: std::ops::Range<usize>,
    /// Input pixels between two map cells.
    stride: usize,
    role: ScaleRole,
    map_height: usize,
    map_width: usize,
    calibration: Calibration,
    error: Vec<f32>,
    variance: Vec<f32>,
    score: Vec<f32>,
}

/// How far the last frame's anomaly map has come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MapState {
    /// No frame judged, or the last judging or mapping failed: nothing to show.
    Stale,
    /// Judged; the map-only scales have not run yet.
    Pending,
    /// Complete and checked.
    Ready,
}

/// Which networks a pass runs: those of the scales that feed the image score, or those of the
/// scales that feed only the anomaly map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pass {
    Judge,
    Map,
}

impl Pass {
    fn of(role: ScaleRole) -> Self {
        if role.scores() {
            Self::Judge
        } else {
            Self::Map
        }
    }
}

/// The verdict on one frame, before the scales that only map it have run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Judgement {
    /// Image score (see [`crate::judge::decide`]).
    pub score: f32,
    pub verdict: Verdict,
}

/// The result of one frame, borrowed from the engine's buffers.
#[derive(Debug, Clone, Copy)]
pub struct Analysis<'a> {
    /// Image score (see [`crate::judge::decide`]).
    pub score: f32,
    pub verdict: Verdict,
    /// Fused, calibrated anomaly map at input resolution, row-major.
    pub map: &'a [f32],
    pub width: usize,
    pub height: usize,
    /// The frame as judged, at the input resolution (empty after
    /// [`Engine::judge_input`]): overlays are drawn on it, so nothing resizes a frame twice.
    pub input: &'a RgbImage,
}

/// Raw per-scale maps of the last frame, for calibration and evaluation.
#[derive(Debug, Clone, Copy)]
pub struct ScaleMaps<'a> {
    pub patch_size: usize,
    /// Input pixels between two cells (the scale's stride times its reduction).
    pub stride: usize,
    pub height: usize,
    pub width: usize,
    pub error: &'a [f32],
    pub variance: &'a [f32],
}

/// A loaded bundle, ready to judge frames.
pub struct Engine {
    bundle: Bundle,
    options: EngineOptions,
    threshold: f32,
    input: Arc<Tensor>,
    networks: Vec<NetworkRunner>,
    scales: Vec<ScaleState>,
    /// The anomaly map: the calibrated maps of the scales that feed it, averaged.
    fused: Vec<f32>,
    /// What the image score reads when it is fed by other scales than the map
    /// ([`ScaleRole`]); `None` when every scale feeds both and the score reads `fused`.
    score_map: Option<Vec<f32>>,
    /// The frame of the last [`Engine::judge`], resized to the input; shared, so the daemon
    /// keeps it for its live page and archive without copying it.
    judged: Arc<RgbImage>,
    scorer: ImageScorer,
    /// Runs the networks side by side, one per thread.
    pool: rayon::ThreadPool,
    /// Threads inside each network of the judging pass: those the one-network-per-thread
    /// schedule would leave idle, so a bundle of one teacher alone still uses every core.
    judge_kernels: Executor,
    /// The same for the mapping pass, which runs fewer networks.
    map_kernels: Executor,
    /// Whether the last judged frame's map is drawn, waits for its own pass, or is unusable.
    map_state: MapState,
    /// The last judged frame's image score (NaN when it could not be judged).
    score: f32,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("bundle", &self.bundle.dir)
            .field("options", &self.options)
            .field("networks", &self.networks.len())
            .finish()
    }
}

/// tract's executor for `threads` threads inside one network: single-threaded below two.
fn kernel_executor(threads: usize) -> Result<Executor, EngineError> {
    if threads < 2 {
        return Ok(Executor::SingleThread);
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("ustad-kernel-{i}"))
        .build()
        .map_err(|e| EngineError::ThreadPool(e.to_string()))?;
    Ok(Executor::MultiThread(Arc::new(pool)))
}

/// The instruction-set rung tract's kernels were chosen for on this CPU, e.g.
/// `fma (sse2,…,avx2,fma)` on x86 or `neon (…)` on a Pi: a NEON-less or generic build shows
/// here, not only in the frame rate. `TRACT_CPU_ISA` can lower it.
pub fn cpu_kernels() -> String {
    let set = tract_onnx::prelude::tract_linalg::isa::native();
    format!("{} ({set:?})", set.nickname())
}

impl Engine {
    /// Loads and optimises every network of `bundle` at `options.precision`.
    pub fn load(bundle: Bundle, options: EngineOptions) -> Result<Self, EngineError> {
        log::info!(
            "tract kernels: {} on {}, {} precision",
            cpu_kernels(),
            std::env::consts::ARCH,
            options.precision
        );
        let m = &bundle.manifest;
        let (height, width) = (m.input.height, m.input.width);
        let input_shape = [1, 3, height, width];
        let mut networks = Vec::new();
        let mut scales = Vec::new();
        for (index, scale) in m.scales.iter().enumerate() {
            let (teacher, students) =
                bundle
                    .networks(scale, options.precision)
                    .ok_or(EngineError::MissingPrecision {
                        precision: options.precision,
                        scale: index,
                    })?;
            let (map_height, map_width) =
                bundle.map_size(index).ok_or_else(|| EngineError::Model {
                    path: bundle.file(teacher),
                    message: "no map size for this scale".into(),
                })?;
            let output_shape = [1, DESCRIPTOR_DIM, map_height, map_width];
            let start = networks.len();
            let half = options.precision == Precision::F16;
            let label = scale.label();
            networks.push(NetworkRunner::load(
                &bundle.file(teacher),
                format!("{label}/teacher"),
                input_shape,
                output_shape,
                half,
            )?);
            for (i, student) in students.iter().enumerate() {
                networks.push(NetworkRunner::load(
                    &bundle.file(student),
                    format!("{label}/student{i}"),
                    input_shape,
                    output_shape,
                    half,
                )?);
            }
            let pixels = map_height * map_width;
            scales.push(ScaleState {
                networks: start..networks.len(),
                stride: scale.map_stride(),
                role: scale.role,
                map_height,
                map_width,
                calibration: scale.calibration,
                error: vec![0.0; pixels],
                variance: vec![0.0; pixels],
                score: vec![0.0; pixels],
            });
        }
        let threads = if options.threads == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        } else {
            options.threads
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("ustad-infer-{i}"))
            .build()
            .map_err(|e| EngineError::ThreadPool(e.to_string()))?;
        let pass_networks = |pass: Pass| -> usize {
            scales
                .iter()
                .filter(|s: &&ScaleState| Pass::of(s.role) == pass)
                .map(|s| s.networks.len())
                .sum()
        };
        // A pass without networks (no map-only scales) needs no threads.
        let kernels = |networks: usize| kernel_executor(threads.checked_div(networks).unwrap_or(1));
        let judge_kernels = kernels(pass_networks(Pass::Judge))?;
        let map_kernels = kernels(pass_networks(Pass::Map))?;
        let input =
            Arc::new(
                Tensor::zero::<f32>(&input_shape).map_err(|e| EngineError::Model {
                    path: bundle.dir.clone(),
                    message: format!("{e:#}"),
                })?,
            );
        let scorer = ImageScorer::new(m.image_score, width, height);
        Ok(Self {
            threshold: m.decision.threshold,
            fused: vec![0.0; width * height],
            score_map: m
                .scales
                .iter()
                .any(|s| s.role != ScaleRole::Both)
                .then(|| vec![0.0; width * height]),
            judged: Arc::new(RgbImage::new(0, 0)),
            bundle,
            options,
            input,
            networks,
            scales,
            scorer,
            pool,
            judge_kernels,
            map_kernels,
            map_state: MapState::Stale,
            score: f32::NAN,
        })
    }

    /// The bundle this engine runs.
    pub fn bundle(&self) -> &Bundle {
        &self.bundle
    }

    pub fn options(&self) -> EngineOptions {
        self.options
    }

    /// Input `(height, width)`.
    pub fn input_size(&self) -> (usize, usize) {
        (
            self.bundle.manifest.input.height,
            self.bundle.manifest.input.width,
        )
    }

    /// The reject threshold in force.
    pub fn threshold(&self) -> f32 {
        self.threshold
    }

    /// Overrides the bundle's threshold (config override or sensitivity knob).
    pub fn set_threshold(&mut self, threshold: f32) {
        self.threshold = threshold;
    }

    /// Judges one image and draws its whole anomaly map: [`Engine::judge`] then
    /// [`Engine::map`].
    pub fn analyze(&mut self, image: &DynamicImage) -> Result<Analysis<'_>, EngineError> {
        self.judge(image)?;
        self.map()
    }

    /// Judges one image: resize (once; [`Analysis::input`] and [`Engine::judged_image`] keep
    /// the result), normalise, run the scales that feed the image score, score. The scales
    /// that only map wait for [`Engine::map`].
    pub fn judge(&mut self, image: &DynamicImage) -> Result<Judgement, EngineError> {
        self.map_state = MapState::Stale;
        self.score = f32::NAN;
        let spec = self.bundle.manifest.input.clone();
        let rgb = preprocess::resize_rgb(image, &spec);
        let filled = self.fill_input(|buffer| preprocess::normalise_into(&rgb, &spec, buffer));
        self.judged = Arc::new(rgb);
        filled?;
        self.judge_current_input()
    }

    /// The frame the last [`Engine::judge`] judged, at the input resolution, also when the
    /// networks then failed (a failed part is still shown and archived as it was seen).
    pub fn judged_image(&self) -> &Arc<RgbImage> {
        &self.judged
    }

    /// Judges an already normalised CHW input of the bundle's size and draws its whole map.
    pub fn analyze_input(&mut self, input: &[f32]) -> Result<Analysis<'_>, EngineError> {
        self.judge_input(input)?;
        self.map()
    }

    /// Judges an already normalised CHW input of the bundle's size; the map waits for
    /// [`Engine::map`].
    pub fn judge_input(&mut self, input: &[f32]) -> Result<Judgement, EngineError> {
        self.map_state = MapState::Stale;
        self.score = f32::NAN;
        let (height, width) = self.input_size();
        if input.len() != 3 * height * width {
            return Err(EngineError::InputSize {
                found: input.len(),
                expected: 3 * height * width,
            });
        }
        self.fill_input(|buffer| buffer.copy_from_slice(input))?;
        self.judged = Arc::new(RgbImage::new(0, 0));
        self.judge_current_input()
    }

    /// Whether the last judged frame's map still needs its own networks: [`Engine::map`] then
    /// costs a pass of them, otherwise nothing.
    pub fn map_pending(&self) -> bool {
        self.map_state == MapState::Pending
    }

    /// The last judged frame's anomaly map, running the map-only scales first if they have not
    /// run on it yet. An error when no frame was judged, or when judging or mapping it failed:
    /// a stale map is never shown as the frame's.
    pub fn map(&mut self) -> Result<Analysis<'_>, EngineError> {
        match self.map_state {
            MapState::Stale => return Err(EngineError::NotJudged),
            MapState::Pending => {
                self.map_state = MapState::Stale;
                self.run_pass(Pass::Map)?;
                // A map fed by other scales than the score is checked on its own: a broken map
                // must be as visible as a broken score.
                if self.fused.iter().any(|v| v.is_nan()) {
                    return Err(EngineError::NotFinite);
                }
                self.map_state = MapState::Ready;
            }
            MapState::Ready => {}
        }
        let (height, width) = self.input_size();
        let score = self.score;
        Ok(Analysis {
            score,
            verdict: Verdict::from_score(score, self.threshold),
            map: &self.fused,
            width,
            height,
            input: &self.judged,
        })
    }

    /// Raw error and variance maps of every scale for the last analysed frame.
    pub fn scale_maps(&self) -> Vec<ScaleMaps<'_>> {
        self.scales
            .iter()
            .zip(&self.bundle.manifest.scales)
            .map(|(state, spec)| ScaleMaps {
                patch_size: spec.patch_size,
                stride: state.stride,
                height: state.map_height,
                width: state.map_width,
                error: &state.error,
                variance: &state.variance,
            })
            .collect()
    }

    /// Descriptor maps `(label, CHW values)` of every network for the last frame: for parity
    /// checks against the trainer.
    pub fn network_outputs(&self) -> Vec<(&str, &[f32])> {
        self.networks
            .iter()
            .map(|n| (n.label.as_str(), n.output()))
            .collect()
    }

    /// Wall time of each network in the last frame (they overlap when run in parallel).
    pub fn network_timings(&self) -> Vec<(&str, Duration)> {
        self.networks
            .iter()
            .map(|n| (n.label.as_str(), n.elapsed))
            .collect()
    }

    /// Writes the next input into the input tensor, reusing last frame's storage when tract
    /// has let go of it.
    fn fill_input(&mut self, fill: impl FnOnce(&mut [f32])) -> Result<(), EngineError> {
        if Arc::get_mut(&mut self.input).is_none() {
            let fresh = self.input.as_ref().clone();
            self.input = Arc::new(fresh);
        }
        let error = |message: String| EngineError::Inference {
            network: "input".into(),
            message,
        };
        let tensor =
            Arc::get_mut(&mut self.input).ok_or_else(|| error("input tensor is shared".into()))?;
        let mut view = tensor
            .to_plain_array_view_mut::<f32>()
            .map_err(|e| error(format!("{e:#}")))?;
        let slice = view
            .as_slice_mut()
            .ok_or_else(|| error("input tensor is not contiguous".into()))?;
        fill(slice);
        Ok(())
    }

    /// Clears the maps, runs the judging pass and scores it; the mapping pass is left pending.
    /// The callers have already marked the last frame's score and map as gone (before filling
    /// the input, which can fail).
    fn judge_current_input(&mut self) -> Result<Judgement, EngineError> {
        self.fused.fill(0.0);
        if let Some(map) = &mut self.score_map {
            map.fill(0.0);
        }
        for scale in self.scales.iter().filter(|s| Pass::of(s.role) == Pass::Map) {
            for runner in &mut self.networks[scale.networks.clone()] {
                runner.elapsed = Duration::ZERO;
            }
        }
        self.run_pass(Pass::Judge)?;
        let scored = self.score_map.as_deref().unwrap_or(&self.fused);
        let score = self.scorer.score(scored);
        // The whole map the score reads, the border the score leaves out included, and the
        // anomaly map where judging drew it too: a NaN anywhere stops the part.
        let pending = self.scales.iter().any(|s| Pass::of(s.role) == Pass::Map);
        let has_nan = |map: &[f32]| map.iter().any(|v| v.is_nan());
        if score.is_nan()
            || has_nan(scored)
            || (!pending && self.score_map.is_some() && has_nan(&self.fused))
        {
            return Err(EngineError::NotFinite);
        }
        self.score = score;
        self.map_state = if pending {
            MapState::Pending
        } else {
            MapState::Ready
        };
        Ok(Judgement {
            score,
            verdict: Verdict::from_score(score, self.threshold),
        })
    }

    /// Runs the networks of `pass`'s scales side by side on the current input and adds their
    /// calibrated maps to the outputs they feed.
    fn run_pass(&mut self, pass: Pass) -> Result<(), EngineError> {
        let input = TValue::from_const(self.input.clone());
        let in_pass: Vec<bool> = self
            .scales
            .iter()
            .flat_map(|s| std::iter::repeat_n(Pass::of(s.role) == pass, s.networks.len()))
            .collect();
        let kernels = match pass {
            Pass::Judge => &self.judge_kernels,
            Pass::Map => &self.map_kernels,
        };
        let networks = &mut self.networks;
        self.pool.install(|| {
            networks
                .par_iter_mut()
                .zip(in_pass)
                .filter(|(_, runs)| *runs)
                .try_for_each(|(n, _)| multithread_tract_scope(kernels.clone(), || n.run(&input)))
        })?;
        drop(input);

        let (height, width) = self.input_size();
        let count = |feeds: fn(ScaleRole) -> bool| {
            self.scales.iter().filter(|s| feeds(s.role)).count().max(1) as f32
        };
        let (map_weight, score_weight) =
            (1.0 / count(ScaleRole::maps), 1.0 / count(ScaleRole::scores));
        for scale in self.scales.iter_mut().filter(|s| Pass::of(s.role) == pass) {
            let runners = &self.networks[scale.networks.clone()];
            let teacher = runners[0].output();
            let students: Vec<&[f32]> = runners[1..].iter().map(|r| r.output()).collect();
            score::error_and_variance(
                teacher,
                &students,
                DESCRIPTOR_DIM,
                &mut scale.error,
                &mut scale.variance,
            );
            for ((s, &e), &v) in scale
                .score
                .iter_mut()
                .zip(&scale.error)
                .zip(&scale.variance)
            {
                *s = scale.calibration.normalise(e, v);
            }
            let geometry = (scale.map_height, scale.map_width);
            if scale.role.maps() {
                score::upsample_accumulate(
                    &scale.score,
                    geometry,
                    scale.stride,
                    map_weight,
                    &mut self.fused,
                    (height, width),
                );
            }
            if let Some(map) = self.score_map.as_mut().filter(|_| scale.role.scores()) {
                score::upsample_accumulate(
                    &scale.score,
                    geometry,
                    scale.stride,
                    score_weight,
                    map,
                    (height, width),
                );
            }
        }
        Ok(())
    }
}
