"""What the tests' stand-in HTTP servers share: a handler that answers JSON (or raw bytes) quietly, and a server on
a free port of 127.0.0.1 that serves it in a daemon thread."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class JSONHandler(BaseHTTPRequestHandler):
    def reply(self, status: int, payload) -> None:
        """``payload`` as JSON (or as it is, if ``bytes``); a client that gave up waiting is no error."""
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            pass

    def log_message(self, *args) -> None:
        pass


def serve(handler: type[JSONHandler], start: bool = True) -> tuple[ThreadingHTTPServer, str, threading.Thread]:
    """The server (port 0: a free one), its base URL and its thread (started unless ``start`` is false)."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.02,), daemon=True)
    if start:
        thread.start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}", thread
