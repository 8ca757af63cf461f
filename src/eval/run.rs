//! `ustad eval` as a library: read an MVTec-layout test split, score every image with the
//! engine, and turn the scores and maps into the numbers and pictures of DESIGN.md §3.
//!
//! The three steps are separate so a caller (the CLI, a test, the trainer) can drive a progress
//! bar between them and keep what it needs:
//!
//! 1. [`load_test_split`] finds `test/good`, every `test/<defect>` folder and the mask of every
//!    defect image, refusing an ill-formed dataset *before* any network runs, with the name of
//!    the offending file.
//! 2. [`score_test_split`] runs the engine on every image and keeps the fused map at the
//!    bundle's input resolution, with the mask resized to the same size (nearest neighbour, so
//!    it stays 0/255).
//! 3. [`EvalReport::build`] computes image AUROC, pixel AUROC, AU-PRO, the confusion counts at
//!    the bundle threshold and per-defect-type AUROC; [`write_outputs`] writes `report.json`,
//!    the curves and heatmap overlays of the worst mistakes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use image::imageops::FilterType;
use image::{Rgb, RgbImage};
use serde::Serialize;
use thiserror::Error;

use super::metrics::{
    AurocInterval, MapSample, Mask, MetricError, PixelEval, ThresholdReport, image_auroc,
    image_auroc_interval, mistakes, roc_curve,
};
use ustad_core::engine::{Engine, EngineError};
use ustad_core::images::{self, DatasetError, IMAGE_EXTENSIONS};
use ustad_core::judge::heatmap;
use ustad_core::plot::{PlotError, PlotStyle, write_pro_png, write_roc_png};

/// The FPR up to which AU-PRO is integrated (MVTec AD convention, DESIGN.md §3).
pub const DEFAULT_FPR_LIMIT: f64 = 0.3;

/// Name of the defect-free test folder and of its category in reports.
pub const GOOD: &str = "good";

