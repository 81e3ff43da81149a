"""Old import paths of modules that moved in 0.2, kept working (with a DeprecationWarning) until 0.3."""

from __future__ import annotations

import importlib
import importlib.util
import sys
import warnings
from types import ModuleType

# old dotted prefix -> new one; `edgemeta.learners.maml` follows `edgemeta.learners`.
MOVED: dict[str, str] = {
    "edgemeta.atomic": "edgemeta.format.atomic",
    "edgemeta.backend": "edgemeta.train.backend",
    "edgemeta.bundle": "edgemeta.format.bundle",
    "edgemeta.checksum": "edgemeta.format.checksum",
    "edgemeta.devices": "edgemeta.profiles",
    "edgemeta.distribute": "edgemeta.train.distribute",
    "edgemeta.evaluation": "edgemeta.train.evaluation",
    "edgemeta.learners": "edgemeta.train.learners",
    "edgemeta.openset": "edgemeta.train.openset",
    "edgemeta.patches": "edgemeta.format.patches",
    "edgemeta.pipeline": "edgemeta.cli.deprecated_pipeline",  # its names scattered; the shim re-exports them
    "edgemeta.preprocessing": "edgemeta.format.preprocessing",
    "edgemeta.runtime.metric": "edgemeta.runtime.prototypes",
    "edgemeta.runtime.openset_threshold": "edgemeta.runtime.threshold",
    "edgemeta.service": "edgemeta.serve",
    "edgemeta.training": "edgemeta.train.training",
    "edgemeta.train.pipeline": "edgemeta.cli.deprecated_pipeline",
}


def new_name(old: str) -> str | None:
    """The module's current name, or None when `old` did not move."""
    for prefix, target in MOVED.items():
        if old == prefix or old.startswith(prefix + "."):
            return target + old[len(prefix):]
    return None


class _MovedModules:
    """Resolves an old name to the module itself (one module object, so classes and registries stay
    single), warning once per old name. A meta-path finder and loader by protocol, not by subclassing
    `importlib.abc`: importing that pulls in importlib.resources, tempfile, random, bz2 and lzma, 1.5 MB
    of resident memory in every board process (measured with VmRSS)."""

    def __init__(self) -> None:
        self._specs: dict[str, object] = {}

    def find_spec(self, fullname: str, path=None, target=None):  # noqa: ANN001 (importlib's signature)
        if not fullname.startswith("edgemeta."):  # first on sys.meta_path: every other import passes here
            return None
        target_name = new_name(fullname)
        if target_name is None:
            return None
        return importlib.util.spec_from_loader(fullname, self, origin=target_name)

    def create_module(self, spec) -> ModuleType:  # noqa: ANN001
        warnings.warn(f"{spec.name} moved to {spec.origin}; the old path stops working in edgemeta 0.3.",
                      DeprecationWarning, stacklevel=3)
        module = importlib.import_module(spec.origin)
        self._specs[spec.name] = module.__spec__  # the import system overwrites it with the alias's; put it back
        return module

    def exec_module(self, module: ModuleType) -> None:
        module.__spec__ = self._specs.pop(module.__spec__.name)


def install() -> None:
    if not any(isinstance(f, _MovedModules) for f in sys.meta_path):
        sys.meta_path.insert(0, _MovedModules())  # before the path finder, which would load a second copy
