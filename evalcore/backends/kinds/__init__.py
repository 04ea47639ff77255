"""One module per backend, each defining `KIND` (an `evalcore.backends.registry.BackendKind`).
The module's name is the backend's name in a plan (`backend = "hf"`). These modules import
nothing heavy: the backend's own code is imported by `KIND.load` only when a model loads."""
