"""TensorFlow Serving's gRPC API (PredictionService, ModelService) over the served versions.

Stock clients work unchanged: `Predict` takes TensorProtos and answers them in the typed
`*_val` fields (`result.outputs["probabilities"].float_val`), as TF Serving's default does;
`GetModelMetadata` answers the SignatureDefs packed in an `Any`; `GetModelStatus` the versions'
states. Errors carry TF Serving's status codes and messages, one line each, and never a path
or a traceback. Requests run through the same `Repository` as REST, so both protocols answer
the same tensors alike, batched together with `--enable_batching`.

What differs from TF Serving: a `version_label` is refused with INVALID_ARGUMENT (the server
has no labels, as TF Serving with `allow_version_labels` off); `Classify`, `Regress`,
`MultiInference` and `HandleReloadConfigRequest` answer UNIMPLEMENTED (the exports have predict
signatures only, and the export directory is the config); an input's dtype is checked before
the run, with a message naming the input; a tensor whose shape asks for more memory than a
request of the size limit could spell out is refused, where TF Serving would allocate it; and
error messages are cut short, as they can echo a client's names.
"""

from __future__ import annotations

from concurrent import futures
import math
import time
from typing import Callable

from absl import logging
from google.protobuf import json_format
import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2, model_pb2,
                                     model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc)

from keras_tutorial import guard, rest
from keras_tutorial.errors import UserError
from keras_tutorial.metrics import Metrics
from keras_tutorial.repository import Repository, Version

DEFAULT_MAX_WORKERS = 32  # Enough concurrent calls to fill a batch of --max_batch_size 32.
DEFAULT_MAX_CONCURRENT_RPCS = 64  # Running or waiting for a worker; more get RESOURCE_EXHAUSTED.
# An answer takes up to ~55 bytes an example (10 floats, a class, its name); a request can
# send an example in 37 (a 1x1 GIF), so answers may outgrow requests.
ANSWER_BYTES_PER_MESSAGE_BYTE = 4
# No tensor that a request spells out value by value decodes to more than 8 bytes a byte
# (an int64 written as a one-byte varint); only shapes padded with a repeated value do.
TENSOR_BYTES_PER_MESSAGE_BYTE = 8
MAX_DETAILS = 500  # Characters of an error message: it may echo names a client sent.
SIGNATURE_DEF = "signature_def"
# Network hardening that a user never has to set: dead peers are found by pings, idle
# connections closed (clients reconnect on their own), connections renewed now and then with
# time for their calls to finish, and a connection that does not finish its handshake dropped.
_CONNECTION_OPTIONS = (("grpc.keepalive_time_ms", 60_000),
                       ("grpc.keepalive_timeout_ms", 20_000),
                       ("grpc.max_connection_idle_ms", 300_000),
                       ("grpc.max_connection_age_ms", 1_800_000),
                       ("grpc.max_connection_age_grace_ms", 30_000),
                       ("grpc.server_handshake_timeout_ms", 10_000),
                       ("grpc.so_reuseport", 0))  # A port in use is an error, not shared.

# TF Serving's Tensor::AsProtoField: the typed field of each dtype, and the integer or float
# view its values are written as (16-bit floats as their bits, complex as pairs of floats).
_FIELDS = {tf.float32: ("float_val", None), tf.float64: ("double_val", None),
           tf.float16: ("half_val", np.uint16), tf.bfloat16: ("half_val", np.uint16),
           tf.int8: ("int_val", None), tf.int16: ("int_val", None), tf.int32: ("int_val", None),
           tf.uint8: ("int_val", None), tf.uint16: ("int_val", None),
           tf.int64: ("int64_val", None), tf.uint32: ("uint32_val", None),
           tf.uint64: ("uint64_val", None), tf.bool: ("bool_val", None),
           tf.complex64: ("scomplex_val", np.float32), tf.complex128: ("dcomplex_val", np.float64),
           tf.string: ("string_val", None)}


class _Outcome:
    """What a call learnt for the metrics: the version that answered and the batch size."""

    def __init__(self):
        self.version: int | None = None
        self.examples: int | None = None


