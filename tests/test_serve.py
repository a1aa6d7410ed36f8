"""``obert serve``: the app in-process (FastAPI's TestClient; concurrent requests through httpx's
ASGI transport on the app's own event loop) answering as the pipeline does, batching requests,
refusing each bad request with its status, dropping a client that leaves; and the real process
(uvicorn on a free loopback port) draining on SIGTERM and exiting 0."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager

import pytest

pytest.importorskip("fastapi")
import httpx  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from test_pipeline import sst2_rows, tiny_models  # noqa: E402, F401  (fixtures)

import obert  # noqa: E402
from obert.cli import main  # noqa: E402
from obert.deploy.predictor import Predictor  # noqa: E402
from obert.deploy.serve import ServeSettings, create_app  # noqa: E402


@pytest.fixture(scope="module")
def predictor(tiny_models) -> Predictor:  # noqa: F811
    """The pruned tiny classifier on the INT8 kernels."""
    return Predictor.load(str(tiny_models["classification"]), "int8")


@contextmanager
def serving(predictor: Predictor, **settings):
    app = create_app(predictor, ServeSettings(**settings), log=lambda _: None)
    with TestClient(app) as client:
        yield client


def metric(client: TestClient, name: str, **labels: str) -> float:
    """One value from /metrics (0 when the series is absent)."""
    want = name + ("{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"
                   if labels else "")
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(want + " "):
            return float(line.split()[-1])
    return 0.0


def concurrently(client: TestClient, bodies: list, delay_s: float = 0.0) -> list[httpx.Response]:
    """POST every body to /predict at once (``delay_s`` apart) on the app's own event loop."""
    async def run():
        transport = httpx.ASGITransport(app=client.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            async def one(i, body):
                await asyncio.sleep(i * delay_s)
                return await c.post("/predict", json=body)
            return await asyncio.gather(*(one(i, b) for i, b in enumerate(bodies)))

    return client.portal.call(run)


def test_predict_answers_as_the_pipeline(predictor, sst2_rows):  # noqa: F811
    pipe = obert.pipeline(None, predictor)
    texts = sst2_rows[:10]
    pairs = [[sst2_rows[10], sst2_rows[11]], {"text": sst2_rows[12], "text_pair": sst2_rows[13]}]
    with serving(predictor) as client:
        r = client.post("/predict", json={"inputs": texts + pairs})
        assert r.status_code == 200
        got = r.json()["outputs"]
        want = pipe(texts + [{"text": a, "text_pair": b} for a, b in
                             ([sst2_rows[10], sst2_rows[11]], [sst2_rows[12], sst2_rows[13]])])
        assert len(got) == 12
        for g, w in zip(got, want, strict=True):
            w = w[0] if isinstance(w, list) else w
            assert g["label"] == w["label"] and g["score"] == pytest.approx(w["score"], abs=1e-6)
        one = client.post("/predict", json={"inputs": texts[0]}).json()["outputs"]
        assert len(one) == 1 and one[0]["label"] == got[0]["label"]


def test_requests_are_batched_and_answers_do_not_depend_on_neighbours(predictor, sst2_rows):  # noqa: F811
    long_text = " ".join(sst2_rows[20:30])  # padded to ~128 tokens with the short ones
    texts = [sst2_rows[0], long_text, sst2_rows[1], "ok", sst2_rows[2], sst2_rows[3]]
    with serving(predictor, max_wait_ms=300) as client:
        alone = [client.post("/predict", json={"inputs": t}).json()["outputs"][0] for t in texts]
        batches = metric(client, "obert_batches_total")
        rs = concurrently(client, [{"inputs": t} for t in texts])
        assert [r.status_code for r in rs] == [200] * len(texts)
        assert metric(client, "obert_batches_total") == batches + 1  # all six in one batch
        assert metric(client, "obert_batch_size_bucket", le="8") >= 1
        for r, a in zip(rs, alone, strict=True):  # the same answer alone and among longer rows
            b = r.json()["outputs"][0]
            assert b["label"] == a["label"] and abs(b["score"] - a["score"]) <= 1e-6
    with serving(predictor, max_wait_ms=300, max_batch_size=4) as client:
        rs = concurrently(client, [{"inputs": t} for t in texts])
        assert all(r.status_code == 200 for r in rs)
        assert metric(client, "obert_batches_total") == 2  # 4 + 2
        assert metric(client, "obert_batch_size_sum") == 6


def test_each_bad_request_is_refused_with_its_status(predictor, sst2_rows):  # noqa: F811
    strict = Predictor(predictor.model, predictor.tokenizer, predictor.kind, predictor.runtime,
                       name=predictor.name, engine=predictor.engine, truncate=False)
    long_text = "a remarkably long review " * 60
    with serving(strict, max_inputs=4, max_queue=8, max_body_bytes=4000) as client:
        cases = [
            (dict(content=b'{"inputs": ["a",', headers={"content-type": "application/json"}),
             422, "not valid JSON"),
            (dict(content=b"[1, 2]", headers={"content-type": "application/json"}), 422, ""),
            (dict(json={"input": "typo"}), 422, "inputs"),
            (dict(json={"inputs": 5}), 422, "inputs must be"),
            (dict(json={"inputs": []}), 422, "empty"),
            (dict(json={"inputs": [{"question": "q", "context": "c"}]}), 422, "input 1 is not"),
            (dict(json={"inputs": ["a"] * 5}), 413, "limit of 4"),
            (dict(json={"inputs": ["x" * 5000]}), 413, "over this server's limit"),
            (dict(json={"inputs": ["fine", long_text]}), 422, "input 2 is"),
        ]
        for kwargs, status, words in cases:
            r = client.post("/predict", **kwargs)
            assert r.status_code == status, (kwargs, r.text)
            error = r.json()["error"]
            assert words in error and "\n" not in error and "Traceback" not in error
        assert client.get("/predict").status_code == 405
        assert client.post("/predict", json={"inputs": sst2_rows[:4]}).status_code == 200
        assert metric(client, "obert_errors_total", reason="too_long") == 1
        assert metric(client, "obert_errors_total", reason="payload_too_large") == 1
        assert metric(client, "obert_errors_total", reason="too_many_inputs") == 1
        assert metric(client, "obert_requests_total", path="/predict", status="422") == 7


def test_a_full_queue_answers_503_with_retry_after(predictor):
    with serving(predictor, max_queue=2, max_inputs=2, max_wait_ms=500) as client:
        first, second = concurrently(client, [{"inputs": ["one"]}, {"inputs": ["a", "b"]}],
                                     delay_s=0.1)
        assert first.status_code == 200
        assert second.status_code == 503 and second.headers["retry-after"] == "1"
        assert "queue" in second.json()["error"]
        assert client.post("/predict", json={"inputs": ["a", "b"]}).status_code == 200


def test_a_client_that_leaves_costs_nothing(predictor):
    """A request whose client disconnects while it waits is dropped from the queue: the model
    never runs it, the server counts it and goes on."""
    with serving(predictor, max_wait_ms=400) as client:
        body = json.dumps({"inputs": ["never run"]}).encode()
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                 "method": "POST", "scheme": "http", "path": "/predict", "raw_path": b"/predict",
                 "query_string": b"", "root_path": "", "server": ("t", 80),
                 "client": ("c", 1), "headers": [(b"content-type", b"application/json"),
                                                 (b"content-length", str(len(body)).encode())]}
        sent = []

        async def leave():
            messages = [{"type": "http.request", "body": body, "more_body": False}]

            async def receive():
                if messages:
                    return messages.pop()
                await asyncio.sleep(0.1)  # gone while its input waits for company
                return {"type": "http.disconnect"}

            async def send(message):
                sent.append(message)

            t0 = time.monotonic()
            await client.app(scope, receive, send)
            return time.monotonic() - t0

        took = client.portal.call(leave)
        assert took < 0.35  # it did not wait for the batch
        assert metric(client, "obert_errors_total", reason="disconnected") == 1
        assert metric(client, "obert_inputs_total") == 0  # never run
        assert metric(client, "obert_queue_depth") == 0
        assert client.post("/predict", json={"inputs": "still serving"}).status_code == 200


