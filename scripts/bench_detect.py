"""PatchCore on a user-sized Folder category, through the real pipeline, on the CPU.

    python scripts/bench_detect.py                        # 200 normals at 256 px, random-init lite0
    python scripts/bench_detect.py --compare 40           # + both coreset samplers on 40 images' patches
    python scripts/bench_detect.py --images 400 --threads 2

Builds (once, under --data) a Folder dataset from the project's built-in generator (weave: --images
training normals, --test-good normal and 6 x --test-defect anomalous test images with masks), then
runs ``run.py dataset=folder ... backbone=random backbone.arch=tf_efficientnet_lite0
detector=patchcore stages=[detect]`` in a subprocess and prints one JSON line: wall, user and system
seconds and peak RSS of that process, the coreset's seconds (its last progress line), image AUROC.
``--compare N`` also selects the coreset of the first N images' patches with anomalib's
``KCenterGreedy`` and with ``detectors.coreset``, checks the indices are equal and prints both CPU
times (anomalib's grows with the square of the images: iterations and the work per iteration both
scale with them).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def folder_dataset(data: Path, images: int, size: int, test_good: int, test_defect: int) -> Path:
    """The built-in generator's weave category, laid out as a Folder dataset (copies, unique names)."""
    from evaluation.datasets.builtin import DEFECTS, make_builtin_dataset

    folder = data / f"folder-{images}-{size}-{test_good}-{test_defect}"
    if (folder / "complete").exists():
        return folder
    weave = make_builtin_dataset(data / f"builtin-{images}-{size}-{test_good}-{test_defect}", seed=0,
                                 image_size=size, n_train=images, n_test_good=test_good,
                                 n_test_defect=test_defect) / "weave"
    shutil.rmtree(folder, ignore_errors=True)
    for sub in ("good", "good_test", "defect", "masks"):
        (folder / sub).mkdir(parents=True)
    for png in (weave / "train" / "good").glob("*.png"):
        shutil.copy(png, folder / "good" / png.name)
    for png in (weave / "test" / "good").glob("*.png"):
        shutil.copy(png, folder / "good_test" / png.name)
    for kind in DEFECTS:
        for png in (weave / "test" / kind).glob("*.png"):
            shutil.copy(png, folder / "defect" / f"{kind}_{png.name}")
            shutil.copy(weave / "ground_truth" / kind / f"{png.stem}_mask.png", folder / "masks" / f"{kind}_{png.name}")
    (folder / "complete").touch()
    return folder


def run_pipeline(folder: Path, size: int, threads: int | None) -> dict:
    out = Path(tempfile.mkdtemp(prefix="bench-detect-"))
    cmd = [sys.executable, str(ROOT / "run.py"), "dataset=folder", f"dataset.root={folder}", "dataset.category=bench",
           "dataset.normal_dir=good", "dataset.abnormal_dir=defect", "dataset.normal_test_dir=good_test",
           "dataset.mask_dir=masks", f"dataset.image_size={size}", "backbone=random",
           "backbone.arch=tf_efficientnet_lite0", "detector=patchcore", "stages=[detect]", "detector.log_images=0",
           "mlflow.system_metrics=false", f"paths.outputs_dir={out}", "~local"]
    env = dict(os.environ)
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=out, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "coreset" in line or "detect" in line[:12]:
            print("  " + line.rstrip(), file=sys.stderr, flush=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    text = "".join(lines)
    if status != 0:
        sys.exit(f"run.py failed:\n{text[-4000:]}")
    coreset = re.findall(r"detect coreset (\d+)/\1 \(100%\)\s+(?:(\d+):)?(\d+):(\d+)", text)
    h, m, s = (int(x or 0) for x in coreset[-1][1:]) if coreset else (0, 0, -1)
    auroc = re.search(r"image_AUROC\D+([0-9.]+)", text)
    shutil.rmtree(out, ignore_errors=True)
    return {"wall_s": round(wall, 1), "user_s": round(usage.ru_utime, 1), "sys_s": round(usage.ru_stime, 1),
            "peak_rss_mb": round(usage.ru_maxrss / 1024), "coreset_s": 3600 * h + 60 * m + s,
            "coreset_size": int(coreset[-1][0]) if coreset else 0, "image_AUROC": float(auroc.group(1)) if auroc else None}


def compare_samplers(folder: Path, images: int, size: int) -> dict:
    """Both samplers on the patches of the first ``images`` normals (the pipeline's embedding)."""
    import numpy as np
    import torch
    from anomalib.models import Patchcore
    from anomalib.models.components.sampling import KCenterGreedy
    from PIL import Image

    from detectors.backbone import IMAGENET_MEAN, IMAGENET_STD, Backbone
    from detectors.coreset import k_center_greedy
    from detectors.models import build_detector

    backbone = Backbone("random", "tf_efficientnet_lite0", "tf_efficientnet_lite0", False, IMAGENET_MEAN,
                        IMAGENET_STD, "random init")
    torch.manual_seed(0)
    model = build_detector(Patchcore, {"layers": ["layer2", "layer3"], "coreset_sampling_ratio": 0.1}, backbone).model
    paths = sorted((folder / "good").glob("*.png"))[:images]
    x = torch.stack([torch.from_numpy(np.array(Image.open(p).convert("RGB").resize((size, size)))) for p in paths])
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    x = (x.permute(0, 3, 1, 2).float() / 255 - mean) / std
    model.train()
    with torch.no_grad():
        embedding = torch.vstack([model(x[i:i + 16]) for i in range(0, len(x), 16)])
    result = {"compare_images": images, "patches": embedding.shape[0]}
    selections = {}
    for name, select in (("anomalib", lambda: KCenterGreedy(embedding, 0.1).select_coreset_idxs()),
                         ("ours", lambda: k_center_greedy(embedding, 0.1))):
        torch.manual_seed(0)
        np.random.seed(0)
        before = resource.getrusage(resource.RUSAGE_SELF)
        selections[name] = select()
        after = resource.getrusage(resource.RUSAGE_SELF)
        result[f"{name}_cpu_s"] = round(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime, 1)
        result[f"{name}_sys_s"] = round(after.ru_stime - before.ru_stime, 1)
    result["identical"] = selections["anomalib"] == selections["ours"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200, help="normal training images")
    parser.add_argument("--size", type=int, default=256, help="image size (generated and detector input)")
    parser.add_argument("--test-good", type=int, default=20)
    parser.add_argument("--test-defect", type=int, default=3, help="per defect type (6 types)")
    parser.add_argument("--threads", type=int, default=None, help="OMP/MKL threads of the run (default: torch's)")
    parser.add_argument("--compare", type=int, default=0, help="also time both samplers on this many images' patches")
    parser.add_argument("--skip-run", action="store_true", help="only the sampler comparison")
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "fractal-ad-bench-detect")
    args = parser.parse_args()

    os.environ.setdefault("TQDM_DISABLE", "1")
    folder = folder_dataset(args.data, args.images, args.size, args.test_good, args.test_defect)
    result = {"images": args.images, "size": args.size, "cpus": os.cpu_count(), "threads": args.threads}
    if not args.skip_run:
        result.update(run_pipeline(folder, args.size, args.threads))
    if args.compare:
        result.update(compare_samplers(folder, args.compare, args.size))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
