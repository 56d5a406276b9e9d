"""One module per sub-command of ``sink-modifier``: its parser, its run, and the workflow behind it."""
