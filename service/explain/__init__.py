"""Explanations from gradients: the Grad-CAM family at a layer, integrated gradients on the input, and the
model thread's explain jobs. ``methods.py`` names the methods without torch, for the front-ends.
"""
