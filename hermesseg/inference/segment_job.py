"""One `hermesseg segment` run: the model loaded once, each input segmented and written atomically."""

from __future__ import annotations

import contextlib

from dataclasses import dataclass, field
from pathlib import Path

from ..atomic import atomic_folder
from ..imageio import input_stem, read_image
from ..model import HermesModel
from ..output_paths import child_path
from .modality_guess import guess_modality
from .outputs import SegmentationWriter, write_map
from .pipeline import InferenceOptions, predict
from ..progress import Progress


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
        image = read_image(path)
        modality = request.modality or guess_modality(model, image, path)
        tasks = model.resolve_tasks(request.task_names, modality, force=request.force)
        prediction = predict(model, image, tasks, modality, request.options, report)
        outputs.append(_write(prediction, path, request, report, modality))
    return outputs


def _write(prediction, path: Path, request: SegmentRequest, report, modality: str) -> dict:
    stem = input_stem(path)
    seg_path = child_path(request.output_dir, f"{stem}.seg.nrrd")
    writer = SegmentationWriter(prediction.input_image)
    record = {"input": str(path), "modality": modality, "segmentation": str(seg_path), "masks": [],
              "probabilities": [], "tasks": [t.name for t in prediction.tasks]}
    extra = request.nifti or request.probabilities
    final_folder = child_path(request.output_dir, stem)
    folder_ctx = atomic_folder(final_folder) if extra else contextlib.nullcontext()
    with folder_ctx as folder:
        for k, (task, prob, mask) in enumerate(prediction.on_input_grid()):
            writer.add(task, mask)
            if request.nifti:
                write_map(mask, prediction.input_image, child_path(folder, f"{task.name}.nii.gz"))
                record["masks"].append(str(child_path(final_folder, f"{task.name}.nii.gz")))
            if request.probabilities:
                write_map(prob, prediction.input_image, child_path(folder, f"{task.name}_probability.nii.gz"))
                record["probabilities"].append(str(child_path(final_folder, f"{task.name}_probability.nii.gz")))
            report("resample", 0.88 + 0.10 * (k + 1) / len(prediction.tasks), f"{task.name} on the input grid")
        report("write", 0.98, f"writing {seg_path.name}")
        writer.write(seg_path)
    report("write", 1.0, f"wrote {seg_path.name}")
    return record
