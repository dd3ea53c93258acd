"""The versions of a served model: found in its export directory, loaded, and reloaded.

A version is complete when its numbered directory holds `saved_model.pb`: an export writes it
in a hidden `.staging-*` directory and renames it into place, so a version never appears
half-written. Each is loaded with `tf.saved_model.load` alone; its metadata is the SignatureDefs
of `saved_model.pb` as TF Serving reports them, and its class names come from the
`export_info.json` beside it.
"""

from __future__ import annotations

import gc
import json
import os
import re
import threading
from typing import Any, NamedTuple

from absl import logging
from google.protobuf import json_format
import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2

from keras_tutorial import rest, versions, warmup
from keras_tutorial.batching import Batcher

# An absolute path in a message: its last component is kept.
_ABSOLUTE_PATH = re.compile(r"(?<![\w.~:/-])/(?:[^\s/'\"]+/)+([^\s/'\"]*)")


class Version(NamedTuple):
    """A loaded version: its signatures, their inputs, their SignatureDefs (TF Serving's
    metadata, as REST's JSON and as protos for gRPC) and the class names it was exported with.
    `loaded` keeps the variables alive."""

    number: int
    loaded: Any
    inputs: dict[str, dict[str, Any]]
    signature_defs: dict[str, dict]
    signature_protos: dict[str, meta_graph_pb2.SignatureDef]
    class_names: list[str] | None


def read_signature_defs(path: str) -> dict[str, meta_graph_pb2.SignatureDef]:
    """The SignatureDefs of the version's serving MetaGraph, as `saved_model.pb` holds them."""
    saved_model = saved_model_pb2.SavedModel()
    with open(os.path.join(path, "saved_model.pb"), "rb") as f:
        saved_model.ParseFromString(f.read())
    graph = next(graph for graph in saved_model.meta_graphs if "serve" in graph.meta_info_def.tags)
    return dict(sorted(graph.signature_def.items()))


def signature_defs_json(protos: dict[str, meta_graph_pb2.SignatureDef]) -> dict[str, dict]:
    """SignatureDefs as TF Serving's metadata API writes them: proto JSON with every field."""
    return {name: json_format.MessageToDict(proto, preserving_proto_field_name=True,
                                            always_print_fields_with_no_presence=True)
            for name, proto in protos.items()}


def load_version(number: int, path: str) -> Version:
    """Loads one version with `tf.saved_model.load`, replays its warm-up requests (so its
    first user does not wait for TensorFlow's first call) and reads what its metadata needs."""
    loaded = tf.saved_model.load(path, tags=["serve"])
    replayed = warmup.replay(loaded, path)
    logging.info("Replayed %d warm-up requests of version %d", replayed, number)
    inputs = {name: function.structured_input_signature[1]
              for name, function in loaded.signatures.items()}
    protos = read_signature_defs(path)
    return Version(number, loaded, inputs, signature_defs_json(protos), protos,
                   _class_names(path))


def _class_names(path: str) -> list[str] | None:
    """The class names in the version's export_info.json; None without a readable one."""
    try:
        with open(os.path.join(path, versions.METADATA_FILE)) as f:
            names = json.load(f).get("class_names")
    except (OSError, ValueError, AttributeError):
        return None
    return names if isinstance(names, list) else None


