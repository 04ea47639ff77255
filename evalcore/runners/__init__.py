"""Runners drive a run: `driver` prepares it (preflight, partitions, the ledger) and watches it
to the end; a runner starts its workers — `local` as processes on this host, `slurm` as sbatch
jobs that reach the ledger through the engine's spool.

May import: everything in `evalcore` except `report`.
"""