def test_a_failing_model_is_a_500_and_the_server_goes_on(predictor, monkeypatch):
    with serving(predictor) as client:
        calls = []
        forward = predictor.forward

        def broken(enc, max_rows=None):
            calls.append(1)
            if len(calls) == 1:
                raise RuntimeError("kernel exploded\nsecond line")
            return forward(enc, max_rows)

        monkeypatch.setattr(predictor, "forward", broken)
        r = client.post("/predict", json={"inputs": "boom"})
        assert r.status_code == 500 and r.json()["error"].endswith("kernel exploded")
        assert client.post("/predict", json={"inputs": "fine"}).status_code == 200
        assert metric(client, "obert_errors_total", reason="internal") == 1


def test_health_metrics_and_docs(predictor):
    with serving(predictor) as client:
        client.post("/predict", json={"inputs": ["a", "b", "c"]})
        h = client.get("/health").json()
        assert h["status"] == "ok" and h["kind"] == "classification" and h["runtime"] == "int8"
        assert h["labels"] == ["negative", "positive"] and h["max_length"] == 128
        assert h["engine"]["sparse"] > 0 and h["engine"]["isa"]
        text = client.get("/metrics")
        assert text.headers["content-type"].startswith("text/plain")
        for name, kind in [("obert_requests_total", "counter"), ("obert_errors_total", "counter"),
                           ("obert_batch_size", "histogram"), ("obert_queue_depth", "gauge"),
                           ("obert_request_duration_seconds", "histogram")]:
            assert f"# TYPE {name} {kind}" in text.text
        assert metric(client, "obert_inputs_total") == 3
        assert metric(client, "obert_request_duration_seconds_count") >= 1
        assert 'le="+Inf"' in text.text
        assert client.get("/docs").status_code == 200
        spec = client.get("/openapi.json").json()
        assert {"/predict", "/health", "/metrics"} <= set(spec["paths"])
        assert {"413", "422", "503"} <= set(spec["paths"]["/predict"]["post"]["responses"])


