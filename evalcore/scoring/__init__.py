"""Scoring primitives: the metric functions (`metrics`: choice from log-likelihoods, exact
match, regex filters, GSM8K and BBH answer extraction, stderr) and the sandbox that runs model-written code to score it (`sandbox`, with the child's own code in
`sandbox_bootstrap`). Which metric a
benchmark uses, and how a sample's output becomes its score, belongs to `evalcore.benchmarks`.

May import: `evalcore.errors`, `evalcore.isolation`. Pure apart from the sandbox's processes.
"""
