//! The daemon configuration, `ustad.toml`.
//!
//! A line controller edits this file by hand, often on the machine itself, and a typo must not
//! turn into a silently ignored setting on a production line (a misspelt `delay_ms` would kick
//! the wrong part). So loading is strict:
//!
//! - unknown keys are refused (`deny_unknown_fields` on every section);
//! - bad values are refused with the reason;
//! - settings that contradict each other or the hardware (a region of interest outside the
//!   camera image, a frame budget longer than the time to the reject flap) are refused too;
//! - every error names the file, the line and column, and the dotted key (`reject.pulse_ms`).
//!
//! Parsing happens in two steps: serde fills private `Raw*` structs that mirror the file (all
//! optional fields as `Option`), then [`validate`] turns them into the public, fully-defaulted
//! [`Config`] whose enums make invalid combinations unrepresentable (a replay source has no
//! device path). Line numbers for the second step come from the document's spans, found again
//! by key path.
//!
//! Relative paths in the file are kept as written, i.e. relative to the daemon's working
//! directory (the repository root for `ustad run --config config/replay.toml`; set
//! `WorkingDirectory=` or use absolute paths under systemd).
//!
//! | file | holds |
//! |---|---|
//! | `types.rs` | the validated [`Config`] and its sections |
//! | `raw.rs` | the serde mirror of the file |
//! | `load.rs` | reading, parsing and placing errors by line and key |
//! | `validate.rs` | raw → validated, with every cross-field rule |
//! | `error.rs` | [`ConfigError`] and where it sits |

mod error;
mod load;
mod raw;
mod types;
mod validate;

pub use error::{ConfigError, Location};
pub use raw::DEFAULT_FRAME_BUDGET;
pub use types::*;
/// Inference precision (`f32`, `f16`, `int8`): the bundle's own type, so the two cannot drift.
pub use ustad_core::bundle::Precision;
/// The fail-safe policy (`failsafe.policy`): the judge's own type, applied in one place.
pub use ustad_core::judge::decide::FailSafePolicy;

// The sibling modules' shared internals (each file does `use super::*`).
use raw::*;
use validate::*;

#[cfg(test)]
mod tests;