/// Why an evaluation could not be run or written.
#[derive(Debug, Error)]
pub enum EvalRunError {
    #[error("{path}: not an MVTec-layout dataset: {message}")]
    Layout { path: PathBuf, message: String },
    #[error("{image}: defect image has no ground-truth mask (expected {expected})")]
    MissingMask { image: PathBuf, expected: PathBuf },
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    #[error("{path}: cannot read image: {source}")]
    Image {
        path: PathBuf,
        source: image::ImageError,
    },
    /// A test image the daemon would not judge either (read and decoded as the daemon does).
    #[error("cannot judge test image {0}")]
    Picture(#[from] crate::capture::decode::ImageFileError),
    /// A ground-truth mask that cannot be read within the same limits as the images.
    #[error("cannot read ground-truth mask {0}")]
    Mask(crate::capture::decode::ImageFileError),
    #[error(
        "{mask}: mask is {mask_width}×{mask_height} but its image {image} is {image_width}×{image_height}"
    )]
    MaskSize {
        mask: PathBuf,
        image: PathBuf,
        mask_width: u32,
        mask_height: u32,
        image_width: u32,
        image_height: u32,
    },
    #[error("{path}: {source}")]
    Engine { path: PathBuf, source: EngineError },
    #[error("computing the metrics: {0}")]
    Metric(#[from] MetricError),
    #[error(transparent)]
    Plot(#[from] PlotError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// One test image and its ground truth.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestImage {
    pub path: PathBuf,
    /// `"good"` or the defect folder's name.
    pub category: String,
    /// Ground-truth mask (defect images only).
    pub mask: Option<PathBuf>,
}

impl TestImage {
    pub fn is_defective(&self) -> bool {
        self.category != GOOD
    }
}

/// Finds the test split of an MVTec-layout dataset at `data`: `test/good/*`, every other
/// `test/<defect>/*`, and `ground_truth/<defect>/<stem>_mask.png` for each defect image.
///
/// `limit` keeps at most that many images per category (in name order), so a quick run still
/// sees every defect type and both classes. Good images come first, then defect types in name
/// order.
///
/// Everything is checked here, before any network runs: a missing `test/good`, a split without
/// defect folders, or a defect image without its mask is an error naming the path, because an
/// evaluation that silently skips images reports numbers for a different test set.
pub fn load_test_split(data: &Path, limit: Option<usize>) -> Result<Vec<TestImage>, EvalRunError> {
    let test = data.join("test");
    if !test.is_dir() {
        return Err(EvalRunError::Layout {
            path: data.to_path_buf(),
            message: "no test/ folder (expected test/good and test/<defect> folders)".into(),
        });
    }
    let good = test.join(GOOD);
    if !good.is_dir() {
        return Err(EvalRunError::Layout {
            path: good,
            message: "missing: image AUROC and the false-reject rate need defect-free test images"
                .into(),
        });
    }
    let take = |mut files: Vec<PathBuf>| {
        if let Some(n) = limit {
            files.truncate(n);
        }
        files
    };
    let mut out: Vec<TestImage> = take(images::images_in(&good)?)
        .into_iter()
        .map(|path| TestImage {
            path,
            category: GOOD.into(),
            mask: None,
        })
        .collect();

    let io = |source| EvalRunError::Io {
        path: test.clone(),
        source,
    };
    let mut defects: Vec<PathBuf> = std::fs::read_dir(&test)
        .map_err(io)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(io)?;
    defects.retain(|p| p.is_dir() && p.file_name().is_some_and(|n| n != GOOD));
    defects.sort();
    if defects.is_empty() {
        return Err(EvalRunError::Layout {
            path: test,
            message: "no defect folders besides good/: the metrics need defective images".into(),
        });
    }
    let truth = data.join("ground_truth");
    for dir in defects {
        let category = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        for path in take(images::images_in(&dir)?) {
            let mask = find_mask(&truth.join(&category), &path)?;
            out.push(TestImage {
                path,
                category: category.clone(),
                mask: Some(mask),
            });
        }
    }
    Ok(out)
}

/// `<truth_dir>/<stem>_mask.png`, or the same name with another image extension.
fn find_mask(truth_dir: &Path, image: &Path) -> Result<PathBuf, EvalRunError> {
    let stem = image
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let expected = truth_dir.join(format!("{stem}_mask.png"));
    if expected.is_file() {
        return Ok(expected);
    }
    IMAGE_EXTENSIONS
        .iter()
        .map(|ext| truth_dir.join(format!("{stem}_mask.{ext}")))
        .find(|p| p.is_file())
        .ok_or(EvalRunError::MissingMask {
            image: image.to_path_buf(),
            expected,
        })
}

/// The score of one test image.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScoredImage {
    pub file: PathBuf,
    pub category: String,
    pub defective: bool,
    pub score: f32,
    /// Whether the engine's verdict at the bundle threshold rejects the part.
    pub rejected: bool,
}

/// Scores and maps of a whole test split, at the bundle's input resolution.
#[derive(Debug, Clone)]
pub struct Evaluation {
    pub images: Vec<ScoredImage>,
    /// Fused anomaly map per image, `width × height`, row-major.
    pub maps: Vec<Vec<f32>>,
    /// Mask per image at map resolution (0/255), `None` for good images.
    pub masks: Vec<Option<Vec<u8>>>,
    /// The input the engine judged, per image: overlays are drawn on it, so no image is
    /// resized twice. Its 3 bytes a pixel are less than the map's 4 kept beside it.
    pub inputs: Vec<RgbImage>,
    pub width: usize,
    pub height: usize,
    pub threshold: f32,
    /// Mean wall time of one image: decoding, resizing and the engine.
    pub mean_frame_ms: f64,
}

