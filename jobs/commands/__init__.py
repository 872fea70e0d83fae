"""One module per `alexnet` subcommand (see jobs/cli.py)."""
