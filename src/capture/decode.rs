//! Turning camera and file bytes into RGB images.
//!
//! Two camera quirks are handled here rather than in the sources, so that they are tested on
//! plain byte buffers:
//!
//! - **MJPEG frames without Huffman tables.** Many UVC webcams send "abbreviated" JPEGs: no DHT
//!   segment, because the AVI/MJPEG convention fixes the tables to the example tables of the
//!   JPEG standard (ITU-T T.81 Annex K.3). A normal decoder rejects or garbles such a frame;
//!   [`insert_standard_huffman_tables`] splices those tables in before the scan.
//! - **YUYV** (packed 4:2:2) is converted with `yuvutils-rs`, BT.601 limited range, which is
//!   what UVC cameras send.
//!
//! Decoding is *strict*: a truncated or corrupt frame is an error, never a half-grey image.
//! A grey-padded frame of a defective part could be judged "good"; an error lets the pipeline
//! apply the fail-safe policy instead.

use std::borrow::Cow;

use image::RgbImage;
use zune_jpeg::JpegDecoder;
use zune_jpeg::zune_core::bytestream::ZCursor;
use zune_jpeg::zune_core::colorspace::ColorSpace;
use zune_jpeg::zune_core::options::DecoderOptions;

/// Why bytes could not be turned into an image.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The JPEG structure (markers, segment lengths) is broken before the image data.
    #[error("malformed JPEG: {0}")]
    MalformedJpeg(String),
    /// The JPEG decoder refused the data (corrupt or truncated scan, unsupported feature).
    #[error("JPEG decoding failed: {0}")]
    Jpeg(String),
    /// The PNG (or other format handled by `image`) could not be decoded.
    #[error("image decoding failed: {0}")]
    Image(#[from] image::ImageError),
    /// The bytes are neither JPEG nor PNG.
    #[error("unrecognised image format (first bytes {0:02x?})")]
    UnknownFormat(Vec<u8>),
    /// A raw frame has the wrong size for its declared geometry.
    #[error("raw {format} frame of {width}x{height} needs {needed} bytes, got {got}")]
    RawSize {
        /// Pixel format name.
        format: &'static str,
        /// Declared width.
        width: u32,
        /// Declared height.
        height: u32,
        /// Bytes needed.
        needed: usize,
        /// Bytes present.
        got: usize,
    },
    /// The image declares more pixels than this reader decodes (a decompression bomb, or a
    /// frame far larger than any camera of the line sends). Refused before any allocation.
    #[error("image of {width}x{height} exceeds the limit of {max_pixels} pixels")]
    TooLarge {
        /// Declared width.
        width: u32,
        /// Declared height.
        height: u32,
        /// The limit.
        max_pixels: u64,
    },
    /// The colour conversion library refused the buffer.
    #[error("{format} conversion failed: {reason}")]
    Convert {
        /// Pixel format name.
        format: &'static str,
        /// Library message.
        reason: String,
    },
}

/// Code-length counts (16 entries) and symbols of one standard Huffman table.
struct HuffTable {
    /// Table class (0 = DC, 1 = AC) in the high nibble, id in the low nibble.
    class_id: u8,
    bits: [u8; 16],
    values: &'static [u8],
}

/// T.81 Table K.3: luminance DC.
const DC_LUMA: HuffTable = HuffTable {
    class_id: 0x00,
    bits: [0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0],
    values: &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11],
};

/// T.81 Table K.4: chrominance DC.
const DC_CHROMA: HuffTable = HuffTable {
    class_id: 0x01,
    bits: [0, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0],
    values: &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11],
};

