"""GUI-free code shared by the HermesExtension modules (Hermes Segmentation, Hermes Training).

- ``engine``: where the ``hermesseg`` engine is, the interpreter and environment of its child processes, and the
  few torch-free engine modules imported into Slicer's process
- ``process``: ``BackgroundProcess`` (reader thread + queue, Qt-timer polling in Slicer, process-tree cancel)
- ``progress``: the JSON-lines progress protocol of ``hermesseg ... --progress json``
- ``engine_run``: ``startEngineCommand``, the one way to run an engine command (process + environment + progress)
- ``models``: the model folder, the model list, ``readModelInfo`` (a model's description from its header, by the
  engine's torch-free ``hermesseg.model_header``)
- ``engine_job``: ``EngineJob``, the base of both modules' jobs (state, log, cancel, blocking wait, the end)
- ``dependencies``: torch via PyTorchUtils and the engine's packages (``requirements.txt`` here), one question first
- ``widget``: ``JobWidgetMixin``, what both widgets do alike (status, log, first-use install, a job's end)

None of these imports ``qt``, ``ctk`` or torch; all but ``widget`` (which needs the application's ``slicer.i18n``)
work in the Slicer application and with the ``slicer-core`` wheel. The top-level ``CMakeLists.txt`` installs this
package beside the modules and ``hermesseg``, in the ``qt-scripted-modules`` folder (on Slicer's ``sys.path``); in a
source checkout each module's Lib package puts the repository root on ``sys.path``.
"""

# The modules in import order (each after those it imports): the widgets' onReload reloads them in this order.
MODULES = (
    "HermesLib.engine",
    "HermesLib.progress",
    "HermesLib.process",
    "HermesLib.engine_run",
    "HermesLib.engine_job",
    "HermesLib.models",
    "HermesLib.dependencies",
    "HermesLib.widget",
)
