"""One `hermesseg segment` run: the model loaded once, each input read once, segmented and written atomically.

Each input's outputs replace the previous run's as a whole: the ``.seg.nrrd`` and the ``OUTDIR/<input>/`` folder of
NIfTI maps (replaced when asked for again, removed when this run does not write one), so no stale mask of an earlier
run stays beside a new segmentation. A task whose probability never reaches the threshold, or whose mask the
found rule rejects (``found_rule.py``: scattered, unconfident, outside the body), gets no segment and no mask: it is
listed as not found, with its reason.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ..atomic import atomic_folder
from ..imageio import input_stem, read_input
from ..model import HermesModel
from ..output_paths import child_path
from ..progress import Progress
from .input_grid import INPUT_GRID_SHARE, on_input_grid
from .modality_guess import guess_modality
from .outputs import SegmentationWriter, write_map
from .pipeline import InferenceOptions, predict

log = logging.getLogger(__name__)
_MAPS = (".nii.gz",)


@dataclass
class SegmentRequest:
    inputs: list[Path]
    output_dir: Path
    task_names: list[str] | None = None
    modality: str | None = None
    force: bool = False
    nifti: bool = False
    probabilities: bool = False
    options: InferenceOptions = field(default_factory=InferenceOptions)


def segment_inputs(model: HermesModel, request: SegmentRequest, progress: Progress) -> list[dict]:
    outputs = []
    n = len(request.inputs)
    for i, path in enumerate(request.inputs):
        def report(stage: str, fraction: float, message: str, _i=i, _name=path.name) -> None:
            progress.update(stage, (_i + fraction) / n, f"{_name}: {message}" if n > 1 else message)

        report("load", 0.0, f"reading {path}")
        loaded = read_input(path)
        modality = request.modality or guess_modality(model, loaded.image, path, loaded.info)
        tasks = model.resolve_tasks(request.task_names, modality, force=request.force)
        prediction = predict(model, loaded.image, tasks, modality, request.options, report)
        record = _write(model, prediction, path, request, report, modality)
        if record["not_found"]:
            report("write", 1.0, "not found in this image: " + not_found_text(record, "; "))
        outputs.append(record)
    return outputs


def _write(model: HermesModel, prediction, path: Path, request: SegmentRequest, report, modality: str) -> dict:
    stem = input_stem(path)
    seg_path = child_path(request.output_dir, f"{stem}.seg.nrrd")
    maps_dir = child_path(request.output_dir, stem)
    writer = SegmentationWriter(prediction.input_image)
    record = {"input": str(path), "modality": modality, "segmentation": str(seg_path), "masks": [],
              "probabilities": [], "tasks": [t.name for t in prediction.tasks], "found": [], "not_found": [],
              "not_found_reasons": {}}
    extra = request.nifti or request.probabilities
    if extra:  # every map's name is checked before anything is written, found or not
        for t in prediction.tasks:
            child_path(maps_dir, f"{t.name}.nii.gz"), child_path(maps_dir, f"{t.name}_probability.nii.gz")
    folder_ctx = atomic_folder(maps_dir) if extra else contextlib.nullcontext()
    with folder_ctx as folder:
        shape = tuple(reversed(prediction.input_image.GetSize()))
        for result in on_input_grid(prediction, request.probabilities, report):
            task = result.task
            record["found" if result.found else "not_found"].append(task.name)
            if not result.found:
                record["not_found_reasons"][task.name] = result.reason
            if result.found:
                writer.add(task, result.mask, result.box)
                if request.nifti:
                    write_map(result.full_mask(shape), prediction.input_image,
                              child_path(folder, f"{task.name}.nii.gz"))
                    record["masks"].append(str(child_path(maps_dir, f"{task.name}.nii.gz")))
            if request.probabilities:
                write_map(result.probability, prediction.input_image,
                          child_path(folder, f"{task.name}_probability.nii.gz"))
                record["probabilities"].append(str(child_path(maps_dir, f"{task.name}_probability.nii.gz")))
        report("write", INPUT_GRID_SHARE[1], f"writing {seg_path.name}")
        writer.write(seg_path)
    if not extra:
        _remove_stale_maps(model, maps_dir)
    report("write", 1.0, f"wrote {seg_path.name}")
    return record


def not_found_text(record: dict, separator: str) -> str:
    """``task (reason)`` for each task of an output record that was not found, joined by ``separator``."""
    return separator.join(f"{name} ({record['not_found_reasons'][name]})" for name in record["not_found"])


def _remove_stale_maps(model: HermesModel, folder: Path) -> None:
    """Remove an earlier run's ``OUTDIR/<input>/`` folder, but only when it holds nothing except this model's task
    maps (a folder with anything else in it is the user's: it is left alone, with a warning)."""
    if not folder.is_dir():
        return
    names = {t.name for t in model.manifest.tasks}
    ours = {f"{n}{suffix}" for n in names for suffix in _MAPS} | {f"{n}_probability{s}" for n in names for s in _MAPS}
    entries = list(folder.iterdir())
    if all(p.is_file() and p.name in ours for p in entries):
        shutil.rmtree(folder)
    else:
        log.warning("%s holds files of an earlier run and others; it was left as it is", folder)
