"""The leaf layer: facts and checks every other part of dsquant reads, importing nothing else from
dsquant (a test walks the imports to keep it so)."""
from . import threads  # noqa: F401  (registers the at-fork handler at `import dsquant`, see threads.py)