/// Runs the engine on every image of `split`, calling `progress(done)` after each.
///
/// An image that cannot be read, or that the engine cannot judge (NaN map), stops the run with
/// the file named: in the daemon such a part is rejected, but in an evaluation it means a broken
/// dataset or model, and counting it either way would bias the numbers. Images and masks are
/// read as the daemon reads frames: bounded file reads, the strict decoder, at most
/// `max_pixels` pixels (`--max-pixels`; a decompression bomb in a dataset is an error, not an
/// out-of-memory kill).
pub fn score_test_split(
    engine: &mut Engine,
    split: &[TestImage],
    max_pixels: u64,
    mut progress: impl FnMut(usize),
) -> Result<Evaluation, EvalRunError> {
    let (height, width) = engine.input_size();
    let threshold = engine.threshold();
    let mut images = Vec::with_capacity(split.len());
    let mut maps = Vec::with_capacity(split.len());
    let mut inputs = Vec::with_capacity(split.len());
    let mut masks = Vec::with_capacity(split.len());
    let start = Instant::now();
    for (done, item) in split.iter().enumerate() {
        let picture = crate::capture::decode::load_image_file_within(&item.path, max_pixels)?;
        let mask = match &item.mask {
            Some(mask_path) => Some(load_mask(
                mask_path,
                &item.path,
                &picture,
                (width, height),
                max_pixels,
            )?),
            None => None,
        };
        let analysis = engine
            .analyze(&picture)
            .map_err(|source| EvalRunError::Engine {
                path: item.path.clone(),
                source,
            })?;
        images.push(ScoredImage {
            file: item.path.clone(),
            category: item.category.clone(),
            defective: item.is_defective(),
            score: analysis.score,
            rejected: analysis.verdict.rejects(),
        });
        maps.push(analysis.map.to_vec());
        inputs.push(analysis.input.clone());
        masks.push(mask);
        progress(done + 1);
    }
    let mean_frame_ms = if split.is_empty() {
        0.0
    } else {
        start.elapsed().as_secs_f64() * 1e3 / split.len() as f64
    };
    Ok(Evaluation {
        images,
        maps,
        masks,
        inputs,
        width,
        height,
        threshold,
        mean_frame_ms,
    })
}

/// Reads a mask, checks it matches its image's size, and resizes it to the map size with
/// nearest neighbour (maps are at the bundle's input resolution; nearest keeps it 0/255).
fn load_mask(
    mask_path: &Path,
    image_path: &Path,
    picture: &image::DynamicImage,
    (width, height): (usize, usize),
    max_pixels: u64,
) -> Result<Vec<u8>, EvalRunError> {
    let mask = crate::capture::decode::load_image_file_within(mask_path, max_pixels)
        .map_err(EvalRunError::Mask)?
        .to_luma8();
    // A mask of another size would be stretched onto the wrong pixels.
    if mask.dimensions() != (picture.width(), picture.height()) {
        return Err(EvalRunError::MaskSize {
            mask: mask_path.to_path_buf(),
            image: image_path.to_path_buf(),
            mask_width: mask.width(),
            mask_height: mask.height(),
            image_width: picture.width(),
            image_height: picture.height(),
        });
    }
    let (w, h) = (width as u32, height as u32);
    let resized = if mask.dimensions() == (w, h) {
        mask
    } else {
        image::imageops::resize(&mask, w, h, FilterType::Nearest)
    };
    Ok(resized.into_raw())
}

/// Image AUROC of one defect type against all good images.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DefectReport {
    pub defect: String,
    pub images: usize,
    pub image_auroc: f64,
    /// Defective images of this type rejected at the threshold.
    pub detected: usize,
    /// Accepted at the threshold.
    pub escapes: usize,
    pub escape_rate: f64,
}

/// A mistake or detection, for people: which file, what score, which overlay shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Example {
    pub file: PathBuf,
    pub category: String,
    pub score: f32,
    /// Overlay PNG relative to the report folder, once written.
    pub overlay: Option<String>,
}

/// The examples shown as overlays, worst first.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Examples {
    /// Good images rejected, highest score first.
    pub false_rejects: Vec<Example>,
    /// Defective images accepted, lowest score first.
    pub escapes: Vec<Example>,
    /// Defective images rejected, highest score first.
    pub detections: Vec<Example>,
}

/// Everything `ustad eval` reports (serialised as `report.json`).
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    pub bundle: PathBuf,
    pub data: PathBuf,
    pub precision: String,
    pub threshold: f32,
    pub input_width: usize,
    pub input_height: usize,
    pub images: usize,
    pub good: usize,
    pub defective: usize,
    pub image_auroc: f64,
    /// DeLong 95 % confidence interval of `image_auroc`: is the bundle better than chance?
    pub image_auroc_interval: AurocInterval,
    pub pixel_auroc: f64,
    pub au_pro: f64,
    pub au_pro_fpr_limit: f64,
    /// Ground-truth regions AU-PRO averages over.
    pub regions: usize,
    /// Confusion counts, false-reject and escape rates at `threshold`.
    pub at_threshold: ThresholdReport,
    pub per_defect: Vec<DefectReport>,
    pub examples: Examples,
    pub mean_frame_ms: f64,
    /// Every image's score and verdict, so any other metric can be recomputed from the JSON.
    pub scores: Vec<ScoredImage>,
}

