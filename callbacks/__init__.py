"""Lightning callbacks of lit_align (installed as lit_align.callbacks)."""
