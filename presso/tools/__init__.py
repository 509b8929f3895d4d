"""The `presso` command and its subcommands: thin wrappers over the Python API."""
