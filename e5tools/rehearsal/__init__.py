"""Repository-only rehearsals: the scale rehearsal, the whole-job CPU accounting, the changing-corpus
benchmark, the model-digest cost, and the rehearsal corpus they share. Run from a checkout
(``python -m e5tools.rehearsal.scale``); the wheel leaves this package out (pyproject.toml), while
``e5-embed demo`` and ``e5-embed bench`` (the ``demo`` extra) ship."""