/// T.81 Table K.5: luminance AC.
const AC_LUMA: HuffTable = HuffTable {
    class_id: 0x10,
    bits: [0, 2, 1, 3, 3, 2, 4, 3, 5, 5, 4, 4, 0, 0, 1, 0x7d],
    values: &[
        0x01, 0x02, 0x03, 0x00, 0x04, 0x11, 0x05, 0x12, 0x21, 0x31, 0x41, 0x06, 0x13, 0x51, 0x61,
        0x07, 0x22, 0x71, 0x14, 0x32, 0x81, 0x91, 0xA1, 0x08, 0x23, 0x42, 0xB1, 0xC1, 0x15, 0x52,
        0xD1, 0xF0, 0x24, 0x33, 0x62, 0x72, 0x82, 0x09, 0x0A, 0x16, 0x17, 0x18, 0x19, 0x1A, 0x25,
        0x26, 0x27, 0x28, 0x29, 0x2A, 0x34, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3A, 0x43, 0x44, 0x45,
        0x46, 0x47, 0x48, 0x49, 0x4A, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5A, 0x63, 0x64,
        0x65, 0x66, 0x67, 0x68, 0x69, 0x6A, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7A, 0x83,
        0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99,
        0x9A, 0xA2, 0xA3, 0xA4, 0xA5, 0xA6, 0xA7, 0xA8, 0xA9, 0xAA, 0xB2, 0xB3, 0xB4, 0xB5, 0xB6,
        0xB7, 0xB8, 0xB9, 0xBA, 0xC2, 0xC3, 0xC4, 0xC5, 0xC6, 0xC7, 0xC8, 0xC9, 0xCA, 0xD2, 0xD3,
        0xD4, 0xD5, 0xD6, 0xD7, 0xD8, 0xD9, 0xDA, 0xE1, 0xE2, 0xE3, 0xE4, 0xE5, 0xE6, 0xE7, 0xE8,
        0xE9, 0xEA, 0xF1, 0xF2, 0xF3, 0xF4, 0xF5, 0xF6, 0xF7, 0xF8, 0xF9, 0xFA,
    ],
};

/// T.81 Table K.6: chrominance AC.
const AC_CHROMA: HuffTable = HuffTable {
    class_id: 0x11,
    bits: [0, 2, 1, 2, 4, 4, 3, 4, 7, 5, 4, 4, 0, 1, 2, 0x77],
    values: &[
        0x00, 0x01, 0x02, 0x03, 0x11, 0x04, 0x05, 0x21, 0x31, 0x06, 0x12, 0x41, 0x51, 0x07, 0x61,
        0x71, 0x13, 0x22, 0x32, 0x81, 0x08, 0x14, 0x42, 0x91, 0xA1, 0xB1, 0xC1, 0x09, 0x23, 0x33,
        0x52, 0xF0, 0x15, 0x62, 0x72, 0xD1, 0x0A, 0x16, 0x24, 0x34, 0xE1, 0x25, 0xF1, 0x17, 0x18,
        0x19, 0x1A, 0x26, 0x27, 0x28, 0x29, 0x2A, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3A, 0x43, 0x44,
        0x45, 0x46, 0x47, 0x48, 0x49, 0x4A, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5A, 0x63,
        0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6A, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7A,
        0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97,
        0x98, 0x99, 0x9A, 0xA2, 0xA3, 0xA4, 0xA5, 0xA6, 0xA7, 0xA8, 0xA9, 0xAA, 0xB2, 0xB3, 0xB4,
        0xB5, 0xB6, 0xB7, 0xB8, 0xB9, 0xBA, 0xC2, 0xC3, 0xC4, 0xC5, 0xC6, 0xC7, 0xC8, 0xC9, 0xCA,
        0xD2, 0xD3, 0xD4, 0xD5, 0xD6, 0xD7, 0xD8, 0xD9, 0xDA, 0xE2, 0xE3, 0xE4, 0xE5, 0xE6, 0xE7,
        0xE8, 0xE9, 0xEA, 0xF2, 0xF3, 0xF4, 0xF5, 0xF6, 0xF7, 0xF8, 0xF9, 0xFA,
    ],
};

const STANDARD_TABLES: [&HuffTable; 4] = [&DC_LUMA, &AC_LUMA, &DC_CHROMA, &AC_CHROMA];

