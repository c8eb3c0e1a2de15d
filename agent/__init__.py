"""Holdfast's endpoint agent: deploys itself from a policy, registers, backs the user's home up."""

__version__ = "0.1.0"
__all__ = ["__version__"]
