"""The Slurm backend: fabriek decides who runs and where; Slurm places and runs the work."""
