"""The layertap REST API's routes, but ``/explain`` (explain.py): parse and validate, call the data plane, render.

Nothing here touches torch. The data plane raises domain errors (``service/core/errors.py``);
service/frontends/http/errors.py renders them in this API's body (front_end.py declares it).
"""

from __future__ import annotations

import threading

from flask import Blueprint, Response, g, request

from service import __version__
from service.dataplane.pooling import OutputOptions
from service.frontends.http.bodies import read_images
from service.frontends.http.responses import admitted, data_plane, json_response, readiness
from service.frontends.rest.answers import features_response
from service.frontends.rest.params import ENCODINGS, bool_arg, choice_arg, int_arg, parse_layers
from service.ops import metrics

api = Blueprint("api", __name__)


# ---- endpoints ---------------------------------------------------------------------------
@api.post("/features")
def features() -> Response:
    plane = data_plane()
    model = request.args.get("model")
    layers = parse_layers(request.args.get("layers"), max_layers=len(plane.runner(model).layers))
    options = OutputOptions(pool=request.args.get("pool", "none"), normalize=bool_arg("normalize"))  # validates
    encoding = choice_arg("encoding", ENCODINGS)
    packed = encoding != "json"
    plane.check(model, layers, options, packed=packed)  # before reading the body: a typo costs no upload
    result = admitted(
        plane,
        model,
        lambda: read_images(plane.settings.max_images_per_request),
        lambda images, ticket: plane.extract(images, layers, options, model, ticket, packed=packed, hold_answer=True),
    )
    return features_response(result, encoding, g.started)


@api.get("/shapes")
def shapes() -> Response:
    plane = data_plane()
    crop = plane.runner(request.args.get("model")).entry.preprocessing.crop
    height = int_arg("height", crop)
    width = int_arg("width", crop)
    batch = int_arg("batch", 1)
    ops = bool_arg("ops")
    runner, calls = plane.shapes(request.args.get("model"), batch, height, width, ops)
    return json_response(
        {
            "model": runner.name,
            "input": {"batch": batch, "channels": 3, "height": height, "width": width},
            "layers": [
                {
                    "name": call.name,
                    "module": call.module,
                    "type": call.type,
                    "call": call.call_index,
                    "calls": call.calls,
                    "shape": list(call.shape) if call.shape is not None else None,
                    "layout": runner.layout_of(call.name),
                    "prefix_tokens": runner.prefix_tokens(call.name),
                    **({"op": call.op} if ops else {}),
                }
                for call in calls
            ],
        }
    )


@api.get("/health")
def health() -> Response:
    plane = data_plane()
    if plane.state == "failed":
        # Which models, not why: the exception's text can hold paths; the log has it, with its traceback.
        failed = [name for name, runner in plane.runners.items() if runner.state == "failed"]
        return json_response({"status": "failed", "code": "model_failed", "models": failed}, status=503)
    return json_response({"status": "ok"})


@api.get("/ready")
def ready() -> Response:
    """200 once every model is warm; the body gives each model's state."""
    plane = data_plane()
    body = {"status": plane.state, "models": {name: runner.state for name, runner in plane.runners.items()}}
    return readiness(plane.ready, body)


@api.get("/metrics")
def metrics_endpoint() -> Response:
    body, content_type = metrics.render()
    return Response(body, mimetype=None, content_type=content_type)


@api.get("/labels")
def labels() -> Response:
    """The class names of the model's classifier outputs, when its weights have them (ImageNet); else null."""
    runner = data_plane().runner(request.args.get("model"))
    categories = runner.weights.categories
    return json_response(
        {"model": runner.name, "classifier": runner.classifier, "labels": categories and list(categories)}
    )


@api.get("/info")
def info() -> Response:
    plane = data_plane()
    settings = plane.settings
    return json_response(
        {
            **plane.describe(request.args.get("model")),
            "version": __version__,
            "threads": threading.active_count(),
            "workers": settings.workers,
            "torch_threads": settings.effective_torch_threads(),
            "limits": {
                "max_body_bytes": settings.max_body_bytes,
                "max_pixels": settings.max_pixels,
                "max_images_per_request": settings.max_images_per_request,
                "max_batch_size": settings.max_batch_size,
                "max_batch_delay_ms": settings.max_batch_delay_ms,
                "max_queue_images": settings.max_queue_images,
                "max_queue_wait_ms": settings.max_queue_wait_ms,
                "request_timeout_s": settings.request_timeout_s,
            },
        }
    )
