"""Write a pre-training source's images to an image folder (one sub-folder per class), to look at
them, to use them outside the pipeline, or to pre-train on a fixed finite set of them with
``pretrain/source=image_folder``.

    python scripts/write_source_images.py --out /tmp/dead_leaves --per-class 50 pretrain/source=dead_leaves
    python scripts/write_source_images.py --out /tmp/fractals --per-class 100 recipe=crop_mix
    python run.py pretrain/source=image_folder pretrain.source.root=/tmp/fractals

Trailing ``key=value`` arguments are Hydra overrides of the pipeline's config (the same as
``run.py`` takes): the source, its settings and ``seed``. The images are the source's training
stream at epoch 0 (``renders_per_system`` = ``--per-class`` / units per class): the very renders a
pre-training of the same seed starts with. Written to a sibling folder and renamed into place, so
the folder is never half-written.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from PIL import Image

import run  # registers the ${project_root:} resolver
from console.errors import UserError
from fractal_pretrain.datasets import TRAIN
from pipeline.generate import generate_spec, make_source


def write_images(source, seed: int, per_class: int, out: Path) -> Path:
    """``per_class`` training images of each class of ``source`` into ``out/<class>/<i>.png``."""
    units = source.images(seed, 1, TRAIN).bank  # systems, classes or files, and the class of each
    units_per_class = max(len(units.class_systems(c)) for c in range(source.num_classes))
    data = source.images(seed, max(1, -(-per_class // units_per_class)), TRAIN)
    names = getattr(source, "classes", None)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    for c in range(source.num_classes):
        folder = tmp / (names[c] if names and isinstance(names[c], str) else f"class_{c:03d}")
        folder.mkdir(parents=True)
        for j in range(per_class):
            img, _ = data.render_index(data.index_of(c, j), 0)
            Image.fromarray(img).save(folder / f"{j:05d}.png")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="the folder to write (replaced if it exists)")
    parser.add_argument("--per-class", type=int, default=100, help="images per class (default 100)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides: pretrain/source=..., seed=..., ...")
    args = parser.parse_args(argv)
    if args.per_class < 1:
        parser.error("--per-class must be >= 1")
    try:
        with initialize_config_dir(str(run.ROOT / "conf"), version_base="1.3"):
            cfg = compose("config", overrides=["~local", *args.overrides])
        spec = generate_spec(cfg)
        out = write_images(make_source(spec), spec.seed, args.per_class, args.out.expanduser().resolve())
    except (UserError, HydraException) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.per_class} images per class to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
