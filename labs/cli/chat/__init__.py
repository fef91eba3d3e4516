"""`labs-gen --interactive` / `labs-gen chat`: a terminal chat on the local engine or a labs-api server."""

from labs.cli.chat.app import run_chat

__all__ = ["run_chat"]
