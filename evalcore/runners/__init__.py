"""Runners drive a run: `driver` prepares it (preflight, partitions, the ledger) and watches it
to the end; a runner starts its workers — `local` as processes on this host, `slurm` as sbatch
jobs that reach the ledger through the engine's spool (its other jobs in `slurm_*`: settings,
batch script, client calls, job records, retry policy, cancellation, lock and signals).
`registry` is the one table of runners by name, with what each one's workers are like and the
check of its `[run.<name>]` table; nothing else branches on a runner's name.

May import: everything in `evalcore` except `report`.
"""
