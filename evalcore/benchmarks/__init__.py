"""The benchmark registry: every benchmark evalcore runs is one `Task` definition, whether it is
built in (`builtin.py`), written in a plan (`plan_sets.py`) or read from an lm-eval task file
(`taskfile.py`). The driver, the worker, the dry pass (`validate.py`), `cachekit prefetch --plan`
and `evalcore needs` all read that one definition.

Importing this package imports nothing heavy and has no side effects.
"""
