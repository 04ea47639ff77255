"""The engine: how a run's work is kept, handed out and done, whatever starts the workers.

Owns the SQLite task ledger and its schema (`db`, `ledger`, `ledger_schema`), the GPU lease
table (`leases`, `gpus`, `placement`), the split into partitions (`partition`), a run's folder (`runctx`,
`runlock`, `runstate`, `settings`, `security`), the worker loop (`worker`), the spool through
which Slurm jobs reach the ledger (`spool`), reading samples back (`samples`), progress lines
(`progress`) and rescoring stored samples (`rescore`).

May import: `evalcore.errors`, `isolation`, `scoring`, `benchmarks`, `backends`, `plan`, `cachekit`.
Never a runner or a report: runners drive the engine, reports read what it wrote.
"""
