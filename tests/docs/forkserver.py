"""A warm `mmrag`: the docs test's blocks call the real CLI without paying its imports each time.

A shell block in the docs runs `mmrag ...` (or `.venv/bin/mmrag ...`) a dozen times; each fresh
process spends ~10 s on 2 loaded cores importing torch, open_clip, sentence-transformers and Chroma
before it does a second of work. This server imports them once, then forks a child per command.
The child takes the caller's stdin, stdout and stderr (passed over a Unix socket), its working
folder, arguments and environment, and runs ``mmrag.cli.main`` on them: the real command, the real
start-up after the imports, the real exit status. A Python block's page worker (state shared by
the page's Python blocks, as in a notebook) is forked from here too (``kind: python``).

Limits, said plainly: variables that a pre-imported library reads at import time
(``HF_HUB_OFFLINE`` for huggingface_hub, for example) come from the server's environment, which the
test sets to what the blocks get.

Protocol (one connection per command): the client sends an 8-byte length with its three file
descriptors, then that many bytes of JSON ``{"kind", "argv", "cwd", "env"}``; the server answers
with the exit status as ASCII when the child ends. A client that goes away kills its child.

Run as ``python -m tests.docs.forkserver SOCKET``.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import struct
import sys
import threading
import time
import traceback

#: The client: a stdlib-only script, started with ``-IS`` (isolated, no site) so it costs ~20 ms, installed as
#: ``.venv/bin/mmrag`` in each docs workspace.
CLIENT = '''\
import json, os, socket, struct, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(os.environ["MMRAG_DOCS_SOCKET"])
body = json.dumps({"kind": "cli", "argv": sys.argv[1:], "cwd": os.getcwd(), "env": dict(os.environ)}).encode()
socket.send_fds(s, [struct.pack("!Q", len(body))], [0, 1, 2])
s.sendall(body)
reply = b""
while chunk := s.recv(64):
    reply += chunk
sys.exit(int(reply or b"1"))
'''

#: Libraries every `mmrag` command that loads a model imports; importing them here is the saving.
PRELOAD = ("torch", "open_clip", "sentence_transformers", "chromadb", "tantivy", "click", "mmrag.cli",
           "tests.docs.pyworker")


def _receive(conn: socket.socket) -> tuple[dict, list[int]]:
    header, fds, _flags, _addr = socket.recv_fds(conn, 8, 3)
    (size,) = struct.unpack("!Q", header)
    body = b""
    while len(body) < size:
        chunk = conn.recv(size - len(body))
        if not chunk:
            raise ConnectionError("client went away mid-request")
        body += chunk
    return json.loads(body), fds


def _child(request: dict, fds: list[int]) -> int:
    """Run in the forked child: become the caller's process, then run the command."""
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if request["kind"] == "python":
        from tests.docs.pyworker import serve

        return serve()
    sys.argv = ["mmrag", *request["argv"]]
    from mmrag.cli import main

    try:
        main(args=request["argv"], prog_name="mmrag")
        return 0
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        print(exc.code, file=sys.stderr)
        return 1
    except BaseException:  # noqa: BLE001 - a real process would print the traceback and exit 1
        traceback.print_exc()
        return 1


def serve(path: str) -> None:
    """Accept commands on the Unix socket at ``path`` until killed."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for name in PRELOAD:
        __import__(name)
    # fork() copies only the calling thread: a library thread holding a lock would deadlock the child.
    extra = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
    if extra:
        sys.exit(f"forkserver: threads running after the imports, fork is unsafe: {extra}")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    children: dict[int, socket.socket] = {}  # pid -> its client's connection
    print("ready", flush=True)
    while True:
        for key, _ in selector.select(timeout=0.05):
            if key.fileobj is listener:
                conn, _ = listener.accept()
                try:
                    request, fds = _receive(conn)
                except (ConnectionError, ValueError, OSError):
                    conn.close()
                    continue
                sys.stdout.flush()
                sys.stderr.flush()
                pid = os.fork()
                if pid == 0:
                    listener.close()
                    conn.close()
                    code = 1
                    try:
                        code = _child(request, fds)
                    finally:
                        sys.stdout.flush()
                        sys.stderr.flush()
                        os._exit(code)
                for fd in fds:
                    os.close(fd)
                children[pid] = conn
                selector.register(conn, selectors.EVENT_READ, pid)
            else:
                # A client that closed its end (killed by a timeout) takes its command with it.
                if not key.fileobj.recv(1, socket.MSG_PEEK):
                    try:
                        os.kill(key.data, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
        while children:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            conn = children.pop(pid, None)
            if conn is None:
                continue
            selector.unregister(conn)
            try:
                code = os.waitstatus_to_exitcode(status)
                conn.sendall(str(code if code >= 0 else 128 - code).encode())  # killed: 128 + signal, as bash
            except OSError:
                pass
            conn.close()
        time.sleep(0)


if __name__ == "__main__":
    serve(sys.argv[1])
