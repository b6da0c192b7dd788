"""GPU memory of a trial: a one-batch probe of a configuration's peak, and the check that packed trials fit one GPU.

Ray packs trials by their fractional `gpu` request and enforces no memory limit, so the search
driver probes each configuration's peak before the search (in a subprocess, so the driver never
holds a CUDA context) and refuses a packing that cannot fit:

    python -m trainables.memory < configs.json     # a JSON list of TrainConfig dicts -> a JSON list of results
"""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
import tempfile
from typing import Any, Mapping, Sequence

from trainables.config import ConfigError, TrainConfig
from trainables.data import IMAGE_SHAPES, NUM_CLASSES, ImageSplits
from trainables.loop import Training
from trainables.rsl_cache import CUDA_GROUP_IMAGES
from trainables.runtime import clear_process_caches, resolve_device

GIB = 2**30
CUDA_CONTEXT_GIB = 1.0
"""Added to each trial's probed peak: the CUDA context and library kernels a process holds outside PyTorch's allocator
(about 0.5 GiB for the context alone on recent GPUs with lazy module loading; an assumption, not measured here)."""
MEMORY_KEYS = ("dataset", "student", "teacher", "method", "rsl_source", "batch_size", "val_batch_size", "amp",
               "channels_last")
"""TrainConfig keys that change a trial's peak GPU memory."""
MAX_VARIANTS = 16


def trials_per_gpu(trial_gpus: float) -> int:
    """How many trials Ray places on one GPU for a per-trial request of trial_gpus (0 when no GPU is requested)."""
    if trial_gpus <= 0:
        return 0
    if trial_gpus >= 1:
        return 1
    return int(math.floor(1.0 / trial_gpus + 1e-9))


def gpus_for(k: int) -> float:
    """A trial.gpus value (few decimals) that packs exactly k trials per GPU."""
    for decimals in (2, 3, 4):
        scale = 10**decimals
        value = math.floor(scale / k) / scale
        if value > 0 and trials_per_gpu(value) == k:
            return value
    return 1.0 / k


