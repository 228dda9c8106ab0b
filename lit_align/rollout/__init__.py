"""lit_align.rollout."""
