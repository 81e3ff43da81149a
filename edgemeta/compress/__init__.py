"""Compression of a meta-trained embedding, judged by few-shot accuracy on held-out classes.

Pruning, clustering and quantization-aware training come from TensorFlow Model Optimization; every
fine-tuning stage uses the episodic loss. `compress` runs one `CompressionRecipe`, `compress_variants`
several with a report (markdown, JSON, Pareto plot).
"""

from edgemeta.compress.compressor import compress, compress_variants, distil, fine_tune_stages
from edgemeta.compress.distillation import Distiller
from edgemeta.compress.recipe import CompressionRecipe, load_recipes

__all__ = ["CompressionRecipe", "Distiller", "compress", "compress_variants", "distil", "fine_tune_stages", "load_recipes"]
