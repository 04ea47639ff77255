"""Operating-system isolation: the offline switches and socket guard (`offline`), a loopback-only
network namespace for workers (`netns`), and the user/mount/PID namespace box built on bubblewrap
(`nsbox`) in which model-written code runs. Mechanisms only; what a run chooses and records is
`evalcore.engine.security`.

May import: `evalcore.errors` and the standard library. Nothing here imports an HF library.
"""
