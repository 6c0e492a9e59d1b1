"""`hermesseg evaluate`: per-task, per-case Dice and HD95 of a model on nnU-Net datasets, with summaries."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import SimpleITK as sitk

from ..errors import DatasetError, QueryError
from ..imageio import read_image
from ..inference.input_grid import on_input_grid
from ..inference.pipeline import InferenceOptions, predict
from ..model import HermesModel
from ..nnunet import check_same_grid, read_dataset
from .metrics import dice, hd95


@dataclass
class CaseScore:
    dataset: str
    case: str
    task: str
    dice: float
    hd95: float
    truth_voxels: int
    predicted_voxels: int


@dataclass
class EvaluationReport:
    model: str
    split: str
    scores: list[CaseScore] = field(default_factory=list)

    def summary(self, key: str) -> dict[str, dict]:
        groups: dict[str, list[CaseScore]] = {}
        for s in self.scores:
            groups.setdefault(getattr(s, key), []).append(s)
        out = {}
        for name, scores in groups.items():
            finite = [s.hd95 for s in scores if not math.isnan(s.hd95)]
            out[name] = {"dice_mean": float(np.mean([s.dice for s in scores])),
                         "hd95_median": float(np.median(finite)) if finite else None,
                         "cases": len(scores),
                         "absent_in_truth": sum(s.truth_voxels == 0 for s in scores)}
        return out

    def to_dict(self) -> dict:
        return {"model": self.model, "split": self.split,
                "scores": [{**s.__dict__, "hd95": None if math.isnan(s.hd95) else s.hd95} for s in self.scores],
                "per_task": self.summary("task"), "per_dataset": self.summary("dataset")}

    def markdown(self) -> str:
        lines = [f"Model `{self.model}`, split `{self.split}`", "",
                 "| dataset | task | cases | Dice (mean) | HD95 mm (median) |", "|---|---|---|---|---|"]
        per_task = self.summary("task")
        for task, s in per_task.items():
            dataset = next(x.dataset for x in self.scores if x.task == task)
            hd = "n/a" if s["hd95_median"] is None else f"{s['hd95_median']:.1f}"
            lines.append(f"| {dataset} | {task} | {s['cases']} | {s['dice_mean']:.3f} | {hd} |")
        lines += ["", "| dataset | Dice (mean over tasks and cases) |", "|---|---|"]
        for dataset, s in self.summary("dataset").items():
            lines.append(f"| {dataset} | {s['dice_mean']:.3f} |")
        return "\n".join(lines) + "\n"


def cases_for_split(dataset: str, cases: list, split: str, splits: dict | None) -> list:
    if split == "all":
        return cases
    if splits is None:
        raise DatasetError(f"--split {split} needs a splits file (a training run's splits.json) or --split all")
    per_dataset = splits.get("datasets", splits)  # a run's splits.json, or {dataset: splits}
    entry = per_dataset.get(dataset) if isinstance(per_dataset, dict) else None
    if not isinstance(entry, dict) or split not in entry:
        raise DatasetError(f"the splits file has no {split!r} split for dataset {dataset!r}")
    if not (isinstance(entry[split], list) and all(isinstance(n, str) for n in entry[split])):
        raise DatasetError(f"the splits file's {split!r} split of dataset {dataset!r} must be a list of case names")
    names = set(entry[split])
    return [c for c in cases if c.name in names]


def evaluate(model: HermesModel, data: list[Path], split: str = "all", splits: dict | None = None,
             task_map: dict[str, str] | None = None, options: InferenceOptions | None = None,
             progress: Callable[[str], None] | None = None) -> EvaluationReport:
    """Score ``model`` on each dataset's cases. A dataset label ``L`` of dataset ``D`` is scored against the model
    task ``task_map["D/L"]`` if given, else the task named ``D_L``; labels without a task are left out."""
    report = EvaluationReport(model.manifest.name, split)
    task_map = task_map or {}
    for root in data:
        meta, cases = read_dataset(root)
        name = meta.get("name", Path(root).name)
        pairs = []
        for label, value in meta["labels"].items():
            if int(value) == 0:
                continue
            task_name = task_map.get(f"{name}/{label}", f"{name}_{label}")
            try:
                pairs.append((model.manifest.task(task_name), int(value)))
            except KeyError:
                continue
        if not pairs:
            raise QueryError(f"dataset {name!r}: none of its labels matches a task of the model "
                             f"(expected names like {name}_<label>; use a task map)")
        modality = pairs[0][0].modalities[0]
        selected = cases_for_split(name, cases, split, splits)
        for case in selected:  # every case is checked before the first prediction, as train does
            check_same_grid(name, case)
        for case in selected:
            if progress:
                progress(f"{name}/{case.name}")
            image = read_image(case.image)
            truth = sitk.GetArrayFromImage(sitk.ReadImage(str(case.label)))
            prediction = predict(model, image, [t for t, _ in pairs], modality, options)
            for (task, value), result in zip(pairs, on_input_grid(prediction)):
                mask, gt = result.full_mask(truth.shape), truth == value
                report.scores.append(CaseScore(name, case.name, task.name, dice(mask, gt), hd95(mask, gt, image),
                                               int(gt.sum()), int(mask.sum())))
    return report


def write_report(report: EvaluationReport, json_path: Path | None) -> None:
    if json_path is None:
        return
    from ..atomic import atomic_path

    with atomic_path(json_path) as tmp:
        tmp.write_text(json.dumps(report.to_dict(), indent=1))
    with atomic_path(json_path.with_suffix(".md")) as tmp:
        tmp.write_text(report.markdown())