impl EvalReport {
    /// Computes every metric of `evaluation`. Also returns the sorted pixel data, which the
    /// curves are drawn from.
    pub fn build(
        evaluation: &Evaluation,
        bundle: &Path,
        data: &Path,
        precision: &str,
        fpr_limit: f64,
        examples: usize,
    ) -> Result<(Self, PixelEval), EvalRunError> {
        let scores: Vec<f32> = evaluation.images.iter().map(|i| i.score).collect();
        let defective: Vec<bool> = evaluation.images.iter().map(|i| i.defective).collect();
        let image_auroc_all = image_auroc_interval(&scores, &defective)?;
        let at_threshold =
            ThresholdReport::at_threshold(&scores, &defective, evaluation.threshold)?;

        let samples: Vec<MapSample<'_>> = evaluation
            .maps
            .iter()
            .zip(&evaluation.masks)
            .map(|(map, mask)| MapSample {
                scores: map,
                width: evaluation.width,
                height: evaluation.height,
                mask: mask.as_deref().map_or(Mask::Good, Mask::Gray),
            })
            .collect();
        let pixels = PixelEval::new(&samples)?;
        let au_pro = pixels.au_pro(fpr_limit)?;

        let mut by_defect: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, image) in evaluation.images.iter().enumerate() {
            if image.defective {
                by_defect.entry(&image.category).or_default().push(i);
            }
        }
        let mut per_defect = Vec::new();
        for (defect, indices) in by_defect {
            let mut s = Vec::new();
            let mut l = Vec::new();
            for image in &evaluation.images {
                if !image.defective || image.category == defect {
                    s.push(image.score);
                    l.push(image.defective);
                }
            }
            let detected = indices
                .iter()
                .filter(|&&i| evaluation.images[i].rejected)
                .count();
            per_defect.push(DefectReport {
                defect: defect.to_string(),
                images: indices.len(),
                image_auroc: image_auroc(&s, &l)?,
                detected,
                escapes: indices.len() - detected,
                escape_rate: (indices.len() - detected) as f64 / indices.len() as f64,
            });
        }

        let example = |i: usize| Example {
            file: evaluation.images[i].file.clone(),
            category: evaluation.images[i].category.clone(),
            score: evaluation.images[i].score,
            overlay: None,
        };
        let wrong = mistakes(&scores, &defective, evaluation.threshold)?;
        let mut detected: Vec<usize> = (0..scores.len())
            .filter(|&i| defective[i] && scores[i] >= evaluation.threshold)
            .collect();
        detected.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
        // True detections are illustrations, not diagnostics: half as many as the mistakes.
        let shown_detections = examples.div_ceil(2);
        let examples = Examples {
            false_rejects: wrong
                .false_rejects
                .iter()
                .take(examples)
                .map(|&i| example(i))
                .collect(),
            escapes: wrong
                .escapes
                .iter()
                .take(examples)
                .map(|&i| example(i))
                .collect(),
            detections: detected
                .iter()
                .take(shown_detections)
                .map(|&i| example(i))
                .collect(),
        };

