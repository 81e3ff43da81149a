"""The TensorFlow-free on-device runtime: a bundle's model, its preprocessing, and few-shot adaptation.

Needs numpy, Pillow and a TFLite interpreter (ai-edge-litert, else tflite_runtime, else tensorflow.lite).
"""

from edgemeta.runtime.adapter import ClassInfo, FewShotAdapter, MemoryBudgetError, Prediction
from edgemeta.runtime.embedder import Embedder
from edgemeta.runtime.interpreter import interpreter_class
from edgemeta.runtime.store import PrototypeStore, StoreError, StoreLockedError, StoreReadOnlyError

__all__ = ["ClassInfo", "Embedder", "FewShotAdapter", "MemoryBudgetError", "Prediction", "PrototypeStore", "StoreError",
           "StoreLockedError", "StoreReadOnlyError", "interpreter_class"]
