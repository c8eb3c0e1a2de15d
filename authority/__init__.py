"""Holdfast's reference authority server: organizations, deployment policies, devices."""

__version__ = "0.1.0"
__all__ = ["__version__"]