def test_question_answering_and_multiple_choice_served(tiny_models):  # noqa: F811
    qa = Predictor.load(str(tiny_models["qa"]), "fp32")
    question = {"question": "Who wrote it?", "context": "It was written by Ann Smith in 1990."}
    with serving(qa) as client:
        got = client.post("/predict", json={"inputs": [question, ["When?", "In 1990."]]}).json()
    assert got["outputs"][0] == obert.pipeline(None, qa)(question)
    mc = Predictor.load(str(tiny_models["multiple_choice"]), "int8")
    item = {"question": "Where is milk kept?", "choices": ["fridge", "oven", "shelf"]}
    with serving(mc) as client:
        out = client.post("/predict", json={"inputs": [item, {"question": "a",
                                                              "choices": ["b", "c"]}]}).json()
    assert out["outputs"][0]["choice"] == obert.pipeline(None, mc)(item)["choice"]
    assert len(out["outputs"][1]["scores"]) == 2


def test_serve_cli_refuses_bad_settings(tiny_models, capsys, monkeypatch):  # noqa: F811
    folder = str(tiny_models["classification"])
    assert main(["serve", "--model", "/no/such/model", "--port", "0"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["serve", "--model", folder, "--max-queue", "2", "--port", "0"]) == 2
    assert "--max-queue 2 is below --max-inputs 64" in capsys.readouterr().err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        assert main(["serve", "--model", folder, "--port", str(port)]) == 2
        assert "cannot listen on 127.0.0.1" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "fastapi", None)
    assert main(["serve", "--model", folder]) == 2
    err = capsys.readouterr().err
    assert "pip install 'obert[serve]'" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_serve_process_drops_disconnects_and_drains_on_sigterm(tiny_models):  # noqa: F811
    """The real server: clients that leave mid-body or mid-wait cost nothing; on SIGTERM the
    requests in flight are answered, then the process exits 0."""
    proc = subprocess.Popen([sys.executable, "-m", "obert", "serve", "--model",
                             str(tiny_models["classification"]), "--port", "0", "--quiet",
                             "--max-wait-ms", "1000", "--threads", "1"],
                            stderr=subprocess.PIPE, text=True)
    try:
        port = None
        for line in proc.stderr:
            m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
            if m:
                port = int(m.group(1))
                break
        assert port, "the server did not start"
        url = f"http://127.0.0.1:{port}"
        body = json.dumps({"inputs": ["left early"]}).encode()
        head = (f"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        for payload in (head + body[:5], head + body):  # mid-body, then mid-wait
            with socket.create_connection(("127.0.0.1", port)) as s:
                s.sendall(payload)
                time.sleep(0.2)
        time.sleep(1.2)
        text = httpx.get(f"{url}/metrics").text
        assert 'obert_errors_total{reason="disconnected"} 2' in text
        assert "obert_inputs_total 0" in text  # neither was run

        results: list[int] = []

        def post(i: int) -> None:
            results.append(httpx.post(f"{url}/predict", json={"inputs": [f"text {i}"]},
                                      timeout=30).status_code)

        threads = [threading.Thread(target=post, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.4)  # in flight: waiting out the 1 s batch window
        proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(30)
        assert proc.wait(30) == 0
        assert results == [200] * 4
        rest = proc.stderr.read()
        assert "draining" in rest and "stopped after 4 inputs in 1 batches" in rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
