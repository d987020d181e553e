"""The protocols the service speaks, each only parsing, validating and rendering over the data plane:
``rest/`` (the layertap API), ``oip/`` (the Open Inference Protocol), ``openai/`` (OpenAI's embeddings
API), ``ui/`` (the debug page) and ``docs.py`` (the OpenAPI document); ``http/`` is what they share. No
front-end imports another or torch.
"""
