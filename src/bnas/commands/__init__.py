"""The CLI subcommands: each public module here defines `register(subparsers)` (modules named `_x` are shared
helpers). `bnas.cli` imports every one of them and calls its `register`, which adds a subparser and sets `func`
to a handler returning the exit code. Handlers raise `BnasError` for user mistakes.
"""
