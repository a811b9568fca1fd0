"""The Python side of a docs page: its ```python blocks run in order in one namespace, as in a notebook.

Forked from the warm server (tests/docs/forkserver.py) with fd 0 reading requests and fd 1 taking
results, one JSON line each: ``{"code", "name", "output"}`` in, ``{"ok", "error"}`` out. A block's
own stdout and stderr (the C level too) go to the file ``output`` names.
"""

from __future__ import annotations

import json
import os
import sys
import traceback


def serve() -> int:
    """Run blocks until the request pipe closes."""
    results = os.fdopen(os.dup(1), "w", buffering=1)
    namespace: dict[str, object] = {"__name__": "__main__"}
    with os.fdopen(os.dup(0)) as requests:
        for line in requests:
            request = json.loads(line)
            error = ""
            with open(request["output"], "w") as out:
                os.dup2(out.fileno(), 1)
                os.dup2(out.fileno(), 2)
                try:
                    exec(compile(request["code"], request["name"], "exec"), namespace)  # noqa: S102 - the docs' own code
                except BaseException as exc:  # noqa: BLE001 - a block's failure is the test's finding
                    if not (isinstance(exc, SystemExit) and exc.code in (None, 0)):
                        error = traceback.format_exc()
                finally:
                    sys.stdout.flush()
                    sys.stderr.flush()
            results.write(json.dumps({"ok": not error, "error": error}) + "\n")
    return 0
