"""OpenAI's embeddings API under ``/v1``: images as data URLs and texts, its messages, routes and operations."""
