"""docs/serving.md's REST half: the loop's SavedModel laid out as the doc says, served
over TF Serving's REST predict API, queried with the doc's request bodies.

TF Serving itself (a C++ server, shipped as a docker image) is not installable here,
so a small local HTTP server stands in for it: it implements the REST predict and
model-status endpoints by the rules TF Serving documents (tensorflow/serving
g3doc/api_rest.md; tensorflow_serving/util/json_tensor.cc): the version folder with
the highest number is served, `signature_name` defaults to "serving_default",
instances are objects keyed by input name or bare values for a one-input signature,
`{"b64": ...}` is binary data, the row format answers `predictions` and the columnar
`inputs` answers `outputs`, and only outputs named `*_bytes` are base64-encoded. What
it proves: the exported signatures take the doc's bodies and return the doc's
response shape with the model's own numbers. What it cannot: that the C++ server
agrees byte for byte (not run in CI, see docs/serving.md).
"""

import base64
import json
import os
import re
import shutil
import subprocess
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import REPO

PREDICT = re.compile(r"^/v1/models/([^/:]+)(?:/versions/(\d+))?:predict$")
STATUS = re.compile(r"^/v1/models/([^/:]+)$")


def _decode(value):
    """A JSON value as TF Serving reads it: {"b64": ...} is bytes, lists nest."""
    if isinstance(value, dict) and set(value) == {"b64"}:
        return base64.b64decode(value["b64"])
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def _encode(name, value):
    """A numpy output value as TF Serving writes it."""
    if isinstance(value, np.ndarray):
        return [_encode(name, v) for v in value]
    if isinstance(value, bytes):
        if name.endswith("_bytes"):
            return {"b64": base64.b64encode(value).decode("ascii")}
        return value.decode("utf-8")
    return value.item() if hasattr(value, "item") else value


def _inputs(body, spec):
    """(input tensors, row format?) of a predict body for a signature's input spec."""
    names = sorted(spec)
    if "instances" in body:
        rows = body["instances"]
        if all(isinstance(r, dict) and set(r) != {"b64"} for r in rows):
            columns = {n: [_decode(r[n]) for r in rows] for n in names}
            if any(set(r) != set(names) for r in rows):
                raise ValueError(f"instance keys must be the inputs {names}")
        elif len(names) == 1:
            columns = {names[0]: [_decode(r) for r in rows]}
        else:
            raise ValueError("a bare instance needs a one-input signature")
        row_format = True
    else:
        given = body["inputs"]
        columns = given if isinstance(given, dict) else {names[0]: given}
        columns = {n: _decode(v) for n, v in columns.items()}
        row_format = False
    return {n: tf.constant(columns[n], spec[n].dtype) for n in names}, row_format


class _Handler(BaseHTTPRequestHandler):
    models = {}  # name -> (version, loaded SavedModel)

    def _reply(self, status, payload):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # noqa: N802 - http.server's name
        match = STATUS.match(self.path)
        if not match or match.group(1) not in self.models:
            return self._reply(404, {"error": f"no model at {self.path}"})
        version = self.models[match.group(1)][0]
        state = {"version": version, "state": "AVAILABLE", "status": {"error_code": "OK"}}
        return self._reply(200, {"model_version_status": [state]})

    def do_POST(self):  # noqa: N802
        match = PREDICT.match(self.path)
        if not match or match.group(1) not in self.models:
            return self._reply(404, {"error": f"no model at {self.path}"})
        version, loaded = self.models[match.group(1)]
        if match.group(2) not in (None, version):
            return self._reply(404, {"error": f"version {match.group(2)} is not served"})
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        name = body.get("signature_name", "serving_default")
        if name not in loaded.signatures:
            return self._reply(400, {"error": f"Serving signature name: '{name}' not found"})
        fn = loaded.signatures[name]
        try:
            inputs, row_format = _inputs(body, fn.structured_input_signature[1])
            outputs = {k: v.numpy() for k, v in fn(**inputs).items()}
        except (ValueError, KeyError, tf.errors.InvalidArgumentError) as e:
            return self._reply(400, {"error": str(e)})
        if not row_format:
            return self._reply(200, {"outputs": {k: _encode(k, v) for k, v in outputs.items()}})
        rows = [
            {k: _encode(k, v[i]) for k, v in outputs.items()}
            for i in range(len(next(iter(outputs.values()))))
        ]
        if len(outputs) == 1:
            rows = [next(iter(row.values())) for row in rows]
        return self._reply(200, {"predictions": rows})

    def log_message(self, *args):
        del args  # quiet


