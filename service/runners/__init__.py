"""A runner per model: it loads the model, owns its thread (through a batcher) and runs forward passes with
capture (runner.py); the catalogue of the layers it serves (catalogue.py); the work requests hand its
thread (work.py); and the seams through which it meets its surroundings (seams.py).
"""
