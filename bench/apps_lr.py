"""A realistic model endpoint: scikit-learn on 30 features, 8 rows a request (LUA=post_lr8.lua).

MODEL=lr (default, about 220 µs of model work a request) or rf (50 trees, about 2.4 ms).
APP=bare (default), modeltap (analysis in the monitor process), modeltap_inline (analysis on a
thread in the serving process) or modeltap_traced (monitor process, every request traced).
MODELTAP_BENCH_REFERENCE=ref30.json adds a reference profile (`make_ref30.py` writes the table,
`modeltap profile ref30.csv -o ref30.json` profiles it). Needs scikit-learn (`pip install
scikit-learn`; not a dependency of modeltap).
"""

import os

import numpy as np
import orjson
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

rng = np.random.default_rng(0)
X = rng.normal(size=(5000, 30))
y = (X[:, :3].sum(1) > 0).astype(int)
if os.environ.get("MODEL", "lr") == "lr":
    model = LogisticRegression().fit(X, y)
else:
    model = RandomForestClassifier(n_estimators=50, max_depth=8, n_jobs=1).fit(X, y)


async def predict(request: Request) -> Response:
    x = np.asarray(orjson.loads(await request.body())["instances"], dtype=float)
    p = model.predict_proba(x)[:, 1]
    return Response(orjson.dumps({"predictions": p.tolist()}), media_type="application/json")


async def health(request: Request) -> Response:
    return Response(b"ok")


app = Starlette(routes=[Route("/predict", predict, methods=["POST"]), Route("/health", health)])
mode = os.environ.get("APP", "bare")
if mode.startswith("modeltap"):
    from modeltap import ModelTapMiddleware

    if mode == "modeltap_traced":
        os.environ["OTEL_TRACES_SAMPLER"] = "always_on"
    os.environ.setdefault(
        "OTEL_EXPORTER_OTLP_ENDPOINT", os.environ.get("MODELTAP_BENCH_OTLP", "http://127.0.0.1:18200")
    )
    os.environ.setdefault("OTEL_METRIC_EXPORT_INTERVAL", "5000")
    app.add_middleware(
        ModelTapMiddleware,
        model_name="lr",
        reference=os.environ.get("MODELTAP_BENCH_REFERENCE") or None,
        monitor="inline" if mode == "modeltap_inline" else "process",
    )
