"""Run directories: run files, Orbax checkpoints, atomic directory builds."""
