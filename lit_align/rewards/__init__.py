"""lit_align.rewards."""
