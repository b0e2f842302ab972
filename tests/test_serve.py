"""``ltuning serve``: the real uvicorn server on a free port, over real HTTP (urllib), with a tiny random BERT
adapter: 200 concurrent requests answer what in-process ``predict`` answers, bad requests get a 4xx naming
the field, oversize requests are refused, /health and /metadata; the CLI command in a subprocess."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from ltuning.adapter import load_adapter  # noqa: E402
from ltuning.config import LTuningConfig  # noqa: E402
from ltuning.errors import ConfigError  # noqa: E402
from ltuning.loading import load_backbone  # noqa: E402
from ltuning.model import LTuningModel  # noqa: E402
from ltuning.prediction import predict  # noqa: E402
from ltuning.serve import Limits, check_request, create_app, require_serve  # noqa: E402

LABELS = ["negative", "neutral", "positive"]
TEXTS = ["the movie was very good", "bad plot", "i loved it", "awful boring film", "great actors and story",
         "it was dull", "wonderful", "not good", "a great film and a fun story", "terrible", "really quite fun",
         "what a boring display", "i am wowed"]
CANDIDATES = [None, ["bad", "good"], ["boring", "fun", "great"]]
LIMITS = Limits(max_texts=8, max_chars=200, max_candidates=6, max_body_bytes=8192)


def save_tiny_adapter(root: Path, method: str = "lt-prefix") -> Path:
    from conftest import make_tokenizer
    from transformers import BertConfig, BertModel

    folder = root / "tiny-bert"
    if not folder.exists():
        cfg = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64, max_position_embeddings=64)
        torch.manual_seed(0)
        BertModel(cfg).save_pretrained(folder)
        make_tokenizer("encoder").save_pretrained(folder)
    model = LTuningModel(load_backbone(str(folder)), LTuningConfig(method=method, base_model=str(folder),
                                                                    label_names=LABELS))
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.method.parameters():  # away from the zero start, so labels and candidates differ
            p.add_(torch.randn_like(p) * 0.3)
    return model.save_pretrained(root / method)


class Server:
    """uvicorn in a thread, on a socket bound to a free port."""

    def __init__(self, asgi, lifespan: str = "on") -> None:
        import uvicorn

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(asgi, log_level="warning", lifespan=lifespan))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


def http(port: int, path: str, body=None, raw: bytes | None = None, headers: dict | None = None):
    """(status, parsed JSON) of one request."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method="GET" if data is None else "POST",
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def same_answers(got: list, want: list, tol: float = 2e-6) -> bool:
    """The same labels, and the same scores up to ``tol`` (rounding of float32 noise), whatever the shape of
    predict's per-text answer (compared leaf by leaf)."""
    if type(got) is not type(want):
        return isinstance(got, int | float) and isinstance(want, int | float) and abs(got - want) <= tol
    if isinstance(got, dict):
        return got.keys() == want.keys() and all(same_answers(got[k], want[k], tol) for k in got)
    if isinstance(got, list):
        return len(got) == len(want) and all(same_answers(a, b, tol) for a, b in zip(got, want, strict=True))
    if isinstance(got, float):
        return abs(got - want) <= tol
    return got == want


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory):
    return save_tiny_adapter(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def served(adapter_dir):
    model = load_adapter(adapter_dir)
    asgi, app = create_app(model, LIMITS, max_batch=32, max_wait_ms=20)
    server = Server(asgi)
    yield model, server.port, app
    server.stop()


def test_200_concurrent_requests_match_in_process_predict(served):
    model, port, app = served
    cases = []
    for i in range(200):
        n = 1 + i % 3
        texts = [TEXTS[(i + j) % len(TEXTS)] for j in range(n)]
        cands = CANDIDATES[i % len(CANDIDATES)]
        multi = i % 5 == 0
        body = {"texts": texts[0] if n == 1 and i % 2 else texts, "multi_label": multi}
        if cands is not None:
            body["candidate_labels"] = cands
        cases.append((body, texts, cands, multi))
    before = dict(app.state.batcher.stats.__dict__)
    with concurrent.futures.ThreadPoolExecutor(max_workers=40) as pool:
        answers = list(pool.map(lambda c: http(port, "/predict", c[0]), cases))
    stats = app.state.batcher.stats
    for (body, texts, cands, multi), (status, answer) in zip(cases, answers, strict=True):
        assert status == 200, answer
        want = json.loads(json.dumps(predict(model, texts, candidate_labels=cands, multi_label=multi,
                                             return_scores=True)))
        assert same_answers(answer["results"], want), (body, answer["results"], want)
    # Batched with other requests, a text is padded to another length, so its scores may differ in the last
    # float32 bits, which shows in the 6th decimal predict rounds to (in about half the answers here):
    # same_answers allows 2e-6 on a score; labels and everything else must be equal.
    assert stats.requests - before["requests"] == 200
    # dynamic batching: the 200 requests (400 texts) ran in far fewer groups than requests
    assert stats.batches - before["batches"] < 150
    assert stats.largest_batch > 3
    assert app.state.batcher.cache.misses == 2  # each candidate set encoded once


def test_pair_and_single_requests_batched_together_are_each_answered(served):
    """A request of (premise, hypothesis) pairs and one of single texts that arrive together land in one
    gathered batch but never in one predict call (which takes one kind of input): both are answered."""
    model, port, app = served
    pairs = [["the movie was very good", "i loved it"], ["bad plot", "it was dull"]]
    singles = ["wonderful", "terrible"]
    bodies = [{"texts": pairs} if i % 2 else {"texts": singles} for i in range(20)]
    before = app.state.batcher.stats.batches
    with concurrent.futures.ThreadPoolExecutor(max_workers=20) as pool:
        answers = list(pool.map(lambda b: http(port, "/predict", b), bodies))
    want_pairs = json.loads(json.dumps(predict(model, [tuple(p) for p in pairs], return_scores=True)))
    want_singles = json.loads(json.dumps(predict(model, singles, return_scores=True)))
    for body, (status, answer) in zip(bodies, answers, strict=True):
        assert status == 200, answer
        assert same_answers(answer["results"], want_pairs if body["texts"] is pairs else want_singles)
    assert app.state.batcher.stats.batches - before < 20  # some requests did share a gathered batch


@pytest.mark.parametrize("body, status, field", [
    ({}, 422, "texts"),
    ({"texts": 5}, 422, "texts"),
    ({"texts": ["good", 3]}, 422, "texts.1"),
    ({"texts": ["good"], "multi_label": "yes"}, 422, "multi_label"),
    ({"texts": ["good"], "candidate_labels": "bad,good"}, 422, "candidate_labels"),
    ({"texts": ["good"], "candidate_labels": ["bad", "bad"]}, 422, "candidate_labels"),
    ({"texts": ["good"], "candidate_labels": ["bad"]}, 422, "candidate_labels"),
    ({"texts": ["good"], "candidate_labels": ["bad", " "]}, 422, "candidate_labels.1"),
    ({"texts": ["good"], "candidate_labels": ["bad", "x\ud800"]}, 422, "candidate_labels.1"),
    ({"texts": ["good \ud83d"]}, 422, "texts"),
    ({"texts": [" "]}, 422, "texts"),
    ({"texts": []}, 422, "texts"),
    ({"texts": ["good"], "path": "/etc/passwd"}, 422, "path"),
    ({"texts": ["good"], "adapter": "/tmp"}, 422, "adapter"),
    (["good"], 422, "body"),
    ({"texts": ["good"] * 9}, 413, "texts"),
    ({"texts": ["good " * 50]}, 413, "texts.0"),
    ({"texts": ["good"], "candidate_labels": [f"l{i}" for i in range(7)]}, 413, "candidate_labels"),
])
def test_bad_and_oversize_requests_name_the_field(served, body, status, field):
    _, port, _ = served
    got, answer = http(port, "/predict", body)
    assert got == status, answer
    assert field in [d["field"] for d in answer["detail"]], answer
    assert field in answer["error"] and all(d["message"] for d in answer["detail"])


def test_malformed_json_and_oversize_body(served):
    _, port, _ = served
    status, answer = http(port, "/predict", raw=b'{"texts": [')
    assert status == 422 and answer["error"] == "invalid request: body"
    assert answer["detail"] == [{"field": "body", "message": "JSON decode error at character 11"}]
    status, answer = http(port, "/predict", raw=json.dumps({"texts": ["x" * 10_000]}).encode())
    assert status == 413 and answer["detail"][0]["field"] == "body" and "8192" in answer["detail"][0]["message"]
    # Content-Length is checked before the body is read
    status, answer = http(port, "/predict", raw=b"{}", headers={"Content-Length": "999999999"})
    assert status == 413


def test_a_body_sent_as_a_form_and_unknown_paths_answer_in_the_documented_shape(served):
    """curl -d sends application/x-www-form-urlencoded: the answer says to send JSON, not "valid dictionary";
    a path or method the server does not answer gets {"error", "detail": [...]} as every other error."""
    _, port, _ = served
    body = json.dumps({"texts": "good"}).encode()
    for kind in ("application/x-www-form-urlencoded", "text/plain"):
        status, answer = http(port, "/predict", raw=body, headers={"Content-Type": kind})
        assert status == 422 and answer["error"] == "invalid request: body"
        assert f"Content-Type: application/json (got {kind}" in answer["detail"][0]["message"]
    assert http(port, "/predict", raw=body)[0] == 200
    # a +json type is read as JSON: the problem named is the body's, not its type
    status, answer = http(port, "/predict", raw=b'"good"', headers={"Content-Type": "application/vnd.api+json"})
    assert status == 422 and "Content-Type" not in json.dumps(answer)
    status, answer = http(port, "/nowhere")
    assert status == 404 and answer["error"] == "not found: GET /nowhere"
    assert answer["detail"] == [{"field": "path",
                                 "message": "this server answers POST /predict, GET /health and GET /metadata"}]
    status, answer = http(port, "/predict")  # GET
    assert status == 405 and answer["error"] == "method not allowed: GET /predict"


def chunked_post(port: int, path: str, chunks: list[bytes]):
    """(status, parsed JSON) of a POST whose body is sent in chunks, with no Content-Length."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.putrequest("POST", path)
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Transfer-Encoding", "chunked")
        conn.endheaders()
        for c in chunks:
            conn.send(f"{len(c):x}\r\n".encode() + c + b"\r\n")
        conn.send(b"0\r\n\r\n")
        r = conn.getresponse()
        return r.status, json.loads(r.read())
    finally:
        conn.close()


def test_a_chunked_body_is_limited_as_it_streams_in(served):
    """No Content-Length: the limit is counted over the chunks, and an oversize body gets the same 413 naming
    the body (not the app's own 400 for a body it could not read); a body under the limit is answered."""
    model, port, _ = served
    body = json.dumps({"texts": ["good", "bad"]}).encode()
    status, answer = chunked_post(port, "/predict", [body[:7], body[7:]])
    assert status == 200 and same_answers(answer, http(port, "/predict", {"texts": ["good", "bad"]})[1])
    big = json.dumps({"texts": ["x" * 10_000]}).encode()
    assert len(big) > LIMITS.max_body_bytes
    status, answer = chunked_post(port, "/predict", [big[i:i + 4096] for i in range(0, len(big), 4096)])
    assert status == 413 and answer["detail"][0]["field"] == "body" and "8192" in answer["detail"][0]["message"]


def test_a_request_over_max_batch_is_scored_max_batch_texts_at_a_time(adapter_dir, monkeypatch):
    """--max-batch bounds the texts scored together even for one request that holds more (up to --max-texts)."""
    import ltuning.serve as serve

    model = load_adapter(adapter_dir)
    calls = []

    def spy(m, texts, batch_size, **kwargs):
        calls.append((len(texts), batch_size))
        return predict(m, texts, batch_size=batch_size, **kwargs)

    monkeypatch.setattr(serve, "predict", spy)
    got, notes = serve.Batcher(model, max_batch=3)._run(TEXTS[:7], None, False)
    assert calls == [(7, 3)] and notes == []
    assert same_answers(got, predict(model, TEXTS[:7], return_scores=True))


@pytest.mark.parametrize("wait", [-1.0, float("nan"), float("inf")])
def test_max_wait_ms_must_be_a_finite_number(adapter_dir, wait):
    from ltuning.serve import Batcher

    with pytest.raises(ConfigError, match="--max-wait-ms must be a finite number >= 0"):
        Batcher(load_adapter(adapter_dir), max_wait_ms=wait)


def test_an_app_serves_again_and_without_its_lifespan(adapter_dir):
    """The app's batcher starts again after a stop (the same app served twice), and on the first request where
    no lifespan ran (uvicorn's lifespan off, or the app mounted inside another, whose lifespan Starlette runs
    instead)."""
    model = load_adapter(adapter_dir)
    want = json.loads(json.dumps(predict(model, TEXTS[:3], return_scores=True)))
    asgi, _ = create_app(model, LIMITS)
    for lifespan in ("on", "on", "off"):
        server = Server(asgi, lifespan)
        try:
            status, answer = http(server.port, "/predict", {"texts": TEXTS[:3]})
            assert status == 200 and same_answers(answer["results"], want), (lifespan, answer)
        finally:
            server.stop()


def test_the_batcher_starts_again_in_a_new_event_loop(adapter_dir):
    """A second event loop (Starlette's TestClient without `with` runs each request in one): the first loop's
    worker is gone, so the batcher starts a new one (the request waited forever)."""
    import asyncio

    from ltuning.serve import Batcher

    model = load_adapter(adapter_dir)
    batcher = Batcher(model, max_batch=8)

    async def once():
        return await asyncio.wait_for(batcher.submit(TEXTS[:2], None, False), 30)

    (first, _), (second, _) = asyncio.run(once()), asyncio.run(once())
    assert same_answers(first, second) and len(first) == 2


def test_the_client_is_told_when_candidate_labels_are_cut(served):
    """LT-prefix reads l tokens of a candidate: a longer one is scored on its first tokens. The response says
    so (before, only the server's log did), on every request with that candidate set (the second one comes
    from the injection cache), and says nothing when no candidate is cut."""
    model, port, _ = served
    cands = ["bad", "a great film and a fun story"]
    with pytest.warns(UserWarning, match="are truncated") as caught:
        want = json.loads(json.dumps(predict(model, TEXTS[:2], candidate_labels=cands, return_scores=True)))
    for _ in range(2):
        status, answer = http(port, "/predict", {"texts": TEXTS[:2], "candidate_labels": cands})
        assert status == 200 and same_answers(answer["results"], want)
        assert answer["warnings"] == [str(caught[0].message)]
        assert "'a great film and a fun story'" in answer["warnings"][0] and "label_length=3" in answer["warnings"][0]
    status, answer = http(port, "/predict", {"texts": TEXTS[:2], "candidate_labels": ["bad", "good"]})
    assert status == 200 and "warnings" not in answer


def test_every_warning_predict_gives_reaches_the_client_and_the_log(adapter_dir):
    """What predict warns about in Python (here multi_label on a listwise adapter, and a cut candidate from the
    injection cache on its second use) is in the group's warnings, and in the server's log as a warning."""
    import ltuning.serve as serve

    model = load_adapter(adapter_dir)
    model.config.objective = "listwise"
    batcher = serve.Batcher(model, max_batch=8)
    cands = ("bad", "a great film and a fun story")
    for _ in range(2):
        with pytest.warns(UserWarning) as logged:
            _, notes = batcher._run(TEXTS[:2], cands, True)
        assert len(notes) == 2 and "are truncated" in notes[0] and notes[1].startswith("multi_label reads each")
        assert [str(w.message) for w in logged] == notes
    _, notes = batcher._run(TEXTS[:2], None, False)
    assert notes == []


def test_health_and_metadata(served):
    model, port, _ = served
    status, health = http(port, "/health")
    assert status == 200 and health["status"] == "ok"
    status, meta = http(port, "/metadata")
    assert status == 200
    assert meta["method"] == "lt-prefix" and meta["labels"] == LABELS and meta["label_texts"] == LABELS
    assert meta["base_model"] == model.config.base_model and meta["open_vocabulary"] is True
    assert meta["limits"]["max_texts"] == 8 and meta["limits"]["max_body_bytes"] == 8192
    assert {"ltuning", "torch", "transformers", "fastapi", "uvicorn"} <= set(meta["versions"])


def test_classic_method_refuses_candidates_and_multi_label(tmp_path):
    model = load_adapter(save_tiny_adapter(tmp_path, "prefix"))
    problems = check_request(model, ["good"], ["bad", "good"], True, LIMITS)
    assert {f for f, _, s in problems if s == 422} == {"candidate_labels", "multi_label"}
    assert check_request(model, ["good"], None, False, LIMITS) == []


def test_missing_dependencies_give_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "uvicorn", None)
    with pytest.raises(ConfigError, match=r"pip install 'ltuning\[serve\]'"):
        require_serve()


def test_cli_serve_in_a_subprocess(adapter_dir, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "ltuning", "serve", "--adapter", str(adapter_dir), "--port",
                             str(port), "--max-texts", "4"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                status, health = http(port, "/health")
                break
            except (urllib.error.URLError, ConnectionError):
                assert time.monotonic() < deadline, "server did not start"
                time.sleep(0.3)
        assert status == 200 and health["status"] == "ok"
        status, answer = http(port, "/predict", {"texts": "i loved it"})
        want = predict(load_adapter(adapter_dir), ["i loved it"], return_scores=True)
        assert status == 200 and same_answers(answer["results"], json.loads(json.dumps(want)))
        assert http(port, "/predict", {"texts": ["good"] * 5})[0] == 413
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    assert proc.returncode in (0, 130, -signal.SIGINT)
