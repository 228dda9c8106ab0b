"""lit_align.data."""
