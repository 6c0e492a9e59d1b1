"""`hermesseg segment INPUT... -o OUTDIR`: the main job."""

from __future__ import annotations

import sys
from pathlib import Path

from ..default_model import require_model_path
from ..device import DEVICES, resolve_device
from ..errors import HermesError, QueryError, os_error_message


def register(sub) -> None:
    p = sub.add_parser("segment", help="segment images (NIfTI, NRRD, MHA or DICOM series folders)")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, DICOM series folders, or folders of images")
    p.add_argument("-o", "--output", required=True, type=Path, help="output folder")
    p.add_argument("--model", help="model file (default: the embedded default model)")
    p.add_argument("--tasks", action="append", help="structure names ('Left kidney'), task ids or group names, comma "
                                                     "separated (default: the modality's tasks with measured evidence, "
                                                     "see `hermesseg tasks`); may be repeated")
    p.add_argument("--modality", help="image modality (one of the model's; default: from the sample catalogue, DICOM, "
                                      "or intensities)")
    p.add_argument("--force", action="store_true", help="run tasks the model never learned for this modality")
    p.add_argument("--device", default="auto", choices=DEVICES)
    p.add_argument("--fast", action="store_true", help="coarser 3 mm working spacing: much faster on a CPU")
    p.add_argument("--overlap", type=float, default=0.5, help="sliding-window overlap in [0, 1) (default 0.5)")
    p.add_argument("--batch-size", type=int, help="windows per forward pass (default: 4 on a GPU, 1 on a CPU)")
    p.add_argument("--largest-component", action="store_true", help="keep each task's largest connected component")
    p.add_argument("--nifti", action="store_true", help="also write OUTDIR/<input>/<task>.nii.gz binary masks")
    p.add_argument("--probabilities", action="store_true", help="also write float probability maps")
    p.add_argument("--progress", choices=("bar", "json", "none"), default="bar",
                   help="json: one JSON object per line on stdout (for programs such as the Slicer module)")
    p.set_defaults(func=run)


def task_list(values: list[str] | None) -> list[str] | None:
    """``--tasks`` values -> names; None when --tasks is not given (every task). Given but empty is refused."""
    if values is None:
        return None
    names = [n.strip() for item in values for n in item.split(",") if n.strip()]
    if not names:
        raise QueryError(f"--tasks {', '.join(map(repr, values))} names no task; give task or group names, comma "
                         f"separated, or leave --tasks out to run the tasks with measured evidence")
    return names


def run(args) -> int:
    # Imported here so that `hermesseg --help` does not load torch.
    from ..imageio import expand_inputs
    from ..inference.cancel import cancel_on_signals
    from ..inference.outputs import check_writable
    from ..inference.pipeline import InferenceOptions
    from ..inference.segment_job import SegmentRequest, segment_inputs
    from ..model import load_model
    from ..progress import Progress

    progress = Progress(args.progress)
    try:
        with cancel_on_signals():
            if not 0.0 <= args.overlap < 1.0:
                raise HermesError(f"--overlap must be in [0, 1), got {args.overlap}")
            if args.batch_size is not None and args.batch_size < 1:
                raise HermesError("--batch-size must be at least 1")
            inputs = expand_inputs(args.inputs)
            check_writable(args.output)
            task_names = task_list(args.tasks)
            progress.update("load", 0.0, "loading the model")
            model = load_model(require_model_path(args.model), device=resolve_device(args.device))
            if args.modality:
                model.modality(args.modality)  # fail before reading any image
            request = SegmentRequest(inputs, args.output, task_names, args.modality, args.force, args.nifti,
                                     args.probabilities,
                                     InferenceOptions(fast=args.fast, overlap=args.overlap,
                                                      batch_size=args.batch_size,
                                                      largest_component=args.largest_component))
            outputs = segment_inputs(model, request, progress)
    except (HermesError, OSError) as e:
        progress.error(os_error_message(e) if isinstance(e, OSError) else str(e))
        raise
    finally:
        progress.close()  # whatever ends the run, the bar is gone before the CLI prints its line
    progress.done(outputs, f"segmented {len(outputs)} image(s)")
    if args.progress != "json":
        for o in outputs:
            print(o["segmentation"], file=sys.stderr)
    return 0
