"""Capacity planning: a discrete-event simulator of the fleet on the engine's real scheduler."""
