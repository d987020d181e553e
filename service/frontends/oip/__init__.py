"""The Open Inference Protocol (KServe v2 REST) front-end: routes, messages and tensor encoding.

``routes.py`` holds the Flask blueprint and this protocol's error rendering, ``schema.py`` the
messages as pydantic models (also the source of their OpenAPI schemas), ``tensors.py`` the
conversion between the protocol's tensors and the data plane's images and features.
"""
