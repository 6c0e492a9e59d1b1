"""What both module widgets do the same way: status line, log, first-use installation, a background job's end.

The one ``HermesLib`` module for the widgets only (it needs the Slicer application's ``slicer.i18n``); it imports no
``qt`` itself. :class:`JobWidgetMixin` expects the widget to have ``self.ui.statusLabel``, ``self.ui.logTextEdit``,
``self.ui.progressBar``, ``self.showPopups`` (self-tests set False), ``self._job``, ``self.updateButtons()`` and
``self.refreshModels(reread=...)``, and a class attribute ``title`` (the module's name in dialogs).
"""

from __future__ import annotations

import logging
import time
from typing import Callable

import slicer
from slicer.i18n import tr as _

from . import dependencies
from .engine_job import JobState


def waitFor(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """For the modules' self-tests: keep Slicer's event loop running until ``condition()`` holds, or fail after
    ``timeout`` seconds naming ``what`` was awaited."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        slicer.app.processEvents()
        time.sleep(0.05)


class JobWidgetMixin:
    title = "Hermes"
    _dependenciesReady = False

    def popupsAllowed(self) -> bool:
        return self.showPopups and not slicer.app.testingEnabled()

    def setStatus(self, text: str, error: bool = False) -> None:
        self.ui.statusLabel.text = text
        self.ui.statusLabel.setStyleSheet("color: #c0392b;" if error else "")

    def addLog(self, text: str) -> None:
        self.ui.logTextEdit.appendPlainText(text)
        logging.info(text)

    def finishJob(self, job, showResult: Callable[[object], None], cancelledText: str, failedText: str) -> None:
        """A background job ended: ``showResult(job)`` when it succeeded; else ``cancelledText`` or ``failedText``
        (with ``{error}``) in the status line, a failure also in a dialog with the last log lines."""
        self.ui.progressBar.setVisible(False)
        if job.state == JobState.SUCCEEDED:
            showResult(job)
        elif job.state == JobState.CANCELLED:
            self.setStatus(cancelledText)
        else:
            message = failedText.format(error=job.errorMessage)
            self.setStatus(message, error=True)
            if self.popupsAllowed():
                slicer.util.errorDisplay(message, detailedText="\n".join(job.log[-60:]))
        if self._job is job:
            self._job = None
        self.updateButtons()

    def ensureDependencies(self) -> bool:
        """torch (through PyTorchUtils) and the engine's packages, installed after one confirmation on first use.

        Returns False, with the reason in the status line, when something is missing and the user declines, the
        install fails, or dialogs are not allowed (self-tests, --testing: nothing is installed there). After any
        install the model list and the selected model's description are read again."""
        if self._dependenciesReady:
            return True
        requirements = dependencies.REQUIREMENTS_FILE
        missing = dependencies.missingDependencies(requirements)
        if missing and not self.popupsAllowed():
            self.setStatus(_("Python packages missing in Slicer: {packages}.").format(packages=", ".join(missing)),
                           error=True)
            return False
        if missing:
            confirm = lambda message: slicer.util.confirmOkCancelDisplay(message, self.title)  # noqa: E731
            try:  # PyTorchUtils and pip_ensure show their own progress
                dependencies.ensureDependencies(requirements, confirm=confirm)
            except dependencies.DependencyDeclined:
                self.setStatus(_("Not installed: {packages}. You are asked again next time.").format(
                    packages=", ".join(missing)), error=True)
                return False
            except dependencies.DependencyError as e:
                message = _("The Python packages Hermes needs could not be installed: {error}").format(error=e)
                self.setStatus(message, error=True)
                self.addLog(message)
                slicer.util.errorDisplay(message)
                return False
            finally:
                self.refreshModels(reread=True)
            self.addLog(_("Installed: {packages}").format(packages=", ".join(missing)))
        self._dependenciesReady = True
        return True
