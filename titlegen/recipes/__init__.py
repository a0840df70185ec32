"""The recipes: one command each, a thin script over the library, read top to bottom.

``titlegen-train`` (`titlegen.recipes.train`), ``titlegen-predict`` (`titlegen.recipes.predict`), ``titlegen-compare``
(`titlegen.recipes.compare`) and ``titlegen-rl`` (`titlegen.recipes.rl`); each also runs as
``python -m titlegen.recipes.NAME``.
"""
