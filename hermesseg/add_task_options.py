"""add-task's command-line choices and defaults, apart from the trainer so that `hermesseg --help` needs no torch."""

# priors: only the new prior rows train (spec 4); adapter: the new rows and a group adapter (hermesseg.network.
# group_adapter), the default because it measurably learns what the priors of the default model cannot (README).
MODES = ("adapter", "priors")
DEFAULT_MODE = "adapter"
# Cases named <patient>_frameNN (cine MR phases) are grouped by patient: no patient is split across train/held-out.
DEFAULT_SPLIT_GROUP_PATTERN = r"^(.+?)_frame\d+$"
DEFAULT_STEPS = 400
DEFAULT_TIME_LIMIT_S = 600.0
