"""Evaluation: verification accuracy on pairs, privacy audit, plots."""
from .verification import (VerificationInputError, VerificationResult, accuracy_from_distances,
                           raw_pixel_accuracy, ten_fold_accuracy)

__all__ = ["VerificationInputError", "VerificationResult", "accuracy_from_distances",
           "raw_pixel_accuracy", "ten_fold_accuracy"]

