"""CLI subcommands beyond `search` and `genotype`: each module here defines `register(subparsers)`.

`bnas.cli` imports every module of this package and calls its `register`, which adds a subparser and sets
`func` to a handler returning the exit code. Handlers raise `BnasError` for user mistakes.
"""
