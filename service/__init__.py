"""layertap: the outputs of any named layers of a torchvision model, over HTTP."""

__version__ = "0.1.0"
