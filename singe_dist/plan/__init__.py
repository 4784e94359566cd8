"""Pruning decisions: cost of channels, global selection under a budget, and replayable plans."""
