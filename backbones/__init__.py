"""vithub.backbones: one module per model family (timm style); importing this package registers every ``vh_*`` model.

Families register themselves here as they land; each runs its attention through :mod:`vithub.kernels`.
"""