/// The DHT segment (marker included) holding the four standard tables of T.81 Annex K.3.
pub fn standard_dht_segment() -> Vec<u8> {
    let payload: usize = STANDARD_TABLES
        .iter()
        .map(|t| 1 + 16 + t.values.len())
        .sum();
    let len = payload + 2; // the length field counts itself
    let mut seg = Vec::with_capacity(len + 2);
    seg.extend_from_slice(&[0xFF, 0xC4]);
    // 2 + 4 * 17 + 12 + 162 + 12 + 162 = 418: fits in u16 by construction.
    seg.extend_from_slice(&(len as u16).to_be_bytes());
    for t in STANDARD_TABLES {
        seg.push(t.class_id);
        seg.extend_from_slice(&t.bits);
        seg.extend_from_slice(t.values);
    }
    seg
}

/// One marker segment before the scan: marker byte and its position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Segment {
    pub marker: u8,
    /// Offset of the 0xFF that starts the marker.
    pub start: usize,
    /// Offset one past the segment's payload.
    pub end: usize,
}

/// Walks the header segments of a JPEG up to and including SOS.
pub(crate) fn header_segments(data: &[u8]) -> Result<Vec<Segment>, DecodeError> {
    if data.len() < 4 || data[0] != 0xFF || data[1] != 0xD8 {
        return Err(DecodeError::MalformedJpeg(
            "no SOI marker at the start".into(),
        ));
    }
    let mut segments = Vec::new();
    let mut pos = 2;
    loop {
        // Markers may be preceded by any number of 0xFF fill bytes.
        let start = pos;
        if data.get(pos) != Some(&0xFF) {
            return Err(DecodeError::MalformedJpeg(format!(
                "expected a marker at byte {pos}"
            )));
        }
        while data.get(pos) == Some(&0xFF) {
            pos += 1;
        }
        let Some(&marker) = data.get(pos) else {
            return Err(DecodeError::MalformedJpeg(
                "data ends before the scan (SOS)".into(),
            ));
        };
        pos += 1;
        match marker {
            // Standalone markers: no length field.
            0x01 | 0xD0..=0xD7 => {
                segments.push(Segment {
                    marker,
                    start,
                    end: pos,
                });
            }
            0xD9 => {
                return Err(DecodeError::MalformedJpeg(
                    "EOI before any scan (SOS)".into(),
                ));
            }
            _ => {
                let len = match (data.get(pos), data.get(pos + 1)) {
                    (Some(&hi), Some(&lo)) => usize::from(u16::from_be_bytes([hi, lo])),
                    _ => {
                        return Err(DecodeError::MalformedJpeg(format!(
                            "segment 0x{marker:02X} at byte {start} is cut off"
                        )));
                    }
                };
                if len < 2 || pos + len > data.len() {
                    return Err(DecodeError::MalformedJpeg(format!(
                        "segment 0x{marker:02X} at byte {start} has a bad length {len}"
                    )));
                }
                pos += len;
                segments.push(Segment {
                    marker,
                    start,
                    end: pos,
                });
                if marker == 0xDA {
                    return Ok(segments);
                }
            }
        }
    }
}

/// Whether the JPEG defines any Huffman table before its (first) scan.
pub fn has_huffman_tables(data: &[u8]) -> Result<bool, DecodeError> {
    Ok(header_segments(data)?.iter().any(|s| s.marker == 0xC4))
}

/// Returns `data` unchanged when it has Huffman tables, else a copy with the standard tables
/// (T.81 Annex K.3) spliced in right before the scan. This is what the MJPEG convention means
/// by a frame without tables, so the result decodes the way the camera intended.
pub fn insert_standard_huffman_tables(data: &[u8]) -> Result<Cow<'_, [u8]>, DecodeError> {
    let segments = header_segments(data)?;
    if segments.iter().any(|s| s.marker == 0xC4) {
        return Ok(Cow::Borrowed(data));
    }
    // header_segments only returns Ok once it has seen SOS, which is the last segment.
    let sos = segments
        .last()
        .map(|s| s.start)
        .ok_or_else(|| DecodeError::MalformedJpeg("no scan".into()))?;
    let dht = standard_dht_segment();
    let mut out = Vec::with_capacity(data.len() + dht.len());
    out.extend_from_slice(&data[..sos]);
    out.extend_from_slice(&dht);
    out.extend_from_slice(&data[sos..]);
    Ok(Cow::Owned(out))
}

