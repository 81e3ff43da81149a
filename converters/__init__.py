"""Converts trained tf_keras embedding models into edgemeta bundles (TFLite model + manifest)."""

from converters.tflite import QUANTIZATIONS, export_bundle, to_tflite

__all__ = ["QUANTIZATIONS", "export_bundle", "to_tflite"]