def _answer(metrics: Metrics | None, api: str, model: str, context: grpc.ServicerContext,
            handler: Callable[[_Outcome], object]) -> object:
    """Runs `handler`, records the call, and aborts with the error's code and one line."""
    start, outcome = time.perf_counter(), _Outcome()
    try:
        response, code, details = handler(outcome), "OK", ""
    except rest.RestError as e:
        response, code, details = None, e.code, str(e)
    except Exception as e:  # Anything else is the server's fault; the client gets no trace.
        logging.exception("gRPC %s failed", api)
        response, code, details = None, "INTERNAL", f"Internal error: {type(e).__name__}"
    if metrics is not None:
        metrics.record("grpc", api, model, outcome.version, code, time.perf_counter() - start,
                       outcome.examples if code == "OK" else None)
    if code != "OK":
        context.abort(grpc.StatusCode[code], _one_line(details))
    return response


def _one_line(message: str) -> str:
    text = " ".join(message.split())
    return text if len(text) <= MAX_DETAILS else text[:MAX_DETAILS] + "..."


def _requested_version(request) -> int | None:
    """The version a request's ModelSpec names (None: the newest), as TF Serving reads it."""
    if not request.HasField("model_spec"):
        raise rest.invalid("Missing ModelSpec")
    spec = request.model_spec
    if not spec.name:
        raise rest.invalid("ModelSpec has no name specified.")
    choice = spec.WhichOneof("version_choice")
    if choice == "version_label":
        raise rest.invalid("ModelSpec has 'version_label' set, but it is not currently allowed "
                           "by the server.")
    return spec.version.value if choice == "version" else None


def _dtype_name(dtype: int) -> str:
    """TensorFlow's name of a DataType enum value: float, uint8, string."""
    try:
        return types_pb2.DataType.Name(dtype).removeprefix("DT_").lower()
    except ValueError:
        return f"unknown type {dtype}"


def to_array(proto: tensor_pb2.TensorProto, alias: str, max_bytes: int) -> np.ndarray:
    """A request's TensorProto as an array; TF Serving's parsing error if it is malformed, and
    ours if its shape would take more than `max_bytes`."""
    dims = [dim.size for dim in proto.tensor_shape.dim]
    dtype = tf.dtypes.as_dtype(proto.dtype)
    if any(size < 0 for size in dims):
        raise rest.invalid(f"tensor parsing error: {alias}")
    if math.prod(dims) * np.dtype(dtype.as_numpy_dtype).itemsize > max_bytes:
        raise rest.invalid(f"tensor parsing error: {alias}: shape {dims} takes more than the "
                           f"server's limit of {max_bytes} bytes")
    try:
        return tf.make_ndarray(proto)
    except (ValueError, TypeError, OverflowError):
        raise rest.invalid(f"tensor parsing error: {alias}") from None


def fill_tensor(proto: tensor_pb2.TensorProto, array: np.ndarray) -> None:
    """Writes an output array as TF Serving does by default: dtype, shape, and the values in
    the dtype's typed field (`float_val`, `int64_val`, `string_val`, ...), not `tensor_content`."""
    dtype = tf.dtypes.as_dtype(array.dtype)
    field, view = _FIELDS[dtype]
    proto.dtype = dtype.as_datatype_enum
    for size in array.shape:
        proto.tensor_shape.dim.add(size=size)
    values = array.ravel() if view is None else array.ravel().view(view)
    # tolist() first: the field takes Python numbers in bulk, far faster than NumPy scalars
    # (benchmarks/README.md, "Serving").
    getattr(proto, field).extend(values.tolist())


def _check_names(version: Version, signature: str, request: predict_pb2.PredictRequest,
                 ) -> None:
    """TF Serving's errors for inputs that are not the signature's: too few, too many, others."""
    expected = version.signature_protos[signature].inputs
    sent, wanted = set(request.inputs), set(expected)
    if len(sent) != len(wanted):
        raise rest.invalid(
            f"input size does not match signature: {len(sent)}!={len(wanted)} "
            f"len({{{','.join(sorted(sent))}}}) != len({{{','.join(sorted(wanted))}}}). "
            f"Sent extra: {{{','.join(sorted(sent - wanted))}}}. "
            f"Missing but required: {{{','.join(sorted(wanted - sent))}}}.")
    missing = sorted(wanted - sent)
    if missing:
        raise rest.invalid(
            f"Signature input alias: {missing[0]}(feed name: {expected[missing[0]].name}) not "
            f"found in request and no default value provided. Inputs expected to be in the "
            f"request {{{','.join(sorted(sent))}}}, or default input alias set: ")


