"""Run set-up shared by every way of training: the request, the resolved configuration, where things go, and the
parent model. Nothing here writes a file."""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ModelFileError, OutputError
from ..model import HermesModel, load_model
from .checkpoint import ResumeError
from .config import TrainingConfigError, load_config_file, resolve_config
from .cache import default_cache_dir

log = logging.getLogger(__name__)

RUN_CONFIG_FORMAT = "hermes-train-run"


@dataclass
class TrainRequest:
    data: list[str] = field(default_factory=list)
    output: str | None = None
    config: str | dict | None = None  # JSON file path or an already-parsed dict
    init: str | None = None
    resume: str | None = None
    run_dir: str | None = None
    iterations: int | None = None
    device: str = "auto"
    cache_dir: str | None = None
    num_workers: int | None = None


@dataclass
class RunSetup:
    cfg: dict
    user_cfg: dict
    run_dir: Path
    output: Path
    data: list[str]
    init: str | None
    cache_dir: Path
    resumed: bool
    init_sha256: str | None = None  # the parent's weights fingerprint recorded by the run being resumed


def default_run_dir(output: Path) -> Path:
    name = output.name
    for suffix in (".safetensors", ".hermes"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return output.with_name(name + ".run")


def check_output(output: Path) -> None:
    """The model file to write: not a folder, inside a folder that exists or can be created."""
    if output.is_dir():
        raise OutputError(f"-o {output} is a folder; give the model file to write (e.g. model.safetensors)")
    parent = output.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise OutputError(f"cannot create {output}: {parent} is not a folder")


def load_parent(path: str, what: str) -> HermesModel:
    """The parent model on the CPU, its errors prefixed with the option that named it."""
    try:
        return load_model(path)
    except ModelFileError as e:
        raise ModelFileError(f"{what}: {e}") from None


def resolve_run(request: TrainRequest) -> RunSetup:
    """The configuration and paths of a new run, or of the run ``--resume`` names (its ``config.json``)."""
    if request.resume:
        return _resumed(request)
    if not request.output:
        raise TrainingConfigError("-o MODEL is required (the model file to write)")
    if isinstance(request.config, dict):
        user = copy.deepcopy(request.config)
    else:
        user = load_config_file(request.config)
    if request.iterations is not None:
        user["iterations"] = int(request.iterations)
    if request.num_workers is not None:
        user["num_workers"] = int(request.num_workers)
    if request.cache_dir is not None:
        user["cache_dir"] = str(request.cache_dir)
    cfg = resolve_config(user)
    output = Path(request.output)
    run_dir = Path(request.run_dir) if request.run_dir else default_run_dir(output)
    if (run_dir / "config.json").exists() or (run_dir / "checkpoint.pt").exists():
        raise OutputError(f"{run_dir} already holds a training run; continue it with --resume {run_dir} or choose "
                          f"another --run-dir")
    if run_dir.exists() and not run_dir.is_dir():
        raise OutputError(f"--run-dir {run_dir} is a file")
    cache_dir = Path(cfg["cache_dir"]).expanduser() if cfg["cache_dir"] else default_cache_dir()
    data = [str(Path(p).resolve()) for p in request.data]
    init = str(Path(request.init).resolve()) if request.init else None
    return RunSetup(cfg, user, run_dir, output, data, init, cache_dir, False)


def _resumed(request: TrainRequest) -> RunSetup:
    run_dir = Path(request.resume)
    cfg_path = run_dir / "config.json"
    if not cfg_path.is_file():
        raise ResumeError(f"{run_dir} is not a training run directory (no config.json)")
    if request.config is not None:
        raise TrainingConfigError("--config cannot be combined with --resume: a resumed run keeps its "
                                  f"configuration ({cfg_path})")
    try:
        saved = json.loads(cfg_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ResumeError(f"{cfg_path} is not readable ({e})") from None
    if saved.get("format") != RUN_CONFIG_FORMAT:
        raise ResumeError(f"{cfg_path} is not a Hermes training run configuration")
    cfg = resolve_config(saved["config"])
    run = saved["run"]
    data = [str(Path(p).resolve()) for p in request.data] if request.data else list(run["data"])
    if sorted(data) != sorted(run["data"]):
        raise ResumeError(f"--data differs from the run being resumed ({', '.join(run['data'])})")
    if request.init and str(Path(request.init).resolve()) != run.get("init"):
        raise ResumeError(f"--init differs from the run being resumed ({run.get('init')})")
    if request.iterations is not None and request.iterations != cfg["iterations"]:
        log.warning("iterations changed from %d to %d: the learning-rate schedule is recomputed for the new "
                    "length", cfg["iterations"], request.iterations)
        cfg["iterations"] = int(request.iterations)
    if request.num_workers is not None:
        cfg["num_workers"] = int(request.num_workers)
    output = Path(request.output) if request.output else Path(run["output"])
    cache_dir = Path(request.cache_dir or run["cache_dir"])
    return RunSetup(cfg, saved.get("user_config", {}), run_dir, output, data, run.get("init"), cache_dir, True,
                    run.get("init_weights_sha256"))
