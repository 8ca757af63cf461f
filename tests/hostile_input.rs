//! Property tests over what reaches ustad from outside: config text, bundle manifests, image
//! bytes and HTTP requests. Whatever the input, nothing panics; a refusal names the file it
//! is about; an image is never decoded past its pixel limit; the endpoint keeps answering.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use ustad::capture::decode::decode_image_within;
use ustad::config::Config;
use ustad::daemon::http::HttpServer;
use ustad::daemon::metrics::Metrics;
use ustad_core::bundle::Bundle;
use ustad_core::images::images_in;

fn repo(rel: &str) -> PathBuf {
    ustad_core::testing::repo_path(rel)
}

/// An edit of a text or byte string: what a typo, a bad copy or an attacker does to it.
#[derive(Debug, Clone)]
enum Edit {
    /// Remove `len` bytes at `at` (positions are taken modulo the length).
    Delete { at: usize, len: usize },
    /// Insert these bytes at `at`.
    Insert { at: usize, bytes: Vec<u8> },
    /// Overwrite one byte.
    Set { at: usize, byte: u8 },
    /// Cut everything from `at`.
    Truncate { at: usize },
    /// Repeat `len` bytes at `at` in place.
    Duplicate { at: usize, len: usize },
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), 1..64usize).prop_map(|(at, len)| Edit::Delete { at, len }),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(at, bytes)| Edit::Insert { at, bytes }),
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Edit::Set { at, byte }),
        any::<usize>().prop_map(|at| Edit::Truncate { at }),
        (any::<usize>(), 1..256usize).prop_map(|(at, len)| Edit::Duplicate { at, len }),
    ]
}

/// Text-like inserts for config files: keys, values and TOML punctuation, not only noise.
fn text_edit() -> impl Strategy<Value = Edit> {
    let token = prop_oneof![
        Just("=".to_string()),
        Just("\n".to_string()),
        Just("[".to_string()),
        Just("]".to_string()),
        Just("\"".to_string()),
        Just("-1".to_string()),
        Just("1e309".to_string()),
        Just("nan".to_string()),
        Just("0".to_string()),
        Just("18446744073709551616".to_string()),
        Just("\nfps = 1e-30\n".to_string()),
        Just("\n[roi]\nx = 4294967295\ny = 0\nwidth = 2\nheight = 2\n".to_string()),
        "[a-z_]{1,12}",
    ];
    prop_oneof![
        edit(),
        (any::<usize>(), token).prop_map(|(at, t)| Edit::Insert {
            at,
            bytes: t.into_bytes()
        }),
    ]
}

fn apply(mut data: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for e in edits {
        let n = data.len();
        let at = |a: usize| if n == 0 { 0 } else { a % (n + 1) };
        match e {
            Edit::Delete { at: a, len } => {
                let start = at(*a);
                let end = (start + len).min(n);
                data.drain(start..end);
            }
            Edit::Insert { at: a, bytes } => {
                let start = at(*a);
                data.splice(start..start, bytes.iter().copied());
            }
            Edit::Set { at: a, byte } if n > 0 => data[a % n] = *byte,
            Edit::Set { .. } => {}
            Edit::Truncate { at: a } => data.truncate(at(*a)),
            Edit::Duplicate { at: a, len } => {
                let start = at(*a);
                let end = (start + len).min(n);
                let copy: Vec<u8> = data[start..end].to_vec();
                data.splice(start..start, copy);
            }
        }
    }
    data
}