def _arrays(version: Version, signature: str, request: predict_pb2.PredictRequest,
            max_bytes: int) -> dict[str, np.ndarray]:
    """The request's inputs as arrays of the signature's dtypes (TF Serving's run refuses
    others as `Expects arg[0] to be uint8 but float is provided`)."""
    expected = version.signature_protos[signature].inputs
    arrays = {}
    for index, alias in enumerate(sorted(expected)):
        proto, dtype = request.inputs[alias], expected[alias].dtype
        if proto.dtype != dtype:
            raise rest.invalid(f"Expects arg[{index}] to be {_dtype_name(dtype)} but "
                               f"{_dtype_name(proto.dtype)} is provided (input {alias})"
                               f"{_image_files_hint(version, proto.dtype, dtype)}")
        arrays[alias] = to_array(proto, alias, max_bytes)
    return arrays


def _image_files_hint(version: Version, sent: int, expected: int) -> str:
    """Where strings sent to a numeric input should go: encoded image files are
    `serve_images`'s to read, if the version has it."""
    images = version.signature_protos.get("serve_images")
    if sent != types_pb2.DT_STRING or expected == types_pb2.DT_STRING or images is None:
        return ""
    return (f'; to send encoded image files, set model_spec.signature_name to "serve_images" '
            f"and name the input {', '.join(sorted(images.inputs))}")


def _output_aliases(version: Version, signature: str, output_filter) -> list[str]:
    """The outputs to answer: those of `output_filter`, all by default; TF Serving's errors."""
    outputs = sorted(version.signature_protos[signature].outputs)
    for i, alias in enumerate(output_filter):
        if alias not in outputs:
            raise rest.invalid(f"output tensor alias not found in signature: {alias} Outputs "
                               f"expected to be in the set {{{','.join(outputs)}}}.")
        if alias in output_filter[:i]:
            raise rest.invalid(f"duplicate output tensor alias: {alias}")
    return list(output_filter) or outputs


def _model_spec(name: str, version: int, signature: str = "") -> model_pb2.ModelSpec:
    spec = model_pb2.ModelSpec(name=name, signature_name=signature)
    spec.version.value = version
    return spec


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Predict and GetModelMetadata as TF Serving answers them; no classify or regress."""

    def __init__(self, repository: Repository, metrics: Metrics | None = None,
                 max_tensor_bytes: int = (TENSOR_BYTES_PER_MESSAGE_BYTE
                                          * guard.DEFAULT_MAX_REQUEST_BYTES)):
        self.repository, self.metrics, self.max_tensor_bytes = (repository, metrics,
                                                                max_tensor_bytes)

    def Predict(self, request: predict_pb2.PredictRequest, context: grpc.ServicerContext,
                ) -> predict_pb2.PredictResponse:
        """Runs a signature on the request's tensors, in TF Serving's order of checks."""
        return _answer(self.metrics, "predict", request.model_spec.name, context,
                       lambda outcome: self._predict(request, outcome))

    def _predict(self, request: predict_pb2.PredictRequest, outcome: _Outcome,
                 ) -> predict_pb2.PredictResponse:
        version = self.repository.find(request.model_spec.name, _requested_version(request))
        outcome.version = version.number
        signature = request.model_spec.signature_name or "serving_default"
        if signature not in version.inputs:
            raise rest.RestError("FAILED_PRECONDITION",
                                 f'Serving signature key "{signature}" not found.')
        _check_names(version, signature, request)
        aliases = _output_aliases(version, signature, list(request.output_filter))
        tensors = _arrays(version, signature, request, self.max_tensor_bytes)
        outputs = self.repository.run(version, signature, tensors)
        outcome.examples = next((len(v) for v in tensors.values() if v.ndim), None)
        response = predict_pb2.PredictResponse(
            model_spec=_model_spec(self.repository.name, version.number, signature))
        for alias in aliases:
            fill_tensor(response.outputs[alias], outputs[alias])
        return response

    def GetModelMetadata(self, request: get_model_metadata_pb2.GetModelMetadataRequest,
                         context: grpc.ServicerContext,
                         ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        """The version's SignatureDefs, the one metadata field TF Serving has."""
        return _answer(self.metrics, "get_model_metadata", request.model_spec.name, context,
                       lambda outcome: self._metadata(request, outcome))

    def _metadata(self, request: get_model_metadata_pb2.GetModelMetadataRequest,
                  outcome: _Outcome) -> get_model_metadata_pb2.GetModelMetadataResponse:
        if not request.HasField("model_spec"):
            raise rest.invalid("Missing ModelSpec")
        if not request.metadata_field:
            raise rest.invalid("GetModelMetadataRequest must specify at least one "
                               "metadata_field")
        for field in request.metadata_field:
            if field != SIGNATURE_DEF:
                raise rest.invalid(f"Metadata field {field} is not supported")
        version = self.repository.find(request.model_spec.name, _requested_version(request))
        outcome.version = version.number
        response = get_model_metadata_pb2.GetModelMetadataResponse(
            model_spec=_model_spec(self.repository.name, version.number))
        response.metadata[SIGNATURE_DEF].Pack(
            get_model_metadata_pb2.SignatureDefMap(signature_def=version.signature_protos))
        return response

    def Classify(self, request, context: grpc.ServicerContext):
        """Not served: the exports have predict signatures only."""
        return self._unimplemented("classify", "Classify", request.model_spec.name, context)

    def Regress(self, request, context: grpc.ServicerContext):
        """Not served: the exports have predict signatures only."""
        return self._unimplemented("regress", "Regress", request.model_spec.name, context)

    def MultiInference(self, request, context: grpc.ServicerContext):
        """Not served: it runs classify and regress signatures, which the exports lack."""
        model = request.tasks[0].model_spec.name if request.tasks else ""
        return self._unimplemented("multi_inference", "MultiInference", model, context)

    def _unimplemented(self, api: str, method: str, model: str, context: grpc.ServicerContext):
        def refuse(_: _Outcome):
            raise rest.RestError("UNIMPLEMENTED", f"{method} is not supported by this server: "
                                 "its models have predict signatures only; use Predict")

        return _answer(self.metrics, api, model, context, refuse)


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    """GetModelStatus as TF Serving answers it; the configuration is the export directory."""

    def __init__(self, repository: Repository, metrics: Metrics | None = None):
        self.repository, self.metrics = repository, metrics

    def GetModelStatus(self, request: get_model_status_pb2.GetModelStatusRequest,
                       context: grpc.ServicerContext,
                       ) -> get_model_status_pb2.GetModelStatusResponse:
        """AVAILABLE for loaded versions, END with the error for failed loads; a version label
        is ignored, as TF Serving ignores it here."""
        return _answer(self.metrics, "get_model_status", request.model_spec.name, context,
                       lambda outcome: self._status(request, outcome))

    def _status(self, request: get_model_status_pb2.GetModelStatusRequest, outcome: _Outcome,
                ) -> get_model_status_pb2.GetModelStatusResponse:
        if not request.HasField("model_spec"):
            raise rest.invalid("Missing ModelSpec")
        spec = request.model_spec
        number = spec.version.value if spec.HasField("version") else None
        status = self.repository.status(spec.name, number)  # TF Serving's JSON of the proto.
        outcome.version = number
        return json_format.ParseDict(status, get_model_status_pb2.GetModelStatusResponse())

    def HandleReloadConfigRequest(self, request, context: grpc.ServicerContext):
        """Not served: the server serves one export directory, watched for new versions."""
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "HandleReloadConfigRequest is not "
                      "supported by this server: it serves the versions of one export directory")