@pytest.fixture(scope="module")
def served(tiny_teacher_workdir, tmp_path_factory):
    """(base URL, the loop's Keras model): the SavedModel the loop exported (the session's
    tiny teacher-only run) copied into a model folder by docs/serving.md's own two
    commands, and served on a free local port."""
    root = tmp_path_factory.mktemp("serving")
    shutil.copytree(
        os.path.join(tiny_teacher_workdir, "saved_model"), root / "exported" / "noisy_student"
    )
    with open(os.path.join(REPO, "docs", "serving.md")) as f:
        doc = f.read()
    commands = [
        "mkdir -p models/noisy_student",
        "cp -r exported/noisy_student models/noisy_student/1",
    ]
    assert all(f"\n{c}\n" in doc for c in commands)  # as the doc writes them
    subprocess.run(["bash", "-ec", "\n".join(commands)], cwd=root, check=True)
    base = root / "models" / "noisy_student"
    version = max((v for v in os.listdir(base) if v.isdigit()), key=int)  # the latest
    _Handler.models = {"noisy_student": (version, tf.saved_model.load(str(base / version)))}
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    model = keras.models.load_model(os.path.join(tiny_teacher_workdir, "iteration_0_teacher.keras"))
    yield f"http://127.0.0.1:{server.server_port}", model
    server.shutdown()


def _post(url, body):
    """docs/serving.md's client: urllib, a JSON body, the parsed JSON answer."""
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def _doc_json_body(encoded):
    """The doc's JSON request, its two b64 placeholders replaced by these images."""
    with open(os.path.join(REPO, "docs", "serving.md")) as f:
        block = re.search(r"```json\n(.*?)```", f.read(), re.S).group(1)
    body = json.loads(block)
    assert len(body["instances"]) == len(encoded) == 2
    for instance, image in zip(body["instances"], encoded):
        instance["image_bytes"]["b64"] = base64.b64encode(image).decode("ascii")
    return body


def test_rest_predict_on_the_documented_model_folder(served):
    url, model = served
    size = model.input_shape[1]
    images = np.random.default_rng(0).integers(0, 256, (2, size, size, 3), dtype=np.uint8)
    encoded = [tf.io.encode_png(x).numpy() for x in images]
    expected = tf.nn.softmax(model(images.astype(np.float32), training=False)).numpy()
    assert np.ptp(expected, axis=1).min() > 1e-3  # far above the tolerance: a wrong view shows
    predict = f"{url}/v1/models/noisy_student:predict"

    status, answer = _post(predict, _doc_json_body(encoded))
    assert status == 200, answer
    rows = answer["predictions"]
    np.testing.assert_allclose([r["probabilities"] for r in rows], expected, atol=1e-5)
    top = [r["top_k_classes"] for r in rows]
    assert [t[0] for t in top] == list(expected.argmax(1))
    np.testing.assert_allclose(
        [r["top_k_probabilities"] for r in rows], -np.sort(-expected)[:, : len(top[0])], atol=1e-5
    )
    # The other documented forms: a bare value (one-input signature), the pixel
    # signature's nested lists, the columnar `inputs`, a version in the path.
    b64 = [{"b64": base64.b64encode(e).decode("ascii")} for e in encoded]
    bodies = {
        predict: [
            {"instances": b64},
            {"signature_name": "serve_images", "instances": images.tolist()},
        ],
        f"{url}/v1/models/noisy_student/versions/1:predict": [{"inputs": {"image_bytes": b64}}],
    }
    for target, forms in bodies.items():
        for body in forms:
            status, answer = _post(target, body)
            assert status == 200, answer
            got = (
                answer["outputs"]["probabilities"]
                if "inputs" in body
                else [r["probabilities"] for r in answer["predictions"]]
            )
            np.testing.assert_allclose(got, expected, atol=1e-5)

    status, answer = _post(predict, {"signature_name": "nope", "instances": b64})
    assert status == 400 and "nope" in answer["error"]
    with urllib.request.urlopen(f"{url}/v1/models/noisy_student", timeout=60) as response:
        versions = json.load(response)["model_version_status"]
    assert [(v["version"], v["state"]) for v in versions] == [("1", "AVAILABLE")]
