"""Stress tools for layertap: a bad-input corpus, overload, soak and fault drills (``make stress``)."""
