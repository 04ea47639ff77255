"""evalcore: offline batch evaluation of language models (plan, ledger, workers, metrics).

Importing this package loads no heavy library; torch and transformers are imported only by the
inference backend.
"""

__version__ = "0.1.0"
