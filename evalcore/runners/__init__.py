"""Runners start workers for a run and watch them: `local` (processes on this host), `slurm`."""
