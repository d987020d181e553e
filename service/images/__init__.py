"""Images, from bytes to the model's input batch: decoding and preprocessing with bounded memory, the batched
JPEG decoder (on the GPU, or torchvision's on the CPU), batch assembly, and normalization.

It knows an entry's preprocessing recipe (``recipe.py``), not what a model is.
"""
