"""layertap's benchmark: the real service over loopback against the in-process limit (``make bench``)."""
