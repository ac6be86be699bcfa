"""Runnable notebooks for optax-flax-contrib (see ``colabs/NOTEBOOK_GUIDE.md``).

They live in the repository, not in the ``optax-flax-contrib`` wheel. ``python -m colabs``
runs every notebook headless in quick mode and prints one summary line per notebook;
``colabs.corpora`` is the one module the notebooks import besides the library (offline
People's Daily data, clause spans, span F1); ``colabs.sync`` renders the notebooks' badge and
setup cells and README.md's notebook table (``python -m colabs --sync-links`` / ``--readme``).
"""
