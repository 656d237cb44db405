"""fedkt: personalized federated learning across heterogeneous models by knowledge transfer."""

__version__ = "0.1.0"
