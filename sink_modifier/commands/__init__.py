"""One module per sub-command of ``sink-modifier``: ``add_parser(subparsers)``, ``run(args) -> int``,
and the workflow behind it; :mod:`sink_modifier.commands.arguments` holds the shared argument types."""
