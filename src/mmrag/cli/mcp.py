"""``mmrag mcp``: the MCP server on stdio (an assistant starts it as a subprocess)."""

from __future__ import annotations

from typing import Any

from mmrag.cli._common import common_options, errors_to_click, main, settings_from


@main.command("mcp")
@common_options
@errors_to_click
def mcp_command(as_json: bool, **opts: Any) -> None:
    """Serve the MCP tools on stdio: search, answer, list_collections, get_document.

    Point an MCP client at `mmrag mcp --profile offline --data-dir DIR`. It runs as you, so it
    needs no API key; `mmrag serve` serves the same tools over HTTP at /mcp, with keys.
    Logs go to stderr (stdout carries the protocol).
    """
    import logging
    import sys

    from mmrag import tracing
    from mmrag.http.services import Services
    from mmrag.http.mcp import build_server

    # stdout is the protocol channel: nothing else may write there.
    logging.basicConfig(stream=sys.stderr, force=True, level=logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    tracing.configure()
    services = Services(settings_from(opts))
    services.start()
    try:
        build_server(services, use_keys=False).run("stdio")
    finally:
        services.close()
