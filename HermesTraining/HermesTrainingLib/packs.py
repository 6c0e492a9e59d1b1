"""Task packs from Slicer: ``hermesseg export-task`` and ``import-task`` in a background engine process.

A pack holds the prior rows (and adapter weights) of learned structures plus their manifest entries, never an
image, so a site can share what it taught a model. Importing into a base model other than the one the pack was made
for is refused by the engine, which names both fingerprints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from HermesSegmentationLib import engine, models
from HermesSegmentationLib.process import BackgroundProcess, ProcessState


class PackError(RuntimeError):
    """A task pack could not be exported or imported; the message is the engine's."""


def packCommandError(error: str) -> str:
    return f"Task pack: {error}"


def importedPackModelPath(base: str | Path, pack: str | Path) -> Path:
    """A new file in the user's models folder: ``<base>+<pack>.safetensors`` (numbered if it exists)."""
    stem = f"{Path(base).stem}+{Path(pack).stem}"
    candidate = models.userModelsFolder() / f"{stem}{models.MODEL_SUFFIX}"
    n = 2
    while candidate.exists():
        candidate = models.userModelsFolder() / f"{stem}-{n}{models.MODEL_SUFFIX}"
        n += 1
    return candidate


def runPackCommand(command: list[str], output: Path, onFinished: Callable[[Path | None, str | None], None] | None,
                   waitForCompletion: bool = False) -> BackgroundProcess:
    """Run an export/import command; ``onFinished(output, None)`` on success, ``(None, error)`` otherwise. Blocking
    mode raises PackError instead of returning a failed process."""
    lines: list[str] = []
    result: dict = {}

    def finished(process: BackgroundProcess) -> None:
        if process.state == ProcessState.CANCELLED:
            result["error"] = "cancelled"
        elif process.returnCode != 0 or not output.is_file():
            result["error"] = models.errorFromOutput("\n".join(lines), process.returnCode)
        if onFinished is not None:
            onFinished(None if "error" in result else output, result.get("error"))

    engine.requireEngine()
    output.parent.mkdir(parents=True, exist_ok=True)
    process = BackgroundProcess(command, env=engine.engineEnvironment(), onOutputLine=lines.append,
                                onFinished=finished)
    process.start(useTimer=False if waitForCompletion else None)
    if waitForCompletion:
        process.wait()
        if "error" in result:
            raise PackError(packCommandError(result["error"]))
    return process
