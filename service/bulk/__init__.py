"""Embedding at cluster scale: the service's model runner as a Ray Data stage, and ``layertap-ray embed``."""
