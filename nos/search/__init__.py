"""Rewards teach a controller: the search space, fingerprints, the config, the Ray workers,
the driver and the run store."""
