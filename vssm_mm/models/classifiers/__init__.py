"""Classifiers and heads registered in the ``vssm_mm`` scope (used from mmpretrain configs)."""
from .distill import DistillImageClassifier, DistillLinearClsHead

__all__ = ['DistillImageClassifier', 'DistillLinearClsHead']
