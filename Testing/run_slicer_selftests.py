"""Run the HermesExtension modules' self-tests inside the real Slicer application and exit with their status.

With the extension installed (Extensions Manager, or a built package)::

    Slicer --no-main-window --python-script Testing/run_slicer_selftests.py

From a source checkout (no build needed: the modules are pure Python)::

    Slicer --no-main-window --additional-module-paths HermesSegmentation HermesTraining \\
           --python-script Testing/run_slicer_selftests.py

Options after the script name: ``--modules HermesSegmentation,HermesTraining`` (default: both) and
``--no-skips`` (a skipped test, e.g. no model available, counts as a failure).

The HermesSegmentation self-test drives the module widget on a real image (``$HERMES_TEST_IMAGE``, else the
CTChest sample) with a real model (``$HERMES_TEST_MODEL``, the default model, ``$HERMES_TEST_CHECKPOINT`` imported
through the model manager, or a model in the user's models folder) and checks the resulting segments. The Python
packages the engine needs must already be installed in Slicer (tests never install anything).

Exit status: 0 when every test passed, 1 otherwise (including a module that is not loaded and any unexpected error),
so the script never leaves Slicer running.
"""

import argparse
import importlib
import sys
import traceback
import unittest

MODULES = ("HermesSegmentation", "HermesTraining")


def parseArguments(argv):
    parser = argparse.ArgumentParser(prog="run_slicer_selftests.py")
    parser.add_argument("--modules", default=",".join(MODULES),
                        help="comma-separated module names (default: %(default)s)")
    parser.add_argument("--no-skips", action="store_true", help="count skipped tests as failures")
    args, unknown = parser.parse_known_args(argv)  # tolerate arguments Slicer may leave in sys.argv
    if unknown:
        print(f"ignoring arguments: {' '.join(unknown)}", flush=True)
    return args


def runModuleTests(moduleName: str, allowSkips: bool) -> tuple[bool, str]:
    """(passed, one summary line)."""
    import slicer

    print(f"\n===== {moduleName} self-tests =====", flush=True)
    if not hasattr(slicer.modules, moduleName.lower()):
        print(f"FAILED: module {moduleName} is not loaded. Install HermesExtension, or start Slicer with "
              "--additional-module-paths pointing at the module folders.", flush=True)
        return False, f"{moduleName}: not loaded"
    # Create the module widget as the application does when the user opens the module.
    if slicer.util.mainWindow() is not None:
        slicer.util.selectModule(moduleName)
    slicer.util.getModuleWidget(moduleName)

    pythonModule = importlib.import_module(moduleName)
    testClass = getattr(pythonModule, moduleName + "Test", None)
    if testClass is None:
        print(f"FAILED: {moduleName}.py has no {moduleName}Test class", flush=True)
        return False, f"{moduleName}: no test class"
    suite = unittest.TestLoader().loadTestsFromTestCase(testClass)
    result = unittest.TextTestRunner(stream=sys.stdout, verbosity=2).run(suite)
    passed, lines = summarize(moduleName, result, allowSkips)
    for line in lines:
        print(line, flush=True)
    return passed, lines[0]


def summarize(moduleName: str, result: unittest.TestResult, allowSkips: bool) -> tuple[bool, list[str]]:
    """Whether the module passed, and the lines that say what ran, failed and was skipped (with the reasons).

    A module whose tests were all skipped has not been tested: that is reported as such, and fails with
    --no-skips like any skip."""
    skipped = [(test.id().rsplit(".", 1)[-1], reason) for test, reason in result.skipped]
    bad = len(result.failures) + len(result.errors) + len(result.unexpectedSuccesses)
    ran = result.testsRun - len(skipped)
    lines = [f"{moduleName}: {result.testsRun} test(s): {ran - bad} passed, {bad} failed or errored, "
             f"{len(skipped)} skipped"]
    lines += [f"  skipped {name}: {reason}" for name, reason in skipped]
    passed = result.wasSuccessful() and result.testsRun > 0
    if skipped and not allowSkips:
        lines.append(f"FAILED: {len(skipped)} test(s) skipped and --no-skips was given")
        passed = False
    elif passed and ran == 0:
        lines.append(f"{moduleName}: every test was skipped: nothing was verified")
    return passed, lines


def main(argv) -> int:
    args = parseArguments(argv)
    moduleNames = [m.strip() for m in args.modules.split(",") if m.strip()]
    results = {}
    for moduleName in moduleNames:
        try:
            results[moduleName] = runModuleTests(moduleName, allowSkips=not args.no_skips)
        except Exception:  # noqa: BLE001 - report and go on with the next module
            traceback.print_exc()
            results[moduleName] = (False, f"{moduleName}: unexpected error")
    print("\n===== Summary =====")
    for moduleName, (passed, line) in results.items():
        print(f"{'passed' if passed else 'FAILED'}: {line}")
    return 0 if results and all(passed for passed, _ in results.values()) else 1


# Slicer runs a --python-script file in its __main__ namespace; importing this file (name "run_slicer_selftests",
# e.g. to check it) does not run the tests.
if __name__ != "run_slicer_selftests":
    try:
        status = main(sys.argv[1:])
    except BaseException:  # noqa: BLE001 - whatever happens, Slicer must exit with a failure status
        traceback.print_exc()
        status = 1
    sys.stdout.flush()
    # sys.exit in a --python-script makes Slicer exit immediately with this status
    # (slicer.util.exit would only take effect once the event loop runs).
    sys.exit(status)
