"""GUI-free logic of the Hermes Training module (importable without Qt; tested headless with slicer-core)."""
