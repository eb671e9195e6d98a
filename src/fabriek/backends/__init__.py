"""Backends run jobs; they never decide policy. One package each, behind `base.Backend`."""
