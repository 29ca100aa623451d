"""The data path: worker processes, listeners, downstream and upstream connections, clusters."""