/// Largest image [`decode_image`] and [`decode_jpeg`] decode, in pixels: 4096 × 4096, beyond
/// any camera these lines use. Decoding such an image peaks at about 8 bytes per pixel (a
/// 16-bit RGBA PNG, then its RGB copy): under 200 MB, which a 1 GB Raspberry Pi survives.
pub const DEFAULT_MAX_PIXELS: u64 = 4096 * 4096;

fn check_pixels(width: u32, height: u32, max_pixels: u64) -> Result<(), DecodeError> {
    if u64::from(width) * u64::from(height) > max_pixels || width == 0 || height == 0 {
        return Err(DecodeError::TooLarge {
            width,
            height,
            max_pixels,
        });
    }
    Ok(())
}

/// Width and height a PNG declares in its IHDR chunk.
fn png_dimensions(data: &[u8]) -> Result<(u32, u32), DecodeError> {
    // Signature (8), IHDR length (4), "IHDR" (4), width (4), height (4).
    if data.len() < 24 || &data[12..16] != b"IHDR" {
        return Err(DecodeError::Image(image::ImageError::Decoding(
            image::error::DecodingError::new(
                image::ImageFormat::Png.into(),
                "no IHDR chunk at the start",
            ),
        )));
    }
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    Ok((be(&data[16..20]), be(&data[20..24])))
}

/// Decodes a JPEG (file or MJPEG frame) to RGB, strictly: truncated or corrupt data is an
/// error. Frames without Huffman tables get the standard ones. Greyscale JPEGs come out as
/// RGB with equal channels. Larger than [`DEFAULT_MAX_PIXELS`] is refused.
pub fn decode_jpeg(data: &[u8]) -> Result<RgbImage, DecodeError> {
    decode_jpeg_within(data, DEFAULT_MAX_PIXELS)
}

/// [`decode_jpeg`] with an explicit pixel limit, checked on the header before decoding.
pub fn decode_jpeg_within(data: &[u8], max_pixels: u64) -> Result<RgbImage, DecodeError> {
    let data = insert_standard_huffman_tables(data)?;
    let options = DecoderOptions::default()
        .set_strict_mode(true)
        .jpeg_set_out_colorspace(ColorSpace::RGB);
    let mut decoder = JpegDecoder::new_with_options(ZCursor::new(data.as_ref()), options);
    decoder
        .decode_headers()
        .map_err(|e| DecodeError::Jpeg(e.to_string()))?;
    let (w, h) = decoder
        .dimensions()
        .ok_or_else(|| DecodeError::Jpeg("no frame header".into()))?;
    check_pixels(w as u32, h as u32, max_pixels)?;
    let pixels = decoder
        .decode()
        .map_err(|e| DecodeError::Jpeg(e.to_string()))?;
    let info = decoder
        .info()
        .ok_or_else(|| DecodeError::Jpeg("decoder returned no image information".into()))?;
    let (w, h) = (u32::from(info.width), u32::from(info.height));
    let channels = decoder
        .output_colorspace()
        .map_or(3, |c| c.num_components());
    let rgb = match channels {
        3 => pixels,
        // Some zune versions keep luma output for greyscale files; expand it.
        1 => pixels.iter().flat_map(|&v| [v, v, v]).collect(),
        n => {
            return Err(DecodeError::Jpeg(format!(
                "unexpected {n}-channel decoder output"
            )));
        }
    };
    RgbImage::from_raw(w, h, rgb)
        .ok_or_else(|| DecodeError::Jpeg(format!("decoder output does not fit {w}x{h} RGB")))
}

/// Decodes an image file's bytes (JPEG or PNG, recognised by content) to RGB, strictly, up to
/// [`DEFAULT_MAX_PIXELS`].
pub fn decode_image(data: &[u8]) -> Result<RgbImage, DecodeError> {
    decode_image_within(data, DEFAULT_MAX_PIXELS)
}

