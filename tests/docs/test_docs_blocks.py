"""Every ```bash and ```python block of README.md and docs/ runs, or says why it is illustrative.

Each page runs in a fresh workspace: a copy of a small offline corpus (the sample corpus as
``docs/`` and ``photos/``, and as ``ingest/sample_corpus``) with ``docs/`` and ``photos/`` already ingested into ``./.mmrag`` as collection ``kb``, with the offline
profile (``MMRAG_PROFILE=offline``) and ``.venv/bin/mmrag`` on the PATH, as after ``make demo``.
A page's blocks run in order and share that workspace; its Python blocks share one namespace.
A block fails on a non-zero exit, a traceback, or "no hits" (a search that finds nothing is a
broken example: issue 27's first finding). The first failure ends the page, since later blocks
build on earlier ones.

`mmrag` commands go to a warm server (tests/docs/forkserver.py) that forks the real CLI after
importing torch and friends once, so a page costs seconds per command instead of ~10 s.
"""

from __future__ import annotations

import ast
import builtins
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, SAMPLE_CORPUS
from tests.docs.blocks import Block, blocks
from tests.docs.forkserver import CLIENT

PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]

#: Pages whose blocks take minutes (dozens of model-loading commands, an evaluation run): the long
#: tier runs them (`make test-long`); `make test` runs the rest, in about two minutes.
LONG_PAGES = {
    "evaluation.md": "`mmrag eval run` four times, answers included (70 s on a loaded machine)",
}

BLOCK_TIMEOUT_S = 300


def _all_blocks() -> list[Block]:
    return [block for page in PAGES for block in blocks(page)]


def test_every_block_names_its_language() -> None:
    """A bare fence would hide a command from the runner: each says bash, python, text, json, ..."""
    bare = [b.where() for b in _all_blocks() if not b.language]
    assert not bare, f"code fences without a language (```bash, ```text, ...): {bare}"


def test_the_docs_have_runnable_blocks_on_every_main_page() -> None:
    """The runner finds what it should: a check on the extraction, not only on the docs."""
    runnable = {b.page.name for b in _all_blocks() if b.runs_as}
    assert {"README.md", "getting-started.md", "cli.md", "python.md", "lifecycle.md", "evaluation.md"} <= runnable


def test_blocks_are_extracted_with_their_markers(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# t\n\n```bash\nmmrag status\n```\n\n<!-- illustrative: needs a GPU -->\n\n```python\nimport x\n```\n"
                    "\n```text\nout\n```\n\n- item\n\n    ```sh\n    echo hi\n    ```\n")
    found = blocks(page)
    assert [(b.line, b.language, b.runs_as, b.illustrative) for b in found] == [
        (3, "bash", "bash", None), (9, "python", None, "needs a GPU"), (13, "text", None, None), (19, "sh", "bash", None)]
    assert found[0].code == "mmrag status\n" and found[3].code == "echo hi\n"
    page.write_text("<!-- illustrative: -->\n```bash\nx\n```\n")
    with pytest.raises(ValueError, match="must say why"):
        blocks(page)
    page.write_text("```bash\nx\n")
    with pytest.raises(ValueError, match="never closed"):
        blocks(page)


def _undefined_names(code: str, defined: set[str]) -> set[str]:
    """Global names ``code`` reads that nothing in it (or ``defined``, or builtins) binds."""

    tree = ast.parse(code)
    bound = set(defined) | set(dir(builtins))
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            bound |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            bound.add(node.id)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)} - bound


def test_illustrative_python_blocks_parse_and_name_nothing_undefined() -> None:
    """They do not run, so check what can be checked: syntax, and no NameError waiting (issue 27:
    the LlamaIndex snippet used RetrieverQueryEngine without importing it). A name the block expects
    from you (``my_llm``) must appear in its marker's reason."""
    problems = []
    for page in PAGES:
        defined: set[str] = set()  # a page's blocks share one namespace
        for block in blocks(page):
            if block.language not in ("python", "py"):
                continue
            source = block.code if "await " not in block.code else "async def _():\n" + "".join(
                "    " + line + "\n" for line in block.code.splitlines())
            try:
                missing = _undefined_names(source, defined)
            except SyntaxError as exc:
                problems.append(f"{block.where()}: {exc}")
                continue
            missing = {name for name in missing if name not in (block.illustrative or "")}
            if missing:
                problems.append(f"{block.where()}: undefined {sorted(missing)}")
            for node in ast.walk(ast.parse(source)):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    defined |= {(a.asname or a.name).split(".")[0] for a in node.names}
                elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                    defined.add(node.id)
    assert not problems, problems


