"""The Open Inference Protocol (KServe v2) under ``/v2``: its messages, tensors, routes and operations."""
