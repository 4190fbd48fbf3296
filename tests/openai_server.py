"""A small OpenAI-compatible server on loopback, for tests: ``GET /v1/models`` and ``POST /v1/chat/completions``.

Answers come from a Python ``responder(messages) -> str`` or from a local Hugging Face causal LM (greedy).
Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class RawReply:
    """A reply a responder may return instead of text: sent as is (a broken or hostile server)."""

    body: bytes
    status: int = 200
    content_type: str = "application/json"


def completion(content: Any, model: str = "local-judge", finish_reason: str = "stop") -> RawReply:
    """A 200 chat completion whose message content is ``content`` (any JSON value, ``None`` included)."""
    body = {"id": "chatcmpl-raw", "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "finish_reason": finish_reason}]}
    return RawReply(json.dumps(body).encode("utf-8"))


Responder = Callable[[list[dict]], "str | RawReply"]


@dataclass
class ServerInfo:
    """What a test sees of a running server."""

    base_url: str
    model_name: str
    model_extra: dict = field(default_factory=dict)  # more fields of the model's listing (vLLM's root, ...)
    requests: int = 0  # chat requests received (failed ones included)
    seen_auth: set[str] = field(default_factory=set)  # Authorization headers seen
    bodies: list[dict] = field(default_factory=list)  # the JSON bodies of the chat requests answered with text
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


class _LocalModel:
    """A local causal LM answering chat messages greedily; one generation at a time."""

    def __init__(self, model_dir: str | Path):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        self.model = AutoModelForCausalLM.from_pretrained(str(model_dir), local_files_only=True)
        self.model.eval()
        self.lock = threading.Lock()

    def __call__(self, messages: list[dict], max_tokens: int) -> str:
        import torch

        tok = self.tokenizer
        if tok.chat_template:
            text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        else:
            text = "\n".join(str(m.get("content", "")) for m in messages)
        ids = tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
        limit = getattr(self.model.config, "max_position_embeddings", None)
        if limit is not None and ids.shape[1] + max_tokens > limit:
            ids = ids[:, -(limit - max_tokens):]
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        with self.lock, torch.no_grad():
            out = self.model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_tokens,
                do_sample=False,
                pad_token_id=pad_id,
            )
        return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def _handler(info: ServerInfo, answer: Callable[[list[dict], int], Any], api_key: str | None,
             fail_first: int, reject: tuple[str, ...] = ()) -> type[BaseHTTPRequestHandler]:
    state = {"failed": 0}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = 10  # an idle keep-alive connection does not hold its thread forever

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _send(self, status: int, payload: dict) -> None:
            body = json.dumps(payload).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _error(self, status: int, message: str, kind: str, code: str | None = None) -> None:
            self._send(status, {"error": {"message": message, "type": kind, "param": None, "code": code}})

        def _authorized(self) -> bool:
            auth = self.headers.get("Authorization")
            if auth is not None:
                with info.lock:
                    info.seen_auth.add(auth)
            if api_key is None or auth == f"Bearer {api_key}":
                return True
            # Like OpenAI, echo (part of) the key that was sent: the client must not pass it on.
            sent = (auth or "").removeprefix("Bearer ")
            self._error(401, f"Incorrect API key provided: {sent}.", "invalid_request_error", "invalid_api_key")
            return False

        def do_GET(self) -> None:
            if not self._authorized():
                return
            if self.path.rstrip("/") != "/v1/models":
                self._error(404, f"no route {self.path}", "invalid_request_error")
                return
            model = {"id": info.model_name, "object": "model", "created": int(time.time()), "owned_by": "tests",
                     **info.model_extra}
            self._send(200, {"object": "list", "data": [model]})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            if self.path.rstrip("/") != "/v1/chat/completions":
                self._error(404, f"no route {self.path}", "invalid_request_error")
                return
            with info.lock:
                info.requests += 1
            if not self._authorized():
                return
            with info.lock:
                fail = state["failed"] < fail_first
                state["failed"] += fail
            if fail:
                self._error(500, "injected failure", "server_error")
                return
            try:
                body = json.loads(raw or b"{}")
                messages = list(body["messages"])
            except (ValueError, KeyError, TypeError) as err:
                self._error(400, f"bad request: {err}", "invalid_request_error")
                return
            for param in reject:
                if param in body:
                    self._error(400, f"Unsupported parameter: {param!r}", "invalid_request_error",
                                "unsupported_parameter")
                    return
            if body.get("model") != info.model_name:
                self._error(404, f"The model `{body.get('model')}` does not exist", "invalid_request_error",
                            "model_not_found")
                return
            max_tokens = int(body.get("max_tokens") or body.get("max_completion_tokens") or 16)
            try:
                content = answer(messages, max_tokens)
            except Exception as err:  # the test's responder failed: report it as the server's error
                self._error(500, f"responder failed: {type(err).__name__}: {err}", "server_error")
                return
            if isinstance(content, RawReply):
                self.send_response(content.status)
                self.send_header("Content-Type", content.content_type)
                self.send_header("Content-Length", str(len(content.body)))
                self.end_headers()
                self.wfile.write(content.body)
                return
            with info.lock:
                info.bodies.append(body)
            prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in messages)
            completion_tokens = len(content.split())
            self._send(200, {
                "id": f"chatcmpl-{uuid.uuid4().hex}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": info.model_name,
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": "length" if completion_tokens >= max_tokens else "stop",
                    "logprobs": None,
                }],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
            })

    return Handler


@contextmanager
def serve(model_dir: str | Path | None = None, responder: Responder | None = None, api_key: str | None = None,
          fail_first: int = 0, model_name: str = "local-judge", reject: tuple[str, ...] = (),
          model_extra: dict | None = None) -> Iterator[ServerInfo]:
    """Run an OpenAI-compatible server on 127.0.0.1 (a free port) while the ``with`` block runs.

    ``responder(messages)`` gives each answer; without it, a causal LM loaded from ``model_dir`` does. With
    ``api_key`` a request without ``Authorization: Bearer <api_key>`` gets 401; the first ``fail_first`` chat
    requests get HTTP 500; a chat request holding a parameter named in ``reject`` (e.g. ``"temperature"``)
    gets HTTP 400.
    """
    if responder is not None:
        def answer(messages: list[dict], max_tokens: int) -> str | RawReply:
            return responder(messages)
    elif model_dir is not None:
        answer = _LocalModel(model_dir)
    else:
        raise ValueError("serve() needs a responder or a model_dir")
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    httpd.daemon_threads = True
    info = ServerInfo(base_url=f"http://127.0.0.1:{httpd.server_address[1]}/v1", model_name=model_name,
                      model_extra=dict(model_extra or {}))
    httpd.RequestHandlerClass = _handler(info, answer, api_key, fail_first, reject)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield info
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