# --- running them -------------------------------------------------------------------------------

def _env(sock: Path, workspace: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MMRAG_")}
    env.update({
        "PATH": f"{workspace / '.venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}",
        "MMRAG_PROFILE": "offline", "MMRAG_DOCS_SOCKET": str(sock),
        "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "ANONYMIZED_TELEMETRY": "False",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True", "RAGAS_DO_NOT_TRACK": "true", "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "NO_MKDOCS_2_WARNING": "1",
    })
    # The server imports mmrag and tests/ as this process does (a worktree's src/ first).
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(REPO / "src"), str(REPO), env.get("PYTHONPATH", "")] if p)
    return env


@pytest.fixture(scope="session")
def warm_mmrag(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """The fork server's socket, and the environment blocks run with (workspace added per page)."""
    folder = tmp_path_factory.mktemp("docs-server")
    sock = folder / "mmrag.sock"
    env = _env(sock, folder)
    server = subprocess.Popen([sys.executable, "-m", "tests.docs.forkserver", str(sock)], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=(folder / "server.log").open("w"), text=True)
    ready = server.stdout.readline() if server.stdout else ""
    if ready.strip() != "ready":
        server.kill()
        pytest.fail(f"docs fork server did not start: {(folder / 'server.log').read_text()[-3000:]}")
    yield sock
    server.terminate()
    server.wait(timeout=30)


def _workspace(path: Path) -> Path:
    """A corpus as a user would have it: documents, photos and the `.venv/bin` of `make demo`."""
    docs, photos = path / "docs", path / "photos"
    docs.mkdir(parents=True)
    for item in SAMPLE_CORPUS.iterdir():
        if item.is_file():
            shutil.copy(item, docs / item.name)
    shutil.copy(SAMPLE_CORPUS / "signs-catalogue.pdf", docs / "old.pdf")
    (docs / "faq").mkdir()
    (docs / "faq" / "opening-hours.md").write_text(
        "# Opening hours\n\nThe reception desk is staffed from 8:00 to 18:00 on weekdays. The building is "
        "closed on public holidays, and the car park closes at 19:00.\n")
    shutil.copytree(SAMPLE_CORPUS / "images", photos)
    shutil.copytree(SAMPLE_CORPUS, path / "ingest" / "sample_corpus")  # as in the repository, for `make demo`'s corpus
    bin_ = path / ".venv" / "bin"
    bin_.mkdir(parents=True)
    (bin_ / "mmrag").write_text(f"#!{sys.executable} -IS\n{CLIENT}")
    (bin_ / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    for script in bin_.iterdir():
        script.chmod(0o755)
    return path


def _run_bash(code: str, workspace: Path, env: dict[str, str]) -> tuple[int, str]:
    proc = subprocess.Popen(["bash", "-e", "-o", "pipefail", "-c", code], cwd=workspace, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=BLOCK_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        return 124, out + f"\n[timed out after {BLOCK_TIMEOUT_S} s]"
    return proc.returncode, out


@pytest.fixture(scope="session")
def ingested_template(warm_mmrag: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The corpus ingested once, as collection `kb`: (the workspace path, a pristine copy of it).

    Sources are recorded by absolute path, so every page runs at the same path, restored from the copy.
    """
    base = tmp_path_factory.mktemp("docs")
    workspace = _workspace(base / "ws")
    code, out = _run_bash("mmrag ingest docs/ photos/ --collection kb", workspace, _env(warm_mmrag, workspace))
    assert code == 0, out
    shutil.copytree(workspace, base / "pristine", symlinks=True)
    return workspace, base / "pristine"


class _PythonPage:
    """The page's Python worker, forked from the warm server on first use."""

    def __init__(self, sock: Path, workspace: Path, env: dict[str, str]) -> None:
        self.sock, self.workspace, self.env = sock, workspace, env
        self.conn: socket.socket | None = None

    def run(self, block: Block, n: int) -> tuple[int, str]:
        if self.conn is None:
            req_r, self.req_w = os.pipe()
            self.res_r, res_w = os.pipe()
            log = open(self.workspace / ".pyworker.log", "w")  # noqa: SIM115 - lives as long as the page
            self.conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.conn.connect(str(self.sock))
            body = json.dumps({"kind": "python", "argv": [], "cwd": str(self.workspace), "env": self.env}).encode()
            socket.send_fds(self.conn, [struct.pack("!Q", len(body))], [req_r, res_w, log.fileno()])
            self.conn.sendall(body)
            for fd in (req_r, res_w):
                os.close(fd)
            log.close()
            self.results = os.fdopen(self.res_r)
        output = self.workspace / f".block-{n}.out"
        request = {"code": block.code, "name": f"<{block.where()}>", "output": str(output)}
        os.write(self.req_w, (json.dumps(request) + "\n").encode())
        line = _readline(self.results, BLOCK_TIMEOUT_S)
        if line is None:
            return 124, f"[no result after {BLOCK_TIMEOUT_S} s]"
        result = json.loads(line)
        text = output.read_text() if output.exists() else ""
        return (0 if result["ok"] else 1), text + result["error"]

    def close(self) -> None:
        if self.conn is not None:
            os.close(self.req_w)
            self.conn.settimeout(60)
            try:
                self.conn.recv(16)
            except OSError:
                pass
            self.conn.close()
            self.results.close()


def _readline(stream, timeout: float) -> str | None:  # type: ignore[no-untyped-def]
    import selectors

    selector = selectors.DefaultSelector()
    selector.register(stream, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if selector.select(timeout=1):
            line = stream.readline()
            return line or None
    return None


def _failure(block: Block, code: int, out: str) -> str | None:
    if code != 0:
        return f"exit status {code}"
    if "Traceback (most recent call last)" in out:
        return "printed a traceback"
    if "no hits" in out:
        return 'a search printed "no hits"'
    return None


def _page_params() -> list[object]:
    params = []
    for page in PAGES:
        if not any(b.runs_as for b in blocks(page)):
            continue
        marks = [pytest.mark.long] if page.name in LONG_PAGES else []
        params.append(pytest.param(page, id=str(page.relative_to(REPO)), marks=marks))
    return params


@pytest.mark.slow
@pytest.mark.parametrize("page", _page_params())
def test_page_blocks_run(page: Path, warm_mmrag: Path, ingested_template: tuple[Path, Path]) -> None:
    workspace, pristine = ingested_template
    shutil.rmtree(workspace)
    shutil.copytree(pristine, workspace, symlinks=True)
    env = _env(warm_mmrag, workspace)
    python = _PythonPage(warm_mmrag, workspace, env)
    try:
        for n, block in enumerate(b for b in blocks(page) if b.runs_as):
            started = time.monotonic()
            if block.runs_as == "bash":
                code, out = _run_bash(block.code, workspace, env)
            else:
                code, out = python.run(block, n)
            problem = _failure(block, code, out)
            print(f"{block.where()}: {block.runs_as}, {time.monotonic() - started:.1f} s, "
                  f"{'FAILED: ' + problem if problem else 'ok'}")
            if problem:
                pytest.fail(f"{block.where()} ({block.runs_as}) {problem}.\n--- block ---\n{block.code}"
                            f"--- output (last 4000 characters) ---\n{out[-4000:]}", pytrace=False)
    finally:
        python.close()


@pytest.mark.slow
def test_the_runner_reports_what_a_user_would_see_fail(warm_mmrag: Path, tmp_path: Path) -> None:
    """The warm server passes exit statuses and output through, so a broken example cannot pass."""
    workspace = _workspace(tmp_path / "ws")
    env = _env(warm_mmrag, workspace)
    code, out = _run_bash(".venv/bin/mmrag status --collection nope\necho not reached", workspace, env)
    assert code == 2 and "nope" in out and "not reached" not in out, out  # unknown collection: exit 2, block stops
    code, out = _run_bash("mmrag ingest docs/ --collection kb >/dev/null\nmmrag search 'x' --collection kb --doc-type docx",
                          workspace, env)
    assert code == 0 and _failure(blocks(REPO / "README.md")[0], code, out) == 'a search printed "no hits"', out
    python = _PythonPage(warm_mmrag, workspace, env)
    try:
        page = tmp_path / "p.md"
        page.write_text("```python\nx = 41\n```\n\n```python\nprint(x + 1)\nundefined_name\n```\n")
        first, second = blocks(page)
        assert python.run(first, 0) == (0, "")
        code, out = python.run(second, 1)
        assert code == 1 and out.startswith("42\n") and "NameError" in out, out  # one namespace per page
    finally:
        python.close()
