//! Configuration errors and where in the text they sit.
use std::fmt;
use std::path::{Path, PathBuf};

/// Where an error sits in the configuration text (1-based, column in characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    /// 1-based line number.
    pub line: usize,
    /// 1-based column, counted in characters.
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read at all.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        /// The file we tried to read.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The text is not valid TOML, or a key or value is wrong.
    #[error("{}", render_invalid(file, location, field.as_deref(), message))]
    Invalid {
        /// The file (or `<string>` for [`Config::from_str`]).
        file: PathBuf,
        /// Line and column, when the error could be placed.
        location: Option<Location>,
        /// The dotted key the error is about (`camera.width`), when known.
        field: Option<String>,
        /// The reason.
        message: String,
    },
    /// Well-formed, but what it names cannot be used here (found by `check-config`, which
    /// opens the bundle, the replay folder and the archive folder as `run` would).
    #[error("{}: `{field}`: {message}", file.display())]
    Unusable {
        /// The config file.
        file: PathBuf,
        /// The dotted key naming the unusable thing.
        field: String,
        /// Why it cannot be used.
        message: String,
    },
}

impl ConfigError {
    /// The 1-based line of the error, if it could be placed.
    pub fn line(&self) -> Option<usize> {
        match self {
            ConfigError::Invalid { location, .. } => location.map(|l| l.line),
            ConfigError::Read { .. } | ConfigError::Unusable { .. } => None,
        }
    }

    /// The dotted key the error is about, if known.
    pub fn field(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { field, .. } => field.as_deref(),
            ConfigError::Unusable { field, .. } => Some(field),
            ConfigError::Read { .. } => None,
        }
    }
}

pub(super) fn render_invalid(
    file: &Path,
    location: &Option<Location>,
    field: Option<&str>,
    message: &str,
) -> String {
    let mut s = file.display().to_string();
    if let Some(loc) = location {
        s.push_str(&format!(":{loc}"));
    }
    s.push_str(": ");
    if let Some(field) = field {
        s.push_str(&format!("`{field}`: "));
    }
    s.push_str(message);
    s
}
