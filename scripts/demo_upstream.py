"""A stand-in FHIR upstream for the demo (not a FHIR server): answers every request with a
small JSON document echoing what arrived, including the x-fhirguard-* identity headers."""
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Echo(BaseHTTPRequestHandler):
    def _answer(self):
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        body = json.dumps({
            "stand_in_upstream": True,
            "method": self.command,
            "path": self.path,
            "identity": {k: v for k, v in self.headers.items() if k.lower().startswith("x-fhirguard-")},
            "prefer": self.headers.get("prefer"),
        }).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _answer

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Echo).serve_forever()
