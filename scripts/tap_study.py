#!/usr/bin/env python3
"""Which backbone taps, and which of their principal components, carry a dataset's defects.

No training: a Gaussian (one mean and covariance over every location of good training images,
as the whitening of a bundle's residual is) of the frozen backbone's features, scored on the
test split. Each tap is averaged over its 3×3 neighbourhood and resampled bilinearly onto the
first tap's grid, as `ustad_core::bundle::onnx::features` does for a backbone teacher. The
features are standardised per channel and projected onto principal components of the good
images: `--components all` keeps every channel, `leading` / `trailing` the `--keep`
largest- / smallest-variance components, as a preset's `teacher_components` does. Maps are
upsampled to half the image size, smoothed (sigma 2) and scored by the mean of their top 5 %.

Two choices of the issue's aspect-ratio and localisation questions: `--fit letterbox` keeps a
tile's aspect ratio (longest side to `--size`, the rest filled by mirroring the tile) instead of
squashing it, and maps are cut back to the tile; `--map-background median` (or `q25`)
subtracts each map's own median (or lower quartile) before the pixel metrics, so a map raised
everywhere on a defective tile no longer counts as false positives (image scores keep the raw
map). The line `normal pixels flagged` says how much each kind's defect-free pixels are raised:
the share of them above the threshold that flags 30 % of all defect-free pixels. The last line,
`defect regions covered`, is each kind's share of the PRO curve: the mean fraction of its
defect regions' pixels above the thresholds that flag 10 % and 30 % of all defect-free pixels.

Prints image AUROC, pixel AUROC, AU-PRO up to FPR 0.3, escapes at the score that passes 98 %
of the test good parts (an oracle threshold, for comparing choices only) and image AUROC per
defect. The figures compare tap choices; a bundle's own evaluation is `ustad eval`.

    pip install onnx onnxruntime pillow numpy scipy scikit-learn
    python3 scripts/tap_study.py --data ../shared/data/mtd --nodes res4,res10,res12 --components trailing
"""

import argparse
import glob
import time

import numpy as np
import onnx
import onnxruntime as ort
from PIL import Image
from scipy import ndimage
from sklearn.metrics import roc_auc_score

SHRINKAGE = 0.01  # train/src/whiten.rs


