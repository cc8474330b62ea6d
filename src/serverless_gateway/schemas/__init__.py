"""Pydantic request and response models, named after the spec."""