        let report = EvalReport {
            bundle: bundle.to_path_buf(),
            data: data.to_path_buf(),
            precision: precision.to_string(),
            threshold: evaluation.threshold,
            input_width: evaluation.width,
            input_height: evaluation.height,
            images: scores.len(),
            good: defective.iter().filter(|&&d| !d).count(),
            defective: defective.iter().filter(|&&d| d).count(),
            image_auroc: image_auroc_all.auroc,
            image_auroc_interval: image_auroc_all,
            pixel_auroc: pixels.auroc(),
            au_pro,
            au_pro_fpr_limit: fpr_limit,
            regions: pixels.regions(),
            at_threshold,
            per_defect,
            examples,
            mean_frame_ms: evaluation.mean_frame_ms,
            scores: evaluation.images.clone(),
        };
        Ok((report, pixels))
    }

    /// The human summary printed by `ustad eval`.
    pub fn summary(&self) -> String {
        let pct = |r: Option<f64>| r.map_or("n/a".to_string(), |r| format!("{:.1} %", 100.0 * r));
        let t = &self.at_threshold;
        let mut s = String::new();
        s.push_str(&format!(
            "{} test images ({} good, {} defective) at {}×{}, {}, {:.1} ms per image\n",
            self.images,
            self.good,
            self.defective,
            self.input_width,
            self.input_height,
            self.precision,
            self.mean_frame_ms
        ));
        let ci = &self.image_auroc_interval;
        s.push_str(&format!(
            "image AUROC   {:.4}  ({:.0} % CI {:.3}–{:.3}, DeLong)\n",
            self.image_auroc,
            100.0 * ci.level,
            ci.low,
            ci.high
        ));
        s.push_str(&format!("pixel AUROC   {:.4}\n", self.pixel_auroc));
        s.push_str(&format!(
            "AU-PRO@{}    {:.4}  ({} ground-truth regions)\n",
            self.au_pro_fpr_limit, self.au_pro, self.regions
        ));
        s.push_str(&format!("at threshold {:.4}:\n", self.threshold));
        s.push_str(&format!(
            "  false rejects {:>4} of {:>4} good       ({})\n",
            t.false_positives,
            t.good(),
            pct(t.false_reject_rate())
        ));
        s.push_str(&format!(
            "  escapes       {:>4} of {:>4} defective  ({})\n",
            t.false_negatives,
            t.defective(),
            pct(t.escape_rate())
        ));
        s.push_str(&format!(
            "  confusion: TP {} FP {} TN {} FN {}\n",
            t.true_positives, t.false_positives, t.true_negatives, t.false_negatives
        ));
        s.push_str("per defect type:\n");
        for d in &self.per_defect {
            s.push_str(&format!(
                "  {:<12} {:>4} images  image AUROC {:.4}  escapes {:>4} ({:.1} %)\n",
                d.defect,
                d.images,
                d.image_auroc,
                d.escapes,
                100.0 * d.escape_rate
            ));
        }
        s
    }
}

/// Writes `report.json`, `roc.png` (image level), `pixel_roc.png`, `pro.png` and the overlays
/// (`overlays/*.png`) into `dir`, recording each overlay's name in the report first.
pub fn write_outputs(
    dir: &Path,
    report: &mut EvalReport,
    evaluation: &Evaluation,
    pixels: &PixelEval,
) -> Result<(), EvalRunError> {
    let overlays = dir.join("overlays");
    std::fs::create_dir_all(&overlays).map_err(|source| EvalRunError::Io {
        path: overlays.clone(),
        source,
    })?;
    let style = PlotStyle::default();
    let scores: Vec<f32> = evaluation.images.iter().map(|i| i.score).collect();
    let defective: Vec<bool> = evaluation.images.iter().map(|i| i.defective).collect();
    write_roc_png(
        &dir.join("roc.png"),
        &roc_curve(&scores, &defective)?,
        &format!(
            "IMAGE ROC  AUROC {:.3} (95% CI {:.3}-{:.3})",
            report.image_auroc, report.image_auroc_interval.low, report.image_auroc_interval.high
        ),
        &style,
    )?;
    // Thinned to 1/500: invisible at 600 px, and keeps tens of millions of points out of the PNG.
    write_roc_png(
        &dir.join("pixel_roc.png"),
        &pixels.roc_curve(0.002),
        &format!("PIXEL ROC  AUROC {:.3}", report.pixel_auroc),
        &style,
    )?;
    write_pro_png(
        &dir.join("pro.png"),
        &pixels.pro_curve(0.002),
        report.au_pro_fpr_limit,
        // The plot font has no '@'.
        &format!(
            "PRO  AU-PRO {:.3} (FPR TO {})",
            report.au_pro, report.au_pro_fpr_limit
        ),
        &style,
    )?;

    let index: BTreeMap<&Path, usize> = evaluation
        .images
        .iter()
        .enumerate()
        .map(|(i, image)| (image.file.as_path(), i))
        .collect();
    let groups = [
        ("false_reject", &mut report.examples.false_rejects),
        ("escape", &mut report.examples.escapes),
        ("detection", &mut report.examples.detections),
    ];
    for (kind, examples) in groups {
        for (rank, example) in examples.iter_mut().enumerate() {
            let Some(&i) = index.get(example.file.as_path()) else {
                continue;
            };
            let mut overlay = heatmap::overlay_at_threshold(
                &evaluation.inputs[i],
                &evaluation.maps[i],
                evaluation.width,
                evaluation.height,
                evaluation.threshold,
            );
            if let Some(mask) = &evaluation.masks[i] {
                outline_mask(&mut overlay, mask, evaluation.width, evaluation.height);
            }
            let stem = example
                .file
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let name = format!("{kind}_{:02}_{}_{stem}.png", rank + 1, example.category);
            let path = overlays.join(&name);
            overlay
                .save(&path)
                .map_err(|source| EvalRunError::Image { path, source })?;
            example.overlay = Some(format!("overlays/{name}"));
        }
    }

    let json = dir.join("report.json");
    let text = serde_json::to_string_pretty(report).map_err(|source| EvalRunError::Json {
        path: json.clone(),
        source,
    })?;
    std::fs::write(&json, text).map_err(|source| EvalRunError::Io { path: json, source })
}

