"""``POST /explain``: the layertap API's explanations (Grad-CAM family, integrated gradients); parse, validate, render.

Images come exactly as for ``/features`` (raw body, multipart, JSON base64) and are admitted
by the same queue; the data plane checks the method, layer, class and steps before the upload is
read, and the model thread runs the work in explain batches of its own (service/explain/explainer.py).
The answer gives, per image, the class explained with its score and probability, the map at
the layer's resolution and, for the CAM methods, scaled to [0, 1] and upsampled to the model's
input; in JSON or base64 like ``/features``, or with ``format=png`` as the map over the image.
"""

from __future__ import annotations

from flask import Blueprint, Response, g, request

from service.core.errors import InvalidRequest
from service.explain.methods import METHODS
from service.frontends.http.bodies import read_images
from service.frontends.http.responses import admitted, data_plane, json_response, timing_headers
from service.frontends.rest.arrays import encode_feature
from service.frontends.rest.heatmap import overlay_png, to_unit
from service.frontends.rest.params import ENCODINGS, choice_arg, int_arg

explain_api = Blueprint("explain_api", __name__)

FORMATS = ("json", "png")
DEFAULT_STEPS = 50  # Captum's default


def _method() -> str:
    """The method argument; ``gradcam++`` written unencoded in a URL arrives as ``gradcam  `` (a + is a space
    in a query string), and no method has a space in its name, so spaces are read back as pluses."""
    raw = request.args.get("method", METHODS[0])
    method = raw.replace(" ", "+")
    if method not in METHODS:
        raise InvalidRequest(f"method must be one of {', '.join(METHODS)}, not {raw[:50]!r}")
    return method


@explain_api.post("/explain")
def explain() -> Response:
    plane = data_plane()
    model = request.args.get("model")
    method = _method()
    output_format = choice_arg("format", FORMATS)
    encoding = choice_arg("encoding", ENCODINGS)
    target = int_arg("target", None)
    steps = int_arg("steps", DEFAULT_STEPS)
    layer = plane.check_explain(model, method, request.args.get("layer"), target, steps)  # before the upload

    def read() -> list[bytes]:
        images = read_images(plane.settings.max_images_per_request)
        if output_format == "png" and len(images) != 1:
            raise InvalidRequest(f"format=png draws one image; this request has {len(images)} (use format=json)")
        return images

    result = admitted(
        plane, model, read, lambda images, ticket: plane.explain(images, method, layer, target, steps, model, ticket)
    )
    headers = timing_headers(result.timings, g.started)
    if output_format == "png":
        (image,) = result.explanations
        heat = image.upsampled if image.upsampled is not None else to_unit(image.map)
        headers["X-Target"] = str(image.target)
        headers["X-Score"] = f"{image.score:.6g}"
        headers["X-Probability"] = f"{image.probability:.6g}"
        return Response(overlay_png(image.pixels, heat), mimetype="image/png", headers=headers)
    labels = result.labels
    body = {
        "model": result.model,
        "weights": result.weights,
        "method": method,
        "layer": layer,
        "explanations": [
            {
                "target": image.target,
                "label": labels[image.target] if labels else None,
                "score": image.score,
                "probability": image.probability,
                "map": encode_feature(image.map, encoding),
                **({} if image.upsampled is None else {"upsampled": encode_feature(image.upsampled, encoding)}),
            }
            for image in result.explanations
        ],
    }
    return json_response(body, headers=headers)
