"""The plan: what the user asked for, and everything checked about it before any work starts.

Owns the plan file and the command-line flags that override it (`spec`), what the plan needs from
the hub (`sources`, `needs`), the checks of every model folder, tokenizer and dataset before a
model loads (`preflight`, `model_folder`, `hubcheck`), reading the datasets offline (`data`), the
task each dataset runs (`tasks`) and the dry pass over every row's prompt and gold (`dry_run`).

May import: `evalcore.errors`, `evalcore.benchmarks`, `evalcore.backends` (the model description,
the registry and the checkpoint file names: nothing heavy), and what they may import, `cachekit`.
Pure apart from the file reads it names; importing it loads no heavy library.
"""