def packing_error(estimates_gib: Sequence[float], trial_gpus: float, gpu_total_gib: float) -> str | None:
    """None when the trials that trial_gpus packs on one GPU fit in gpu_total_gib, else a one-line error saying what fits.

    estimates_gib holds one figure per configuration the search may run; any of them may fill a
    GPU, so the largest counts for every packed trial.
    """
    packed = trials_per_gpu(trial_gpus)
    if packed == 0 or not estimates_gib:
        return None
    largest = max(estimates_gib)
    if packed * largest <= gpu_total_gib:
        return None
    fit = int(gpu_total_gib // largest) if math.isfinite(largest) else 0
    if fit == 0:
        return (f"one trial needs ~{largest:.1f} GiB of GPU memory but the GPU has {gpu_total_gib:.1f} GiB; "
                f"lower train.batch_size or train.val_batch_size, or use a smaller student or teacher")
    return (f"trial.gpus={trial_gpus:g} packs {packed} trials of ~{largest:.1f} GiB on a {gpu_total_gib:.1f} GiB GPU; "
            f"at most {fit} fit: use trial.gpus={gpus_for(fit):g} or more")


def memory_variants(base: Mapping[str, Any], searched: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """The distinct valid TrainConfig dicts over the searched values of MEMORY_KEYS (at most MAX_VARIANTS, largest batches first)."""
    keys = [k for k in MEMORY_KEYS if k in searched]
    seen, variants = set(), []
    for combo in itertools.product(*(list(searched[k]) for k in keys)):
        changes = dict(zip(keys, combo))
        try:
            cfg = TrainConfig.from_dict({**base, **changes}).to_dict()
        except ConfigError:
            continue  # e.g. a teacher of another dataset: the space's own checks deal with it
        marker = json.dumps({k: cfg[k] for k in MEMORY_KEYS}, sort_keys=True)
        if marker not in seen:
            seen.add(marker)
            variants.append(cfg)
    variants.sort(key=lambda c: (c["batch_size"], c["val_batch_size"]), reverse=True)
    return variants[:MAX_VARIANTS]


def probe(train: Mapping[str, Any]) -> dict[str, Any] | None:
    """Peak GPU memory of one epoch of one batch (training step + validation batch) of this config; None off CUDA.

    Random images of the dataset's shape; the real student, teacher (its weights file is read)
    and method. Returns GiB figures: peak allocated and reserved by PyTorch, and estimate_gib =
    reserved + CUDA_CONTEXT_GIB, the figure packing_error expects.
    """
    import torch

    cfg = TrainConfig.from_dict(dict(train))
    device = resolve_device(cfg.device)
    if device.type != "cuda":
        return None
    clear_process_caches()  # the previous config's teacher must not count towards this one's peak
    with tempfile.TemporaryDirectory() as folder:
        # With the cache the teacher answers CUDA_GROUP_IMAGES at once: give it that many images.
        n_train = cfg.batch_size * (max(1, math.ceil(CUDA_GROUP_IMAGES / cfg.batch_size)) if cfg.rsl_cache_dir else 1)
        cfg = cfg.replace(rsl_cache_dir=folder if cfg.rsl_cache_dir else "", epochs=1, train_subset=0)
        gen = torch.Generator().manual_seed(0)
        shape = IMAGE_SHAPES[cfg.dataset]
        classes = NUM_CLASSES[cfg.dataset]

        def images(n: int) -> tuple[torch.Tensor, torch.Tensor]:
            return (torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=gen),
                    torch.randint(0, classes, (n,), generator=gen))

        splits = ImageSplits(*images(n_train), *images(cfg.val_batch_size), *images(1), classes)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        out: dict[str, Any] = {"gpu_name": torch.cuda.get_device_name(device),
                               "gpu_total_gib": torch.cuda.get_device_properties(device).total_memory / GIB}
        try:
            training = Training(cfg, splits=splits)
            training.run_epoch()
        except torch.cuda.OutOfMemoryError:
            out["oom"] = True
            out["estimate_gib"] = math.inf
            return out
        out["peak_allocated_gib"] = torch.cuda.max_memory_allocated(device) / GIB
        out["peak_reserved_gib"] = torch.cuda.max_memory_reserved(device) / GIB
        out["estimate_gib"] = out["peak_reserved_gib"] + CUDA_CONTEXT_GIB
        del training
        torch.cuda.empty_cache()
    return out


def probe_in_subprocess(configs: Sequence[Mapping[str, Any]], timeout_s: float = 900) -> list[dict[str, Any] | None]:
    """probe() each config in a fresh Python process (the caller never initialises CUDA); one result per config."""
    done = subprocess.run([sys.executable, "-m", "trainables.memory"], input=json.dumps(list(configs)),
                          capture_output=True, text=True, timeout=timeout_s)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"GPU memory probe failed (exit {done.returncode}): {last}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def check_packing(train_configs: Sequence[Mapping[str, Any]], trial_gpus: float,
                  timeout_s: float = 900) -> tuple[str | None, list[dict[str, Any] | None]]:
    """Probe the configs (in a subprocess) when trial_gpus packs several trials per GPU; (packing_error's verdict, probe results).

    Nothing is checked (None, []) without packing, and (None, [None, ...]) where this machine has no GPU to probe on.
    """
    if trials_per_gpu(trial_gpus) < 2 or not train_configs:
        return None, []
    results = probe_in_subprocess(train_configs, timeout_s)
    measured = [(c, r) for c, r in zip(train_configs, results) if r is not None]
    if not measured:
        return None, results
    for cfg, r in measured:
        if r.get("oom"):
            return (f"one trial alone runs out of memory on this {r['gpu_name']} ({r['gpu_total_gib']:.1f} GiB): "
                    f"student={cfg['student']} teacher={cfg['teacher']} method={cfg['method']} "
                    f"batch_size={cfg['batch_size']} val_batch_size={cfg['val_batch_size']}; "
                    f"lower train.batch_size or train.val_batch_size"), results
    return packing_error([r["estimate_gib"] for _, r in measured], trial_gpus, measured[0][1]["gpu_total_gib"]), results


def main() -> int:
    """Read a JSON list of TrainConfig dicts on stdin, print a JSON list of probe() results."""
    configs = json.loads(sys.stdin.read())
    print(json.dumps([probe(c) for c in configs]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
