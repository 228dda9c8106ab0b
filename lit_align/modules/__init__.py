"""lit_align.modules."""
