"""Finding 12 (issue 8): the key file is changed by several processes at once and must lose nothing.

`mmrag keys create` and `mmrag keys revoke` run while the server (and other admins) use the same
file. These tests race real processes against each other; each child waits for a common start
time so their read-modify-writes overlap.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

from mmrag.http.apikeys import KeyStore

REPO = Path(__file__).resolve().parents[2]

# The child: import first (slow), then wait for the common start so the writes really overlap.
_CHILD = """
import json, sys, time
from pathlib import Path
from mmrag.http.apikeys import KeyStore

path, start, action, arg, n = sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
store = KeyStore(Path(path))
while time.time() < start:
    pass
out = []
for i in range(n):
    if action == "create":
        token, _ = store.create(f"{arg}-{i}", scopes=["read"])
        out.append(token)
    else:
        store.revoke(arg)
print(json.dumps(out))
"""


def _race(path: Path, jobs: list[tuple[str, str, int]]) -> list[str]:
    """Run one child per (action, arg, repeats) at once; returns every token the creators printed."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    start = time.time() + 4.0  # time for every child to import mmrag on a loaded 2-core machine
    procs = [subprocess.Popen([sys.executable, "-c", _CHILD, str(path), str(start), action, arg, str(n)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=REPO)
             for action, arg, n in jobs]
    tokens: list[str] = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
        tokens += json.loads(out)
    return tokens


def test_parallel_creates_store_every_key(tmp_path: Path) -> None:
    path = tmp_path / "api_keys.json"
    tokens = _race(path, [("create", f"p{p}", 5) for p in range(8)])
    assert len(tokens) == 40
    stored = json.loads(path.read_text())["keys"]
    assert len(stored) == 40, f"{len(tokens)} tokens printed, {len(stored)} keys stored"
    store = KeyStore(path)
    assert all(store.authenticate(t) is not None for t in tokens)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".keys-")]
    assert leftovers == [], "temporary key files left behind"


def test_a_revoke_racing_creates_stays_revoked(tmp_path: Path) -> None:
    for trial in range(4):
        path = tmp_path / f"trial{trial}" / "api_keys.json"
        admin_token, admin = KeyStore(path).create("admin", scopes=["admin"])
        tokens = _race(path, [("revoke", admin.id, 1), *[("create", f"p{p}", 3) for p in range(7)]])
        store = KeyStore(path)
        assert store.authenticate(admin_token) is None, f"trial {trial}: the revoked admin key works again"
        assert all(store.authenticate(t) is not None for t in tokens), f"trial {trial}: a created key was lost"
        assert len(store.keys()) == 21


def test_a_server_sees_a_revocation_that_leaves_size_and_mtime_alone(tmp_path: Path) -> None:
    # A revoke and a create in one clock tick (or within a second on coarse file systems) can leave
    # the file exactly as long and with the same mtime; the server's cache must not be fooled.
    path = tmp_path / "api_keys.json"
    admin = KeyStore(path)
    token, key = admin.create("bot-1", scopes=["read"])
    server = KeyStore(path)
    assert server.authenticate(token) == key
    before = path.stat()
    # Keep the old inode alive so the file system cannot hand its number to the new file.
    os.link(path, tmp_path / "old-inode")
    admin.revoke(key.id)
    admin.create("bot-2", scopes=["read"])
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_size == before.st_size and path.stat().st_mtime_ns == before.st_mtime_ns
    assert server.authenticate(token) is None
