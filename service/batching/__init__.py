"""Admission and dynamic batching on one thread: room reserved before decoding, a fair line for it, deadlines,
and batches of one kind. It knows nothing of models or torch.
"""
