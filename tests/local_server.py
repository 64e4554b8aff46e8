"""A small HTTP server on 127.0.0.1 for download tests (no internet).

``LocalServer`` serves the bytes of ``files`` (URL path -> bytes), answers
404 for any other path and, for the paths in ``status``, that status
instead; it records every path asked for, in order. Use it as a context
manager: it listens on a free port in a thread and stops on exit.
"""
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, List, Optional


class LocalServer:
    """An HTTP server on 127.0.0.1 with files, statuses and a request log.

    Args:
        files: URL path (``'/v1/TransCNN-Tiny.pth'``) -> content.
        status: URL path -> HTTP status to answer instead (e.g. 503).
    """

    def __init__(self, files: Optional[Dict[str, bytes]] = None,
                 status: Optional[Dict[str, int]] = None):
        self.files = dict(files or {})
        self.status = dict(status or {})
        self.requests: List[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):

            def do_GET(self):  # noqa: N802 (http.server's name)
                server.requests.append(self.path)
                code = server.status.get(self.path)
                body = server.files.get(self.path)
                if code is None:
                    code = 404 if body is None else 200
                if code != 200:
                    body = b''
                self.send_response(code)
                self.send_header('Content-Length', str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):  # keep test output quiet
                pass

        self._httpd = ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        daemon=True)

    def url(self, path: str) -> str:
        """The full URL of ``path`` on this server."""
        host, port = self._httpd.server_address[:2]
        return f'http://{host}:{port}{path}'

    def __enter__(self) -> 'LocalServer':
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()
