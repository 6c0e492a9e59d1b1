"""add-task's command-line choices and defaults, apart from the trainer so that `hermesseg --help` needs no torch."""

MODES = ("priors",)
# Cases named <patient>_frameNN (cine MR phases) are grouped by patient: no patient is split across train/held-out.
DEFAULT_SPLIT_GROUP_PATTERN = r"^(.+?)_frame\d+$"
DEFAULT_STEPS = 400
DEFAULT_TIME_LIMIT_S = 600.0
