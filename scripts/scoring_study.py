#!/usr/bin/env python3
"""Scoring choices of one bundle on an MVTec-layout dataset, without retraining.

Runs the bundle's f32 teacher and students with ONNX Runtime on `--reference` good training
images and on every test image, keeps the students' residual `mean s_i - t` per cell, and
prints image AUROC for the pixel scores the trainer can write into a bundle:

- the paper's `e + v` and the error `e` alone (the variance weight, `score::Calibration`);
- `e` of the residual whitened by its covariance on the reference images (the Mahalanobis
  distance; `ustad::export::whitening`), with the trainer's shrinkage;
- image scores as the mean of the top fraction of the smoothed map (`[image_score]`), for each
  smoothing sigma of `--sigmas`.

For a bundle whose residual is already whitened (`whiten_residual` presets), the `e` column is
what the engine scores.

Maps are upsampled as the engine does (bilinear between samples at multiples of the stride).
The reference images are drawn at random from train/good, so about a fifth of them may be the
bundle's own fit images: the figures compare choices, they are not the bundle's evaluation
(that is `ustad eval`).

    pip install onnxruntime pillow numpy
    python3 scripts/scoring_study.py --bundle models/bundles/mtd-edge --data ../shared/data/mtd
"""

import argparse
import glob
import random
import tomllib

import numpy as np
import onnxruntime as ort
from PIL import Image

SHRINKAGE = 0.01  # train/src/whiten.rs


def residuals(bundle, paths, threads):
    manifest = tomllib.load(open(f"{bundle}/bundle.toml", "rb"))
    spec, scale = manifest["input"], manifest["scales"][0]
    mean = np.array(spec["mean"], np.float32)[:, None, None]
    std = np.array(spec["std"], np.float32)[:, None, None]
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    teacher = ort.InferenceSession(f"{bundle}/{scale['teacher']}", options)
    students = [ort.InferenceSession(f"{bundle}/{s}", options) for s in scale["students"]]
    rs, vs = [], []
    for i, path in enumerate(paths):
        image = Image.open(path).convert("RGB").resize((spec["width"], spec["height"]), Image.BILINEAR)
        x = ((np.asarray(image, np.float32).transpose(2, 0, 1) / 255 - mean) / std)[None]
        t = teacher.run(None, {teacher.get_inputs()[0].name: x})[0][0]
        s = np.stack([n.run(None, {n.get_inputs()[0].name: x})[0][0] for n in students])
        s_mean = s.mean(0)
        rs.append(s_mean - t)
        vs.append((s**2).sum(1).mean(0) - (s_mean**2).sum(0))
        if i % 100 == 0:
            print(f"  {i}/{len(paths)} images", flush=True)
    return np.stack(rs), np.stack(vs), scale["stride"]


def auroc(scores, labels):
    order = np.argsort(scores)
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    n1 = labels.sum()
    n0 = len(labels) - n1
    return (ranks[labels == 1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0)


def upsample_smooth(m, size, stride, sigma):
    h = m.shape[0]
    pos = np.arange(size) / stride
    lo = np.minimum(np.floor(pos).astype(int), h - 1)
    hi = np.minimum(lo + 1, h - 1)
    f = np.clip(pos - lo, 0, 1)
    m = m[lo] * (1 - f)[:, None] + m[hi] * f[:, None]
    m = m[:, lo] * (1 - f)[None] + m[:, hi] * f[None]
    k = np.arange(-int(3 * sigma + 0.5), int(3 * sigma + 0.5) + 1)
    g = np.exp(-(k**2) / (2 * sigma**2))
    g /= g.sum()
    m = np.pad(m, len(g) // 2, mode="edge")
    m = np.apply_along_axis(lambda r: np.convolve(r, g, "valid"), 1, m)
    return np.apply_along_axis(lambda r: np.convolve(r, g, "valid"), 0, m)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--reference", type=int, default=150, help="good training images")
    ap.add_argument("--size", type=int, default=128, help="the bundle's input side")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--sigmas",
        default="2",
        help="comma-separated smoothing sigmas (input pixels) to sweep, e.g. 1,2,4,8",
    )
    a = ap.parse_args()
    train = sorted(glob.glob(f"{a.data}/train/good/*"))
    random.Random(1).shuffle(train)
    test = sorted(glob.glob(f"{a.data}/test/*/*"))
    labels = np.array([0 if "/good/" in p else 1 for p in test])
    print("reference images")
    ref_r, ref_v, stride = residuals(a.bundle, train[: a.reference], a.threads)
    print("test images")
    test_r, test_v, _ = residuals(a.bundle, test, a.threads)
    channels = ref_r.shape[1]
    cov = np.cov(ref_r.transpose(0, 2, 3, 1).reshape(-1, channels).T)
    cov += SHRINKAGE * np.trace(cov) / channels * np.eye(channels)
    w, v = np.linalg.eigh(cov)
    whitening = v @ np.diag(w**-0.5) @ v.T

    def error(r, matrix=None):
        if matrix is not None:
            r = np.einsum("ij,njhw->nihw", matrix, r)
        return (r**2).sum(1)

    def image_auroc(ref_map, test_map, sigma, top, ref_var=None, test_var=None):
        s = (test_map - ref_map.mean()) / ref_map.std()
        if ref_var is not None:
            s = s + (test_var - ref_var.mean()) / ref_var.std()
        up = np.stack([upsample_smooth(m, a.size, stride, sigma).ravel() for m in s])
        up.sort(1)
        k = max(1, int(round(top * up.shape[1])))
        return auroc(up[:, -k:].mean(1), labels)

    plain = (error(ref_r), error(test_r))
    white = (error(ref_r, whitening), error(test_r, whitening))
    print(f"e + v, top 0.002:            {image_auroc(*plain, 2.0, 0.002, ref_v, test_v):.3f}")
    print(f"v alone, top 0.002:          {image_auroc(ref_v, test_v, 2.0, 0.002):.3f}")
    for sigma in (float(x) for x in a.sigmas.split(",")):
        for top in (0.002, 0.01, 0.05, 0.1, 0.2):
            print(
                f"sigma {sigma:<4} top {top:<5}: e {image_auroc(*plain, sigma, top):.3f}"
                f"  whitened e {image_auroc(*white, sigma, top):.3f}"
                f"  whitened e + v {image_auroc(*white, sigma, top, ref_v, test_v):.3f}"
            )


if __name__ == "__main__":
    main()
