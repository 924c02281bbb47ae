"""Attribute directions (language, PCA, gradient projection) and swap-step trajectories."""
from xcounter.disentangle.directions import (GradientProjection, LanguageDirections, PCADirections, cosine_matrix,
                                             orthogonalize, phrase_bank_embeddings)
from xcounter.disentangle.trajectories import bezier, strength_of, swap_step_points

__all__ = ["GradientProjection", "LanguageDirections", "PCADirections", "bezier", "cosine_matrix", "orthogonalize",
           "phrase_bank_embeddings", "strength_of", "swap_step_points"]
