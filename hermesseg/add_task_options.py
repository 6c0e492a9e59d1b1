"""add-task's command-line choices and defaults, apart from the trainer so that `hermesseg --help` needs no torch."""

# priors: only the new prior rows train (spec 4); adapter: the new rows and a group adapter (hermesseg.network.
# group_adapter), the default because it measurably learns what the priors of the default model cannot (README).
MODES = ("adapter", "priors")
DEFAULT_MODE = "adapter"
# Cases named <patient>_frameNN (cine MR phases) are grouped by patient: no patient is split across train/held-out.
DEFAULT_SPLIT_GROUP_PATTERN = r"^(.+?)_frame\d+$"
# Without --steps a run trains DEFAULT_TOTAL_STEPS steps, shared by its phases: 400 each for the held-out training
# and the refit, all 800 for a run with one phase (fewer than 3 patients, or --no-refit). So the default length does
# not depend on how many cases there are (ACDC, 1 patient, adapter: 400 steps used 291 of the 600 s). --steps N is
# per phase.
DEFAULT_TOTAL_STEPS = 800
DEFAULT_TIME_LIMIT_S = 600.0
