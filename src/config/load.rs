//! Reading and parsing, and placing an error on its line and key.
use std::ops::Range;
use std::path::Path;

use super::*;

impl Config {
    /// Reads and validates a configuration file. Errors name the file, line and key.
    pub fn load(path: impl AsRef<Path>) -> Result<Config, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        parse(&text, path)
    }

    /// Parses and validates configuration text; errors name the file as `<string>`.
    #[allow(clippy::should_implement_trait)] // also provided as `FromStr`
    pub fn from_str(text: &str) -> Result<Config, ConfigError> {
        parse(text, Path::new("<string>"))
    }

    /// Parses and validates configuration text, naming `file` in errors.
    pub fn from_str_named(text: &str, file: impl AsRef<Path>) -> Result<Config, ConfigError> {
        parse(text, file.as_ref())
    }
}

impl std::str::FromStr for Config {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Config::from_str(s)
    }
}

pub(super) fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
    // Spans of every key, for placing errors: also catches TOML syntax errors first.
    let doc = toml::de::DeTable::parse(text).map_err(|e| toml_error(text, file, &[], &e))?;
    let keys = flatten_keys(doc.get_ref());

    let raw: RawConfig = toml::from_str(text).map_err(|e| toml_error(text, file, &keys, &e))?;
    validate(raw).map_err(|p| {
        let span = locate(&keys, &p.path);
        ConfigError::Invalid {
            file: file.to_path_buf(),
            location: span.map(|s| location(text, s.start)),
            field: Some(p.path.join(".")),
            message: p.message,
        }
    })
}

/// A key of the document with the spans of the key and its value.
pub(super) struct KeySpan {
    pub(super) path: Vec<String>,
    pub(super) key: Range<usize>,
    pub(super) value: Range<usize>,
}

pub(super) fn flatten_keys(table: &toml::de::DeTable<'_>) -> Vec<KeySpan> {
    fn walk(table: &toml::de::DeTable<'_>, prefix: &[String], out: &mut Vec<KeySpan>) {
        for (k, v) in table.iter() {
            let mut path = prefix.to_vec();
            path.push(k.get_ref().to_string());
            out.push(KeySpan {
                path: path.clone(),
                key: k.span(),
                value: v.span(),
            });
            if let Some(t) = v.get_ref().as_table() {
                walk(t, &path, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(table, &[], &mut out);
    out
}

/// The span of `path` in the document, or of its closest existing ancestor (a missing key is
/// reported at its section header).
pub(super) fn locate(keys: &[KeySpan], path: &[String]) -> Option<Range<usize>> {
    (1..=path.len()).rev().find_map(|n| {
        keys.iter()
            .find(|k| k.path.as_slice() == &path[..n])
            .map(|k| k.key.clone())
    })
}

/// The key an error at byte `pos` is about: the key whose key or value holds `pos`, else the
/// last key starting before it.
pub(super) fn key_at(keys: &[KeySpan], pos: usize) -> Option<&KeySpan> {
    let holding = keys
        .iter()
        .filter(|k| k.key.contains(&pos) || k.value.contains(&pos))
        .max_by_key(|k| k.path.len());
    holding.or_else(|| {
        keys.iter()
            .filter(|k| k.key.start <= pos)
            .max_by_key(|k| (k.key.start, k.path.len()))
    })
}

pub(super) fn toml_error(
    text: &str,
    file: &Path,
    keys: &[KeySpan],
    e: &toml::de::Error,
) -> ConfigError {
    let span = e.span();
    let field = span
        .as_ref()
        .and_then(|s| key_at(keys, s.start))
        .map(|k| k.path.join("."));
    ConfigError::Invalid {
        file: file.to_path_buf(),
        location: span.map(|s| location(text, s.start)),
        field,
        message: e.message().trim().to_string(),
    }
}

/// 1-based line and column (in characters) of byte offset `pos`.
pub(super) fn location(text: &str, pos: usize) -> Location {
    let pos = pos.min(text.len());
    let before = text.get(..pos).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
    Location { line, column }
}
