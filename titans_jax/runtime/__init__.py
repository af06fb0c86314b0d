"""What training and evaluation both run on: model/step building, steps, checkpoints.

Below `training` and `evaluation`, which never import each other (docs/architecture.md).
"""
