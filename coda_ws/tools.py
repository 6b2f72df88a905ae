"""Command-line tools over the stream: tail, record, play (placeholder until written)."""


def add_tool_commands(subparsers):
    """Register the tail, record and play subcommands on an argparse subparsers object."""
