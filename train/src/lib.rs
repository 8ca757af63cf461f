//! `ustad-train`: teacher distillation, student ensembles, calibration and bundle export.
//!
//! Networks, bundle format and scoring math come from `ustad-core`; this crate adds only what
//! needs a training framework (burn) or a backbone CNN. `fit/` holds `ustad-train fit` one step
//! per module, in the order it runs them: `split` → `students` (teacher statistics, students) →
//! `export` (whitening, bundle, calibration, parity, provenance) → `int8`, with the presets in
//! `preset`.

pub mod backbone;
pub mod calibrate;
pub mod corpus;
pub mod device;
pub mod fit;
pub mod net;
pub mod pca;
pub mod teacher;
pub mod whiten;