/// [`decode_image`] with an explicit pixel limit, checked on the header before any pixel
/// buffer is allocated. The one decoding path of replay, `score` and `eval`.
pub fn decode_image_within(data: &[u8], max_pixels: u64) -> Result<RgbImage, DecodeError> {
    if data.starts_with(&[0xFF, 0xD8]) {
        decode_jpeg_within(data, max_pixels)
    } else if data.starts_with(b"\x89PNG\r\n\x1a\n") {
        let (w, h) = png_dimensions(data)?;
        check_pixels(w, h, max_pixels)?;
        Ok(image::load_from_memory_with_format(data, image::ImageFormat::Png)?.into_rgb8())
    } else {
        Err(DecodeError::UnknownFormat(
            data.iter().take(8).copied().collect(),
        ))
    }
}

/// Largest image file [`read_image_file`] reads: a 4096² 16-bit PNG stored uncompressed is
/// about 128 MiB; real frames are a few MB.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 128 << 20;

/// The largest file worth reading for an image of at most `max_pixels`: 8 bytes per pixel (an
/// uncompressed 16-bit RGBA PNG) plus 1 MiB of headers and metadata, and never less than
/// [`DEFAULT_MAX_FILE_BYTES`] (so a lower pixel limit never refuses a real frame's file).
pub fn max_file_bytes(max_pixels: u64) -> u64 {
    max_pixels
        .saturating_mul(8)
        .saturating_add(1 << 20)
        .max(DEFAULT_MAX_FILE_BYTES)
}

/// Reads an image file, refusing what is not a regular file (a FIFO would block, a link to
/// `/dev/zero` would never end) and files over `max_bytes`, without reading past the limit.
pub fn read_image_file(path: &std::path::Path, max_bytes: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    if meta.len() > max_bytes {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{} bytes, over the limit of {max_bytes}", meta.len()),
        ));
    }
    let mut data = Vec::with_capacity(meta.len() as usize);
    std::fs::File::open(path)?
        .take(max_bytes + 1)
        .read_to_end(&mut data)?;
    if data.len() as u64 > max_bytes {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("grew past the limit of {max_bytes} bytes while reading"),
        ));
    }
    Ok(data)
}

/// Why an image file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ImageFileError {
    /// Not readable, not a regular file, or over the size limit.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Read, but not a decodable image within the limits.
    #[error("{path}: {source}")]
    Decode {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: DecodeError,
    },
}

/// Reads and decodes an image file exactly as the daemon's replay source does (bounded read,
/// strict decoder, pixel limit): `ustad score` and `ustad eval` judge what the line would.
pub fn load_image_file(path: &std::path::Path) -> Result<image::DynamicImage, ImageFileError> {
    load_image_file_within(path, DEFAULT_MAX_PIXELS)
}

/// [`load_image_file`] with an explicit pixel limit (`camera.max_pixels`, `--max-pixels`).
/// The file-size limit follows it: [`max_file_bytes`].
pub fn load_image_file_within(
    path: &std::path::Path,
    max_pixels: u64,
) -> Result<image::DynamicImage, ImageFileError> {
    let bytes = read_image_file(path, max_file_bytes(max_pixels)).map_err(|source| {
        ImageFileError::Read {
            path: path.to_path_buf(),
            source,
        }
    })?;
    decode_image_within(&bytes, max_pixels)
        .map(image::DynamicImage::ImageRgb8)
        .map_err(|source| ImageFileError::Decode {
            path: path.to_path_buf(),
            source,
        })
}

