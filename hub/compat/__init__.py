"""Compatibility layers for code written against other libraries' APIs, backed by vithub's kernels:
:mod:`vithub.compat.natten` (NATTEN's old unfused functional API) and :mod:`vithub.compat.transformers` (Hugging
Face transformers' DiNAT models on those ops). Nothing here installs or shadows another library's module."""
