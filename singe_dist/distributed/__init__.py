"""Distribution on Ray: Ray Train launches the same pruning loop on every worker."""