/// Converts a packed YUYV (YUY2, 4:2:2) frame to RGB with BT.601 limited-range coefficients.
///
/// `stride` is the length of one row in bytes (V4L2 `bytesperline`, at least `2 * width`);
/// `data` may be longer than needed (drivers round buffers up) but not shorter.
pub fn yuyv_to_rgb(
    data: &[u8],
    width: u32,
    height: u32,
    stride: u32,
) -> Result<RgbImage, DecodeError> {
    let size_error = |needed: usize| DecodeError::RawSize {
        format: "YUYV",
        width,
        height,
        needed,
        got: data.len(),
    };
    if width == 0
        || height == 0
        || !width.is_multiple_of(2)
        || u64::from(stride) < u64::from(width) * 2
    {
        return Err(DecodeError::Convert {
            format: "YUYV",
            reason: format!(
                "bad geometry {width}x{height}, stride {stride} (width must be even and > 0)"
            ),
        });
    }
    let needed = stride as usize * (height as usize - 1) + width as usize * 2;
    if data.len() < needed {
        return Err(size_error(needed));
    }
    // yuvutils-rs 0.8 checks the buffer length against `2 * width * height` whatever the
    // stride, so rows padded by the driver are packed into a tight copy first (rare: most
    // UVC cameras deliver unpadded YUYV, which is converted in place).
    let row = width as usize * 2;
    let src: Cow<'_, [u8]> = if stride as usize == row {
        Cow::Borrowed(&data[..row * height as usize])
    } else {
        let mut tight = Vec::with_capacity(row * height as usize);
        for r in 0..height as usize {
            let start = r * stride as usize;
            tight.extend_from_slice(&data[start..start + row]);
        }
        Cow::Owned(tight)
    };
    let packed = yuvutils_rs::YuvPackedImage {
        yuy: src.as_ref(),
        yuy_stride: width * 2,
        width,
        height,
    };
    let mut rgb = vec![0u8; width as usize * height as usize * 3];
    yuvutils_rs::yuyv422_to_rgb(
        &packed,
        &mut rgb,
        width * 3,
        yuvutils_rs::YuvRange::Limited,
        yuvutils_rs::YuvStandardMatrix::Bt601,
    )
    .map_err(|e| DecodeError::Convert {
        format: "YUYV",
        reason: e.to_string(),
    })?;
    RgbImage::from_raw(width, height, rgb).ok_or_else(|| size_error(needed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn mtd_jpeg() -> PathBuf {
        ustad_core::testing::shared_path("data/mtd/test/good/exp0_num_743.jpg")
    }

    /// Removes every DHT segment before the scan, as an abbreviated MJPEG frame would have it.
    fn strip_dht(data: &[u8]) -> Vec<u8> {
        let segments = header_segments(data).expect("valid JPEG");
        let mut out = data[..2].to_vec();
        let mut pos = 2;
        for s in segments {
            if s.marker != 0xC4 {
                out.extend_from_slice(&data[s.start..s.end]);
            }
            pos = s.end;
        }
        out.extend_from_slice(&data[pos..]);
        out
    }

    /// The tables of all DHT segments, as (class_id, bits, values).
    fn dht_tables(data: &[u8]) -> Vec<(u8, Vec<u8>, Vec<u8>)> {
        let mut tables = Vec::new();
        for s in header_segments(data).expect("valid JPEG") {
            if s.marker != 0xC4 {
                continue;
            }
            let mut p = &data[s.start + 4..s.end];
            while !p.is_empty() {
                let class_id = p[0];
                let bits = p[1..17].to_vec();
                let n: usize = bits.iter().map(|&b| usize::from(b)).sum();
                tables.push((class_id, bits, p[17..17 + n].to_vec()));
                p = &p[17 + n..];
            }
        }
        tables
    }

    fn is_standard(t: &(u8, Vec<u8>, Vec<u8>)) -> bool {
        STANDARD_TABLES
            .iter()
            .any(|s| s.class_id == t.0 && s.bits[..] == t.1[..] && s.values == &t.2[..])
    }

    #[test]
    fn standard_tables_are_consistent() {
        for t in STANDARD_TABLES {
            let n: usize = t.bits.iter().map(|&b| usize::from(b)).sum();
            assert_eq!(n, t.values.len(), "table {:02x}", t.class_id);
        }
        let seg = standard_dht_segment();
        assert_eq!(seg.len(), 2 + 418);
        assert_eq!(u16::from_be_bytes([seg[2], seg[3]]), 418);
    }

    #[test]
    fn mtd_jpeg_without_dht_decodes_after_fixup() {
        let data = std::fs::read(mtd_jpeg()).expect("MTD sample (../shared/data/mtd)");
        // The fix-up is only right for frames encoded with the standard tables: check first.
        let tables = dht_tables(&data);
        assert!(!tables.is_empty());
        assert!(
            tables.iter().all(is_standard),
            "MTD uses non-standard tables"
        );

        let reference = decode_jpeg(&data).expect("original decodes");
        let stripped = strip_dht(&data);
        assert!(!has_huffman_tables(&stripped).expect("parse"));

        // Without the fix-up a strict decoder must refuse the frame ...
        let options = DecoderOptions::default().set_strict_mode(true);
        let mut raw = JpegDecoder::new_with_options(ZCursor::new(&stripped[..]), options);
        assert!(
            raw.decode().is_err(),
            "a frame without tables should not decode as is"
        );

        // ... and with it, the frame is pixel-identical to the original.
        let fixed = insert_standard_huffman_tables(&stripped).expect("fix-up");
        assert!(matches!(fixed, Cow::Owned(_)));
        assert!(has_huffman_tables(&fixed).expect("parse"));
        let decoded = decode_jpeg(&stripped).expect("stripped frame decodes");
        assert_eq!(decoded.dimensions(), reference.dimensions());
        assert!(decoded.as_raw() == reference.as_raw(), "pixels differ");

        // Greyscale source: equal channels, matching the image crate's own decoder.
        let via_image = image::load_from_memory(&data)
            .expect("image crate")
            .into_rgb8();
        assert_eq!(via_image.dimensions(), reference.dimensions());
        let max_diff = via_image
            .as_raw()
            .iter()
            .zip(reference.as_raw())
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap_or(0);
        assert!(max_diff <= 1, "differs from image crate by {max_diff}");
    }

    #[test]
    fn colour_jpeg_without_dht_decodes_after_fixup() {
        // A colour frame exercises the chrominance tables as well.
        let img = RgbImage::from_fn(64, 48, |x, y| {
            image::Rgb([(x * 4) as u8, (y * 5) as u8, ((x + y) * 2) as u8])
        });
        let mut data = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut data, 90)
            .encode_image(&img)
            .expect("encode");
        let tables = dht_tables(&data);
        assert!(tables.iter().any(|t| t.0 == 0x11), "no chroma table");
        assert!(
            tables.iter().all(is_standard),
            "encoder uses non-standard tables"
        );

        let reference = decode_jpeg(&data).expect("original decodes");
        let stripped = strip_dht(&data);
        let decoded = decode_jpeg(&stripped).expect("stripped frame decodes");
        assert!(decoded.as_raw() == reference.as_raw(), "pixels differ");
        // And it is the picture we encoded (lossy, so roughly).
        let mean_err: f64 = decoded
            .as_raw()
            .iter()
            .zip(img.as_raw())
            .map(|(a, b)| f64::from(a.abs_diff(*b)))
            .sum::<f64>()
            / img.as_raw().len() as f64;
        assert!(mean_err < 4.0, "mean error {mean_err}");
    }

    #[test]
    fn frame_with_tables_is_left_alone() {
        let data = std::fs::read(mtd_jpeg()).expect("MTD sample");
        assert!(matches!(
            insert_standard_huffman_tables(&data).expect("parse"),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn truncated_jpeg_is_an_error_not_a_grey_image() {
        let data = std::fs::read(mtd_jpeg()).expect("MTD sample");
        for cut in [data.len() / 2, data.len() - 200, 300, 10] {
            let e = decode_jpeg(&data[..cut]);
            assert!(e.is_err(), "cut at {cut} of {} decoded", data.len());
        }
    }

    #[test]
    fn bombs_are_refused_from_the_header() {
        // A large greyscale PNG of zeros compresses to a few hundred KB (a 20000² one decoded to
        // 1.6 GB before this check); 8192² keeps the test quick under qemu.
        let mut png = Vec::new();
        {
            let mut encoder = png::Encoder::new(&mut png, 8192, 8192);
            encoder.set_color(png::ColorType::Grayscale);
            encoder.set_depth(png::BitDepth::Eight);
            let mut writer = encoder.write_header().expect("header");
            let mut stream = writer.stream_writer().expect("stream");
            let row = vec![0u8; 8192];
            for _ in 0..8192 {
                std::io::Write::write_all(&mut stream, &row).expect("row");
            }
            stream.finish().expect("finish");
        }
        assert!(
            png.len() < 4 << 20,
            "the bomb is small: {} bytes",
            png.len()
        );
        match decode_image(&png) {
            Err(DecodeError::TooLarge { width, height, .. }) => {
                assert_eq!((width, height), (8192, 8192))
            }
            other => panic!("expected TooLarge, got {:?}", other.map(|i| i.dimensions())),
        }
        // A real JPEG over an explicit limit is refused the same way.
        let jpeg = std::fs::read(mtd_jpeg()).expect("MTD sample");
        let decoded = decode_image(&jpeg).expect("decodes under the default");
        let limit = u64::from(decoded.width()) * u64::from(decoded.height()) - 1;
        assert!(matches!(
            decode_image_within(&jpeg, limit),
            Err(DecodeError::TooLarge { .. })
        ));
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn special_and_oversized_files_are_not_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let big = dir.path().join("big.png");
        std::fs::write(&big, vec![0u8; 4096]).expect("write");
        assert!(read_image_file(&big, 1024).is_err());
        assert_eq!(
            read_image_file(&big, 4096).expect("at the limit").len(),
            4096
        );
        let zero = dir.path().join("zero.png");
        std::os::unix::fs::symlink("/dev/zero", &zero).expect("link");
        let e = read_image_file(&zero, 1 << 20).expect_err("a device is refused");
        assert!(e.to_string().contains("not a regular file"), "{e}");
        let fifo = dir.path().join("fifo.png");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).expect("path");
        // SAFETY: mkfifo with a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // Would block forever if opened; refused from its metadata.
        assert!(read_image_file(&fifo, 1 << 20).is_err());
    }

    #[test]
    fn garbage_is_refused() {
        assert!(matches!(
            decode_image(b"hello world"),
            Err(DecodeError::UnknownFormat(_))
        ));
        assert!(decode_jpeg(&[0xFF, 0xD8, 0xFF, 0xD9]).is_err());
    }

    /// BT.601 limited range, computed directly from the standard's equations.
    fn bt601(y: u8, u: u8, v: u8) -> [u8; 3] {
        let y = (f64::from(y) - 16.0) * 255.0 / 219.0;
        let cb = (f64::from(u) - 128.0) * 255.0 / 224.0;
        let cr = (f64::from(v) - 128.0) * 255.0 / 224.0;
        let (kr, kb) = (0.299, 0.114);
        let kg = 1.0 - kr - kb;
        let r = y + 2.0 * (1.0 - kr) * cr;
        let b = y + 2.0 * (1.0 - kb) * cb;
        let g = (y - kr * r - kb * b) / kg;
        [r, g, b].map(|c| c.round().clamp(0.0, 255.0) as u8)
    }

    #[test]
    fn yuyv_matches_direct_bt601() {
        let (w, h) = (8u32, 3u32);
        let stride = w * 2 + 4; // padded rows, as drivers do
        let mut data = vec![0u8; (stride * h) as usize];
        let mut expected = Vec::new();
        for row in 0..h {
            for pair in 0..w / 2 {
                let i = (row * stride + pair * 4) as usize;
                let y0 = (16 + row * 70 + pair * 20).min(235) as u8;
                let y1 = (30 + row * 60 + pair * 25).min(235) as u8;
                let u = (40 + pair * 50) as u8;
                let v = (220 - row * 60 - pair * 10) as u8;
                data[i..i + 4].copy_from_slice(&[y0, u, y1, v]);
                expected.extend_from_slice(&bt601(y0, u, v));
                expected.extend_from_slice(&bt601(y1, u, v));
            }
        }
        let rgb = yuyv_to_rgb(&data, w, h, stride).expect("convert");
        assert_eq!(rgb.dimensions(), (w, h));
        for (i, (a, b)) in rgb.as_raw().iter().zip(&expected).enumerate() {
            assert!(
                a.abs_diff(*b) <= 2,
                "sample {i} (pixel {}, channel {}): got {a}, BT.601 gives {b}",
                i / 3,
                i % 3
            );
        }
    }

    #[test]
    fn yuyv_size_errors() {
        assert!(matches!(
            yuyv_to_rgb(&[0; 10], 4, 2, 8),
            Err(DecodeError::RawSize { needed: 16, .. })
        ));
        assert!(yuyv_to_rgb(&[0; 12], 3, 2, 6).is_err());
    }
}