fn mtd_image(ext: &str) -> Vec<u8> {
    let dir = repo("../shared/data/mtd/test/good");
    let files = images_in(&dir).expect("MTD test split");
    match files
        .iter()
        .find(|p| p.extension().is_some_and(|e| e.eq_ignore_ascii_case(ext)))
    {
        Some(f) => std::fs::read(f).expect("read MTD image"),
        // MTD ships one format; make the other from it.
        None => {
            let any = files.first().expect("an image");
            let img = image::open(any).expect("decode MTD image");
            let mut out = std::io::Cursor::new(Vec::new());
            let format = if ext == "png" {
                image::ImageFormat::Png
            } else {
                image::ImageFormat::Jpeg
            };
            img.to_rgb8().write_to(&mut out, format).expect("encode");
            out.into_inner()
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Any edit of the shipped replay config either loads or is refused with the file named;
    /// a config that loads has a positive frame rate and threshold override, if any.
    #[test]
    fn config_text_loads_or_names_the_file(edits in prop::collection::vec(text_edit(), 1..6)) {
        let text = std::fs::read(repo("config/replay.toml")).expect("config/replay.toml");
        let edited = String::from_utf8_lossy(&apply(text, &edits)).into_owned();
        match Config::from_str_named(&edited, "fuzzed.toml") {
            Ok(cfg) => {
                if let Some(t) = cfg.model.threshold {
                    prop_assert!(t.is_finite() && t > 0.0, "threshold {t}");
                }
                prop_assert!(cfg.failsafe.frame_budget > Duration::ZERO);
            }
            Err(e) => prop_assert!(e.to_string().contains("fuzzed.toml"), "{e}"),
        }
    }

    /// Damaged JPEG and PNG frames decode or are refused; never past the pixel limit.
    #[test]
    fn image_bytes_decode_within_the_limit_or_are_refused(
        png in any::<bool>(),
        edits in prop::collection::vec(edit(), 0..6),
        limit in prop_oneof![Just(u64::MAX), 1u64..70_000],
    ) {
        let bytes = apply(mtd_image(if png { "png" } else { "jpg" }), &edits);
        if let Ok(img) = decode_image_within(&bytes, limit) {
            let (w, h) = img.dimensions();
            prop_assert!(w > 0 && h > 0);
            prop_assert!(u64::from(w) * u64::from(h) <= limit, "{w}x{h} over {limit}");
        }
    }

    /// Random bytes (no valid header at all) are refused, whatever the limit.
    #[test]
    fn noise_is_not_an_image(bytes in prop::collection::vec(any::<u8>(), 0..4096)) {
        prop_assume!(!bytes.starts_with(&[0xFF, 0xD8]) && !bytes.starts_with(b"\x89PNG"));
        prop_assert!(decode_image_within(&bytes, u64::MAX).is_err());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// An edited bundle.toml beside the real networks loads (and then every field it checks
    /// holds) or is refused naming bundle.toml or the network file at fault.
    #[test]
    fn bundle_manifest_loads_or_names_the_file(edits in prop::collection::vec(text_edit(), 1..4)) {
        let shipped = repo("models/bundles/mtd-edge");
        let dir = tempfile::tempdir().expect("tempdir");
        for entry in std::fs::read_dir(&shipped).expect("shipped bundle") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|e| e == "onnx") {
                let name = path.file_name().expect("name");
                std::os::unix::fs::symlink(&path, dir.path().join(name)).expect("link");
            }
        }
        let text = std::fs::read(shipped.join("bundle.toml")).expect("bundle.toml");
        std::fs::write(dir.path().join("bundle.toml"), apply(text, &edits)).expect("write");
        match Bundle::load(dir.path()) {
            Ok(b) => {
                prop_assert!(b.manifest.decision.threshold.is_finite());
                prop_assert!(!b.manifest.scales.is_empty());
            }
            Err(e) => {
                let msg = e.to_string();
                prop_assert!(msg.contains("bundle.toml") || msg.contains(".onnx"), "{msg}");
            }
        }
    }
}

/// Sends `request` and reads what comes back (up to 64 KiB or the server closing).
fn exchange(addr: std::net::SocketAddr, request: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    // The server may answer and close before it has read everything: a failed write is fine.
    let _ = s.write_all(request);
    let _ = s.shutdown(Shutdown::Write);
    let mut reply = Vec::new();
    let _ = Read::by_ref(&mut s).take(64 << 10).read_to_end(&mut reply);
    reply
}

fn request() -> impl Strategy<Value = Vec<u8>> {
    let method = prop_oneof![
        Just("GET".to_string()),
        Just("HEAD".to_string()),
        Just("POST".to_string()),
        Just("DELETE".to_string()),
        "[A-Z]{0,12}",
    ];
    let path = prop_oneof![
        Just("/healthz".to_string()),
        Just("/metrics".to_string()),
        Just("/status".to_string()),
        Just("/".to_string()),
        "/[ -~]{0,64}",
    ];
    let header = prop_oneof![
        Just("Content-Length: 99999999999".to_string()),
        Just("Content-Length: -1".to_string()),
        Just("Transfer-Encoding: chunked".to_string()),
        Just(format!("X-Long: {}", "a".repeat(9000))),
        "[ -~]{0,80}",
    ];
    (
        method,
        path,
        prop::collection::vec(header, 0..4),
        prop::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(|(m, p, headers, tail)| {
            let mut r = format!("{m} {p} HTTP/1.1\r\n").into_bytes();
            for h in headers {
                r.extend_from_slice(h.as_bytes());
                r.extend_from_slice(b"\r\n");
            }
            r.extend_from_slice(b"\r\n");
            r.extend(tail);
            r
        })
}

/// Whatever a client sends, the endpoint answers with a status line or closes, and still
/// serves `/healthz` to the next client.
#[test]
fn http_requests_never_take_the_endpoint_down() {
    let metrics = Arc::new(Metrics::new(Duration::from_secs(5)));
    let server =
        HttpServer::start("127.0.0.1:0".parse().expect("addr"), metrics).expect("start endpoint");
    let addr = server.local_addr();
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 64,
        ..ProptestConfig::default()
    });
    runner
        .run(
            &prop_oneof![request(), prop::collection::vec(any::<u8>(), 0..2048)],
            |req| {
                let reply = exchange(addr, &req);
                prop_assert!(
                    reply.is_empty() || reply.starts_with(b"HTTP/1.1 "),
                    "{:?}",
                    String::from_utf8_lossy(&reply[..reply.len().min(80)])
                );
                let health = exchange(addr, b"GET /healthz HTTP/1.1\r\n\r\n");
                prop_assert!(
                    health.starts_with(b"HTTP/1.1 "),
                    "endpoint down after {req:?}"
                );
                Ok(())
            },
        )
        .expect("every request");
}