def start_server(repository: Repository, host: str, port: int,
                 metrics: Metrics | None = None,
                 max_message_bytes: int = guard.DEFAULT_MAX_REQUEST_BYTES,
                 max_concurrent_rpcs: int = DEFAULT_MAX_CONCURRENT_RPCS,
                 max_workers: int = DEFAULT_MAX_WORKERS) -> tuple[grpc.Server, int]:
    """Starts PredictionService and ModelService on host:port (0: a free port) and returns the
    server and its port; a one-line UserError if the address cannot be bound.

    Requests are capped at `max_message_bytes`, answers at 4 times that; `max_workers` calls
    run at once, and `max_concurrent_rpcs` are admitted (the rest get RESOURCE_EXHAUSTED).
    """
    # No cap on a connection's streams: channels to one address share a connection, and a
    # cap there refuses calls (RST_STREAM) where `max_concurrent_rpcs` answers them.
    options = [("grpc.max_receive_message_length", max_message_bytes),
               ("grpc.max_send_message_length", ANSWER_BYTES_PER_MESSAGE_BYTE * max_message_bytes),
               *_CONNECTION_OPTIONS]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers, thread_name_prefix="grpc"),
                         options=options,
                         maximum_concurrent_rpcs=max_concurrent_rpcs)
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionService(repository, metrics,
                          TENSOR_BYTES_PER_MESSAGE_BYTE * max_message_bytes), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(
        ModelService(repository, metrics), server)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError:
        bound = 0
    if not bound:
        server.stop(None)
        raise UserError(f"cannot listen on {address} for gRPC: the address is in use or "
                        "not one of this machine's")
    server.start()
    return server, bound
