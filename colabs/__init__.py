"""Runnable notebooks for optax-flax-contrib (see ``colabs/NOTEBOOK_GUIDE.md``).

``python -m colabs`` runs every notebook headless in quick mode and prints one summary line
per notebook; ``colabs.corpora`` loads the offline People's Daily data they use.
"""
