//! Finding images on disk: plain folders and the MVTec AD layout.

use std::path::{Path, PathBuf};

use thiserror::Error;

/// File extensions read as images.
/// The formats the one decoder (`image` with PNG and JPEG) reads; a `.bmp` would only fail later.
pub const IMAGE_EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

#[derive(Debug, Error)]
pub enum DatasetError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: no such file or folder")]
    Missing { path: PathBuf },
    #[error("{path}: no images (looked for {IMAGE_EXTENSIONS:?})")]
    Empty { path: PathBuf },
}

/// Is `path` named like an image?
pub fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Expands files and folders (recursively) into image files, each folder in name order, so
/// every run sees the same sequence.
pub fn collect_images(inputs: &[PathBuf]) -> Result<Vec<PathBuf>, DatasetError> {
    let mut out = Vec::new();
    for input in inputs {
        if input.is_dir() {
            walk(input, &mut out)?;
        } else if input.is_file() {
            out.push(input.clone());
        } else {
            return Err(DatasetError::Missing {
                path: input.clone(),
            });
        }
    }
    Ok(out)
}

/// The images of one folder (recursively), refusing an empty folder.
pub fn images_in(dir: &Path) -> Result<Vec<PathBuf>, DatasetError> {
    if !dir.is_dir() {
        return Err(DatasetError::Missing {
            path: dir.to_path_buf(),
        });
    }
    let mut out = Vec::new();
    walk(dir, &mut out)?;
    if out.is_empty() {
        return Err(DatasetError::Empty {
            path: dir.to_path_buf(),
        });
    }
    Ok(out)
}

/// Depth-first, each folder in name order (so the whole list is in path order). Hidden entries
/// (`.name`: editors and file managers leave them beside images) are left out. Symlinks are
/// followed, since a folder of links into an archive is common, but only regular files are
/// images: a FIFO would block a reader and a device would never end.
fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), DatasetError> {
    let io = |source| DatasetError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(io)?;
    entries.sort();
    for path in entries {
        let hidden = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'));
        if hidden {
            continue;
        }
        let meta = std::fs::metadata(&path).ok();
        if meta.as_ref().is_some_and(|m| m.is_dir()) {
            walk(&path, out)?;
        } else if is_image(&path) {
            if meta.as_ref().is_some_and(|m| m.is_file()) {
                out.push(path);
            } else {
                log::warn!("skipping {}: not a regular file", path.display());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(path: &Path) {
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, b"x").expect("write");
    }

    #[test]
    fn walks_in_path_order_leaving_out_hidden_and_unreadable_kinds() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        for name in [
            "b/2.png",
            "b/1.JPG",
            "a.jpeg",
            "c.png",
            ".hidden.png",
            ".git/x.png",
        ] {
            touch(&root.join(name));
        }
        touch(&root.join("notes.txt"));
        touch(&root.join("scan.bmp"));
        // A socket named like an image: not a regular file, so never handed to a decoder.
        #[cfg(unix)]
        let _socket = std::os::unix::net::UnixListener::bind(root.join("d.png")).expect("bind");
        let found: Vec<String> = images_in(root)
            .expect("images")
            .iter()
            .map(|p| p.strip_prefix(root).expect("prefix").display().to_string())
            .collect();
        assert_eq!(found, ["a.jpeg", "b/1.JPG", "b/2.png", "c.png"]);
    }

    #[test]
    fn an_empty_or_missing_folder_is_refused_by_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        touch(&dir.path().join(".only-hidden.png"));
        let e = images_in(dir.path()).expect_err("empty");
        assert!(matches!(e, DatasetError::Empty { .. }), "{e}");
        let missing = dir.path().join("nope");
        let e = collect_images(std::slice::from_ref(&missing)).expect_err("missing");
        assert!(e.to_string().contains("nope"), "{e}");
    }
}
