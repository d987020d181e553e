"""A runner per model: it loads the model, owns its thread (through a batcher), runs forward passes with
capture, and keeps the catalogue of the layers it serves.
"""