class Repository:
    """The versions of one model, reloaded from its export directory by `refresh`, and run
    (as one batch with concurrent calls, given a `batcher`)."""

    def __init__(self, export_dir: str, name: str, batcher: Batcher | None = None):
        self.export_dir, self.name, self.batcher = export_dir, name, batcher
        self.versions: dict[int, Version] = {}
        self.failed: dict[int, tuple[tuple, str]] = {}  # number -> (directory stamp, error)
        self._lock = threading.Lock()

    def refresh(self) -> None:
        """Loads new complete versions, retries failed ones whose files changed, and drops
        versions whose directories are gone (TF Serving unloads those too). An export directory
        that cannot be read raises OSError and changes nothing."""
        with self._lock:
            found = versions.complete_versions(self.export_dir)
            loaded = {n: v for n, v in self.versions.items() if n in found}
            failed = {n: f for n, f in self.failed.items() if n in found}
            for number, path in sorted(found.items()):
                if number in loaded:
                    continue
                stamp = _stamp(path)
                if number in failed and failed[number][0] == stamp:
                    continue
                try:
                    loaded[number] = load_version(number, path)
                    failed.pop(number, None)
                    logging.info("Loaded version %d of %s from %s", number, self.name, path)
                except Exception as e:  # A broken version must not stop the others serving.
                    failed[number] = (stamp, self._for_clients(str(e)))
                    logging.warning("Cannot load version %d of %s: %s", number, self.name, e)
            if loaded.keys() - self.versions.keys():
                # A loaded version is 100,000s of Python objects that every full collection
                # would scan again, which slowed large JSON requests (benchmarks/README.md).
                gc.freeze()
            self.versions, self.failed = loaded, failed

    def find(self, model: str, number: int | None) -> Version:
        """The version a request names, the newest by default; TF Serving's 404 otherwise."""
        versions = self.versions if model == self.name else {}
        if number is None and versions:
            return versions[max(versions)]
        if number in versions:
            return versions[number]
        spec = f"Latest({model})" if number is None else f"Specific({model}, {number})"
        raise rest.RestError("NOT_FOUND", f"Servable not found for request: {spec}")

    def _for_clients(self, message: str) -> str:
        """An error message for clients: one line, no absolute path of this machine (paths
        in the export directory are written from the model's name, others as their file)."""
        message = " ".join(message.split())
        for root in {os.path.abspath(self.export_dir), self.export_dir}:
            message = message.replace(root.rstrip(os.sep) + os.sep, self.name + "/")
        return _ABSOLUTE_PATH.sub(lambda match: "<path>/" + match[1], message)[:500]

    def answering(self, model: str, number: int | None) -> int | None:
        """The version that answers a request for `model` and `number` (None: the newest), or
        None if none does: what metrics may label."""
        try:
            return self.find(model, number).number
        except rest.RestError:
            return None

    def run(self, version: Version, signature: str, tensors: dict[str, np.ndarray],
            ) -> dict[str, np.ndarray]:
        """Calls a signature of a version on input arrays; TensorFlow's errors as TF Serving
        reports them."""
        if self.batcher is None:
            return _call(version, signature, tensors)
        key = (version.number, signature, tuple((name, value.shape[1:], value.dtype.str)
                                                for name, value in sorted(tensors.items())))
        return self.batcher.call(key, lambda inputs: _call(version, signature, inputs), tensors)

    def status(self, model: str, number: int | None) -> dict:
        """TF Serving's GetModelStatusResponse: AVAILABLE versions, END for failed loads."""
        ok = {"error_code": "OK", "error_message": ""}
        entries = {} if model != self.name else {
            **{n: ("END", {"error_code": "UNKNOWN", "error_message": error})
               for n, (_, error) in self.failed.items()},
            **{n: ("AVAILABLE", ok) for n in self.versions}}
        if number is not None:
            if number not in entries:
                raise rest.RestError("NOT_FOUND",
                                     f"Could not find version {number} of model {model}")
            entries = {number: entries[number]}
        if not entries:
            raise rest.RestError("NOT_FOUND", f"Could not find any versions of model {model}")
        return {"model_version_status": [
            {"version": str(n), "state": state, "status": status}
            for n, (state, status) in sorted(entries.items(), reverse=True)]}

    def metadata(self, model: str, number: int | None) -> dict:
        """TF Serving's GetModelMetadataResponse, plus `class_names` where the export has them."""
        version = self.find(model, number)
        metadata = {"signature_def": {"signature_def": version.signature_defs}}
        if version.class_names:
            metadata["class_names"] = version.class_names
        return {"model_spec": {"name": self.name, "signature_name": "",
                               "version": str(version.number)},
                "metadata": metadata}


def _call(version: Version, signature: str, tensors: dict[str, np.ndarray],
          ) -> dict[str, np.ndarray]:
    try:
        outputs = version.loaded.signatures[signature](**{
            name: tf.constant(value) for name, value in tensors.items()})
    except tf.errors.OpError as e:
        raise rest.from_tf_error(e) from None
    return {name: value.numpy() for name, value in outputs.items()}


def _stamp(path: str) -> tuple:
    """What changes when a version's files are rewritten: a failed load is retried then."""
    stats = [os.stat(os.path.join(root, name))
             for root, _, names in os.walk(path) for name in names]
    return tuple(sorted((s.st_ino, s.st_size, s.st_mtime_ns) for s in stats))
