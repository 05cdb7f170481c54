"""`corral mcp serve`: a Model Context Protocol server over stdio, on the official SDK.

A coding agent (Claude Code, an IDE) that has it as an MCP server can steer the project's
fleet with six tools: ``run``, ``stat``, ``logs``, ``pause``, ``resume`` and ``kill``.
Each acts on the project's store as the CLI command of the same name does, through the
same operator actions (``corral.engine.actions``), so it needs no running scheduler and
no operator token; a scheduler sharing the store sees each change at its next poll. Each
change is audited as ``mcp:<user>@<host>``. A refusal (an unknown agent, a run that has
already ended) comes back as a tool error whose text says what was wrong.
"""

from corral.mcp.server import Fleet, build_server, mcp_actor, serve

__all__ = ["Fleet", "build_server", "mcp_actor", "serve"]