/// Draws the ground-truth boundary in white, so a reader sees at once whether the hot area of
/// an overlay is where the defect is.
fn outline_mask(overlay: &mut RgbImage, mask: &[u8], width: usize, height: usize) {
    let inside = |x: usize, y: usize| mask[y * width + x] >= 128;
    let (ow, oh) = overlay.dimensions();
    if (ow as usize, oh as usize) != (width, height) || mask.len() != width * height {
        return;
    }
    for y in 0..height {
        for x in 0..width {
            if !inside(x, y) {
                continue;
            }
            let edge = x == 0
                || y == 0
                || x + 1 == width
                || y + 1 == height
                || !inside(x - 1, y)
                || !inside(x + 1, y)
                || !inside(x, y - 1)
                || !inside(x, y + 1);
            if edge {
                overlay.put_pixel(x as u32, y as u32, Rgb([255, 255, 255]));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(path: &Path) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        image::GrayImage::new(4, 4).save(path).unwrap();
    }

    #[test]
    fn finds_images_and_masks_per_category_with_limit() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for name in ["a.png", "b.png", "c.png"] {
            touch(&d.join("test/good").join(name));
        }
        for name in ["x.png", "y.png"] {
            touch(&d.join("test/crack").join(name));
            touch(
                &d.join("ground_truth/crack")
                    .join(name.replace(".png", "_mask.png")),
            );
        }
        let split = load_test_split(d, Some(2)).unwrap();
        let names: Vec<_> = split
            .iter()
            .map(|t| {
                (
                    t.category.as_str(),
                    t.path.file_name().unwrap().to_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            names,
            [
                ("good", "a.png"),
                ("good", "b.png"),
                ("crack", "x.png"),
                ("crack", "y.png")
            ]
        );
        assert!(split[2].mask.as_ref().unwrap().ends_with("x_mask.png"));
        assert!(split[0].mask.is_none());
    }

    #[test]
    fn ill_formed_datasets_name_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let err = load_test_split(d, None).unwrap_err().to_string();
        assert!(err.contains("no test/ folder"), "{err}");

        touch(&d.join("test/crack/x.png"));
        let err = load_test_split(d, None).unwrap_err().to_string();
        assert!(
            err.contains("test/good") && err.contains("missing"),
            "{err}"
        );

        touch(&d.join("test/good/a.png"));
        let err = load_test_split(d, None).unwrap_err().to_string();
        assert!(
            err.contains("test/crack/x.png") && err.contains("x_mask.png"),
            "{err}"
        );

        std::fs::remove_dir_all(d.join("test/crack")).unwrap();
        let err = load_test_split(d, None).unwrap_err().to_string();
        assert!(err.contains("no defect folders"), "{err}");
    }

    #[test]
    fn mask_outline_marks_only_the_boundary() {
        let mut img = RgbImage::new(5, 5);
        let mut mask = vec![0u8; 25];
        for y in 1..4 {
            for x in 1..4 {
                mask[y * 5 + x] = 255;
            }
        }
        outline_mask(&mut img, &mask, 5, 5);
        assert_eq!(*img.get_pixel(1, 1), Rgb([255, 255, 255]));
        assert_eq!(*img.get_pixel(2, 2), Rgb([0, 0, 0]), "interior untouched");
        assert_eq!(*img.get_pixel(0, 0), Rgb([0, 0, 0]), "outside untouched");
    }
}
