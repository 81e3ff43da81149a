"""edgemeta: meta-train few-shot learners in Keras, ship them as int8 TFLite bundles, adapt on a board.

Importing `edgemeta` (or `edgemeta.runtime`) never imports TensorFlow; the training side lives in
`edgemeta.learners`, `edgemeta.data.episodes` and `converters`, which import it through
`edgemeta.backend`.
"""

__version__ = "0.1.0"
