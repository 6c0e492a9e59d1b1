"""`hermesseg segment INPUT... -o OUTDIR`: the main job."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..default_model import require_model_path
from ..device import DEVICES, resolve_device
from ..errors import HermesError, QueryError, os_error_message


DESCRIPTION = """\
Segment each INPUT with a Hermes model and write OUTDIR/<input>.seg.nrrd (one segment per task, for 3D Slicer).

Each selected task runs inside the task group it was trained with, so its mask does not depend on which other tasks
you picked. A task whose probability never reaches 0.5 anywhere, or whose mask the model's own evidence does not
support (scattered pieces, low confidence, outside the body), gets no segment: it is reported as "not found in this
image" with the reason (on stderr, and as "not_found" / "not_found_reasons" in the --progress json "done" event).
Re-running into the same OUTDIR replaces an input's outputs as a whole.

Speed: the number of windows per forward pass and of CPU threads is measured once per device and model shape (a few
seconds on the first run, cached; see HERMESSEG_CACHE) unless --batch-size / --threads are given."""

FAST_HELP = ("faster and less accurate: a working spacing of at least 3 mm on every axis (coarser than the model's "
             "when its spacing is finer; the default model already works at 3 mm) and a sliding-window overlap of at "
             "most 0.25 instead of --overlap (window steps of 3/4 instead of 1/2 of a window: about 2/3 as many "
             "windows per axis). Measured with the default model on a head-neck-thorax CT (73 tasks): 1.7x faster, "
             "mean Dice 0.74 against the default mode (small structures lose most)")


def register(sub) -> None:
    p = sub.add_parser("segment", help="segment images (NIfTI, NRRD, MHA or DICOM series folders)",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, DICOM series folders, or folders of images")
    p.add_argument("-o", "--output", required=True, type=Path, metavar="OUTDIR", help="output folder")
    p.add_argument("--model", help="model file (default: the embedded default model)")
    p.add_argument("--tasks", action="append", help="structure names ('Left kidney'), task ids or group names, comma "
                                                     "separated (default: the modality's tasks with measured evidence, "
                                                     "see `hermesseg tasks`); may be repeated")
    p.add_argument("--modality", help="image modality (one of the model's; default: from the sample catalogue, DICOM, "
                                      "or intensities)")
    p.add_argument("--force", action="store_true", help="run tasks the model never learned for this modality")
    p.add_argument("--device", default="auto", choices=DEVICES,
                   help="compute device (default auto: CUDA, then Apple MPS, then CPU)")
    p.add_argument("--fast", action="store_true", help=FAST_HELP)
    p.add_argument("--overlap", type=float, default=0.5, help="sliding-window overlap in [0, 1) (default 0.5)")
    p.add_argument("--batch-size", type=int, help="windows per forward pass (default: measured for the device)")
    p.add_argument("--threads", type=int, help="CPU threads for the network (default: measured for the device)")
    p.add_argument("--largest-component", action="store_true", help="keep each task's largest connected component")
    p.add_argument("--keep-unconfident", action="store_true",
                   help="draw every mask that reaches 0.5, also those reported as not found because the mask is "
                        "not confident or scattered")
    p.add_argument("--nifti", action="store_true", help="also write OUTDIR/<input>/<task>.nii.gz binary masks")
    p.add_argument("--probabilities", action="store_true",
                   help="also write OUTDIR/<input>/<task>_probability.nii.gz float probability maps")
    p.add_argument("--progress", choices=("bar", "json", "none"), default="bar",
                   help="bar: a progress bar on stderr when it is a terminal; json: one JSON object per line on "
                        "stdout (for programs such as the Slicer module); none: quiet")
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
    from ..inference.found_rule import DEFAULT_RULE, NO_RULE
    from ..inference.outputs import check_writable
    from ..inference.pipeline import InferenceOptions
    from ..inference.segment_job import SegmentRequest, not_found_text, segment_inputs
    from ..model import load_model
    from ..progress import Progress

    progress = Progress(args.progress)
    try:
        with cancel_on_signals():
            if not 0.0 <= args.overlap < 1.0:
                raise HermesError(f"--overlap must be in [0, 1), got {args.overlap}")
            if args.batch_size is not None and args.batch_size < 1:
                raise HermesError("--batch-size must be at least 1")
            if args.threads is not None and args.threads < 1:
                raise HermesError("--threads must be at least 1")
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
                                                      batch_size=args.batch_size, threads=args.threads,
                                                      largest_component=args.largest_component,
                                                      found_rule=NO_RULE if args.keep_unconfident else DEFAULT_RULE))
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
            if o["not_found"]:
                print(f"{o['input']}: not found in this image:\n  " + not_found_text(o, "\n  "), file=sys.stderr)
    return 0
