"""The simulator: real job traces replayed through fabriek's own admission engine, on a virtual clock."""
