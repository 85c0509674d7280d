#!/usr/bin/env python3
"""A stand-in upstream for the nginx scenario (standard library only).

/health answers JSON; /sse sends one event every 0.3 s for 5 s (a buffering proxy would hold them back);
anything else echoes the request line and headers as JSON, so the test sees what nginx forwards.
"""

import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # the http.server API names handlers do_<METHOD>
        if self.path == "/sse":
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(15):
                self._chunk(f"event: tick\ndata: {i}\n\n".encode())
                time.sleep(0.3)
            self._chunk(b"")
            return
        body = json.dumps({"status": "ok"} if self.path == "/health" else
                          {"path": self.path, "method": self.command, "headers": dict(self.headers)}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def log_message(self, *args: object) -> None:
        pass


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