def backbone_session(path, nodes):
    model = onnx.load(path)
    for node in nodes:
        model.graph.output.append(onnx.helper.make_tensor_value_info(node, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options)


def fitted(path, size, fit):
    """The tile as a `size`² array, and the part of it that is the tile (width, height)."""
    image = Image.open(path).convert("RGB")
    if fit == "squash":
        return np.asarray(image.resize((size, size), Image.BILINEAR), np.float32), (size, size)
    scale = size / max(image.size)
    w, h = (max(1, round(side * scale)) for side in image.size)
    a = np.asarray(image.resize((w, h), Image.BILINEAR), np.float32)
    while a.shape[0] < size or a.shape[1] < size:
        grow = (min(size - a.shape[0], a.shape[0]), min(size - a.shape[1], a.shape[1]))
        a = np.pad(a, ((0, grow[0]), (0, grow[1]), (0, 0)), mode="symmetric")
    return a, (w, h)


def features(session, nodes, path, size, fit="squash"):
    image, valid = fitted(path, size, fit)
    x = ((image - 127.5) / 128).transpose(2, 0, 1)[None]
    maps = [ndimage.uniform_filter(m[0], (1, 3, 3), mode="nearest") for m in session.run(nodes, {"input": x})]
    grid = np.array(maps[0].shape[1:])
    resampled = [maps[0]]
    for m in maps[1:]:
        zoom = grid / np.array(m.shape[1:])
        resampled.append(ndimage.zoom(m, (1, zoom[0], zoom[1]), order=1, grid_mode=True, mode="nearest"))
    f = np.concatenate(resampled, 0)
    return f.reshape(f.shape[0], -1).T, tuple(grid), valid


def projection(x, components, keep):
    mean, std = x.mean(0), x.std(0) + 1e-6
    z = (x - mean) / std
    values, vectors = np.linalg.eigh(np.cov(z, rowvar=False))
    vectors = vectors[:, ::-1]  # largest variance first
    if components == "leading":
        vectors = vectors[:, :keep]
    elif components == "trailing":
        vectors = vectors[:, -keep:]
    return lambda f: ((f - mean) / std) @ vectors


def au_pro(maps, masks, fpr_limit=0.3, steps=60):
    negatives = np.concatenate([m[k == 0] for m, k in zip(maps, masks)])
    regions = []
    for m, k in zip(maps, masks):
        labels, n = ndimage.label(k)
        regions += [m[labels == i] for i in range(1, n + 1)]
    fprs, pros = [], []
    for t in np.quantile(negatives, np.linspace(1, 1 - fpr_limit, steps)):
        fprs.append((negatives > t).mean())
        pros.append(np.mean([(r > t).mean() for r in regions]))
    return np.trapezoid(pros, fprs) / fpr_limit


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--backbone", default="../shared/models/efficientnet_lite0_imagenet.onnx")
    parser.add_argument("--nodes", default="res4,res10")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--components", choices=["all", "leading", "trailing"], default="all")
    parser.add_argument("--keep", type=int, default=128)
    parser.add_argument("--train-images", type=int, default=300)
    parser.add_argument("--fit", choices=["squash", "letterbox"], default="squash")
    parser.add_argument("--map-background", choices=["none", "median", "q25"], default="none")
    args = parser.parse_args()
    started = time.time()
    nodes = args.nodes.split(",")
    session = backbone_session(args.backbone, nodes)

    train = sorted(glob.glob(f"{args.data}/train/good/*"))
    train = train[:: max(1, len(train) // args.train_images)]
    x = np.concatenate([features(session, nodes, p, args.size, args.fit)[0] for p in train])
    project = projection(x, args.components, args.keep)
    y = project(x)
    mean = y.mean(0)
    covariance = np.cov(y - mean, rowvar=False)
    covariance += SHRINKAGE * np.trace(covariance) / len(covariance) * np.eye(len(covariance))
    precision = np.linalg.inv(covariance)

    scores, defective, kinds, maps, masks = [], [], [], [], []
    for path in sorted(glob.glob(f"{args.data}/test/*/*")):
        f, grid, (vw, vh) = features(session, nodes, path, args.size, args.fit)
        d = project(f) - mean
        cell = np.sqrt(np.einsum("ij,jk,ik->i", d, precision, d)).reshape(grid)
        # The cells that cover the tile (all of them unless letterboxed).
        cell = cell[: max(1, round(grid[0] * vh / args.size)), : max(1, round(grid[1] * vw / args.size))]
        w, h = Image.open(path).size
        full = np.asarray(Image.fromarray(cell.astype(np.float32)).resize((w // 2, h // 2), Image.BILINEAR))
        full = ndimage.gaussian_filter(full, 2)
        top = max(1, int(0.05 * full.size))
        scores.append(np.sort(full.ravel())[-top:].mean())
        kind = path.split("/")[-2]
        kinds.append(kind)
        defective.append(kind != "good")
        if kind == "good":
            mask = np.zeros(full.shape, bool)
        else:
            stem = path.split("/")[-1].rsplit(".", 1)[0]
            mask_image = Image.open(f"{args.data}/ground_truth/{kind}/{stem}_mask.png").convert("L")
            mask = np.asarray(mask_image.resize((w // 2, h // 2), Image.NEAREST)) > 127
        if args.map_background != "none":
            full = full - np.quantile(full, 0.5 if args.map_background == "median" else 0.25)
        maps.append(full)
        masks.append(mask)

    scores, defective, kinds = np.array(scores), np.array(defective), np.array(kinds)
    good = np.sort(scores[~defective])
    escapes = (scores[defective] <= good[int(0.98 * len(good))]).mean()
    pixel = roc_auc_score(np.concatenate([k.ravel() for k in masks]), np.concatenate([m.ravel() for m in maps]))
    per_defect = []
    for kind in sorted(set(kinds) - {"good"}):
        pick = (kinds == "good") | (kinds == kind)
        per_defect.append(f"{kind} {roc_auc_score(defective[pick], scores[pick]):.2f}")
    print(
        f"nodes {args.nodes} size {args.size} components {args.components}"
        f"{'' if args.components == 'all' else ' ' + str(args.keep)} fit {args.fit}"
        f"{'' if args.map_background == 'none' else ' map minus ' + args.map_background}: "
        f"image AUROC {roc_auc_score(defective, scores):.3f} pixel AUROC {pixel:.3f} "
        f"AU-PRO {au_pro(maps, masks):.3f} escapes@2%FRR {escapes:.2f} | {', '.join(per_defect)} "
        f"({time.time() - started:.0f} s)"
    )
    cut = np.quantile(np.concatenate([m[~k] for m, k in zip(maps, masks)]), 0.7)
    flagged = []
    for kind in sorted(set(kinds)):
        share = [(m[~k] > cut).mean() for m, k, c in zip(maps, masks, kinds) if c == kind]
        flagged.append(f"{kind} {np.mean(share):.2f}")
    print(f"  normal pixels flagged at FPR 0.3: {', '.join(flagged)}")
    cuts = np.quantile(np.concatenate([m[~k] for m, k in zip(maps, masks)]), [0.9, 0.7])
    covered = []
    for kind in sorted(set(kinds) - {"good"}):
        regions = []
        for m, k, c in zip(maps, masks, kinds):
            if c != kind:
                continue
            labels, n = ndimage.label(k)
            regions += [[(m[labels == i] > cut).mean() for cut in cuts] for i in range(1, n + 1)]
        r = np.array(regions)
        covered.append(f"{kind} {r[:, 0].mean():.2f}/{r[:, 1].mean():.2f} ({len(r)})")
    print(f"  defect regions covered at FPR 0.1/0.3 (regions): {', '.join(covered)}")


if __name__ == "__main__":
    main()
