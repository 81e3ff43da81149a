"""Converts trained tf_keras embedding models into edgemeta bundles (TFLite model + manifest)."""

from converters.edgetpu import EdgeTPUReport, check_edgetpu, compile_for_edgetpu, static_batch_model
from converters.tflite import QUANTIZATIONS, export_bundle, to_tflite

__all__ = ["QUANTIZATIONS", "EdgeTPUReport", "check_edgetpu", "compile_for_edgetpu", "export_bundle",
           "static_batch_model", "to_tflite"]
