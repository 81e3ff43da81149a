"""edgemeta: meta-train few-shot learners in Keras, ship them as int8 TFLite bundles, adapt on a board.

Two sides and the bridge between them:
- board (no TensorFlow): `edgemeta.format` (the bundle), `edgemeta.data` (datasets and episode indices),
  `edgemeta.runtime` (adapter), `edgemeta.serve` (HTTP service), `edgemeta.profiles` (boards);
- workstation: `edgemeta.train` (tf_keras learners, training, calibration), `edgemeta.compress` (TFMOT),
  and the top-level `converters` package (Keras -> TFLite bundle);
- bridge: `edgemeta.deploy` (workstation -> boards over SSH) and `edgemeta.cli` (the `edgemeta` command).
Importing `edgemeta` never imports TensorFlow.
"""

from edgemeta import _moved

__version__ = "0.1.0"

_moved.install()
