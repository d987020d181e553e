"""Models, from their sources: model entries, weights, building and placing, the tap that captures true
layer outputs, shapes on the meta device, the roles layers play, batch-norm folding, and int8.
"""
