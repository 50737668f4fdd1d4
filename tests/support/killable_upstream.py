"""A killable upstream for the fault-injection tests (tests/support/faults.rs): a separate
process, so a test can SIGKILL it and restart it on the same port.

usage: killable_upstream.py http|jsonrpc NAME PORT   (PORT 0: any free port)

Prints "listening PORT" once bound, then one line per request: "probe" for health probes
(GET /healthz; JSON-RPC ping and connect) and "hit WHAT" for everything else.
HTTP: every GET is answered 200 with the name (header x-upstream). JSON-RPC (Content-Length
framing): every request is answered with {"sessionId": ...} when its params name one, else {}.
"""

import http.server
import json
import socketserver
import sys

MODE, NAME, PORT = sys.argv[1], sys.argv[2], int(sys.argv[3])


def out(line):
    print(line, flush=True)


class Http(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        out("probe" if self.path == "/healthz" else "hit " + self.path)
        body = (NAME + "\n").encode()
        self.send_response(200)
        self.send_header("x-upstream", NAME)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class Rpc(socketserver.StreamRequestHandler):
    def handle(self):
        while True:
            length = None
            while True:
                line = self.rfile.readline()
                if not line:
                    return
                line = line.strip()
                if not line:
                    break
                key, _, value = line.partition(b":")
                if key.strip().lower() == b"content-length":
                    length = int(value)
            if length is None:
                return
            msg = json.loads(self.rfile.read(length))
            if not isinstance(msg, dict) or "id" not in msg or "method" not in msg:
                continue
            method = msg["method"]
            out("probe" if method in ("ping", "connect") else "hit " + method)
            params = msg.get("params")
            result = {}
            if isinstance(params, dict) and "sessionId" in params:
                result = {"sessionId": params["sessionId"]}
            data = json.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": result}).encode()
            self.wfile.write(b"Content-Length: %d\r\n\r\n" % len(data) + data)
            self.wfile.flush()


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True

    def handle_error(self, request, client_address):
        # A peer resetting mid-request (the proxy closing a probe) is part of these tests.
        pass


def main():
    handler = Http if MODE == "http" else Rpc
    server = Server(("127.0.0.1", PORT), handler)
    out("listening %d" % server.server_address[1])
    server.serve_forever()


main()
