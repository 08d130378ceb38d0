"""Connectors, one package per system: `files` (JSON Lines), `kafka`, `mongo`; `dlq` routes dead letters.

    from dataflows.connectors.files import JsonlSink
    from dataflows.connectors.kafka import kafka_source_from_config
    from dataflows.connectors.mongo import mongo_sink_from_config

Recovery state written before issue 11 pickled classes under the flat module paths of that
time (`dataflows.connectors.mongo_source.NamespaceState`; Bytewax restores a snapshot with
`pickle.loads`, which imports the recorded module). `_MOVED` maps each such path to the
module that holds the class now; the finder below makes the old path import the new module
(the same module object, so `isinstance` holds). Only pickled modules are listed: code
imports the new paths.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
from collections.abc import Sequence
from types import ModuleType

__all__: list[str] = []

_MOVED = {
    # NamespaceState / ScanProgress: the Mongo source partition's snapshot
    "dataflows.connectors.mongo_source": "dataflows.connectors.mongo.source",
}


class _MovedModule(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports a path of `_MOVED` as the module it moved to."""

    _own_spec: importlib.machinery.ModuleSpec | None = None

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in _MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        module = importlib.import_module(_MOVED[spec.name])
        self._own_spec = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        # the import system has just set `__spec__` to the alias's spec: give the module its own back
        module.__spec__ = self._own_spec


if not any(isinstance(f, _MovedModule) for f in sys.meta_path):
    sys.meta_path.append(_MovedModule())
