"""What the HTTP front-ends share: JSON answers and the one error renderer, request bodies and the upload gate,
bearer authentication, the front-end registry, and the pieces of the OpenAPI document.
"""
