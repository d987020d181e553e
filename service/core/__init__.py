"""The ground floor: domain errors, typed settings, and what the hardware offers. No torch, no HTTP.

Every other subpackage may import this one; it imports none of them.
"""
