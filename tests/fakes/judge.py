"""An OpenAI-compatible judge model on 127.0.0.1 (stdlib HTTP server): grades 5 when the prompt it
is sent contains ``good_word``, else 1; answers 500 while ``failing`` is set. Records each request."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class JudgeServer:
    def __init__(self, good_word: str) -> None:
        self.good_word = good_word
        self.failing = False
        self.requests: list[dict[str, Any]] = []
        self.base_url = ""


@contextmanager
def judge_server(good_word: str) -> Iterator[JudgeServer]:
    judge = JudgeServer(good_word)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = json.loads(self.rfile.read(int(self.headers["content-length"])))
            judge.requests.append({"path": self.path, "model": body.get("model"),
                                   "authorization": self.headers.get("authorization"), "messages": body["messages"]})
            if judge.failing:
                self.send_response(500)
                self.end_headers()
                return
            prompt = json.dumps(body["messages"])
            score = 5 if judge.good_word in prompt else 1
            content = json.dumps({"score": score, "reason": "graded by the test judge", "status": "completed"})
            out = json.dumps({"id": "chatcmpl-test", "object": "chat.completion", "created": int(time.time()),
                              "model": body.get("model"),
                              "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                           "finish_reason": "stop"}],
                              "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    judge.base_url = f"http://127.0.0.1:{server.server_port}/v1"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield judge
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
