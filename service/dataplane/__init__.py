"""The protocol-neutral data plane: route to a model, validate, extract, explain, trace shapes, describe;
and the per-request pooling of captured layers. It raises domain errors and knows no HTTP.
"""
