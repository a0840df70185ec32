"""titlegen's recipes: self-contained scripts that read top to bottom (``main(argv)`` in each)."""
