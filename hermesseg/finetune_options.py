"""finetune's command-line defaults, apart from the trainer so that `hermesseg --help` needs no torch."""

# The learning rate of the decoder, fusion layers and heads (train's default); the backbone (stem and encoder
# stages) trains at DEFAULT_BACKBONE_LR_SCALE x, as spec 4 ("Transfer") suggests, the new rows at NEW_ROWS_LR_SCALE x
# (add-task's 1e-2 at the default).
DEFAULT_LR = 1e-3
DEFAULT_BACKBONE_LR_SCALE = 0.1
NEW_ROWS_LR_SCALE = 10.0
