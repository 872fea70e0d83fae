"""One module per `alexnet` subcommand (see jobs/cli.py)."""


def parse_pairs(items: list[str], option: str) -> dict[str, str]:
    """Repeated `OPTION KEY=VALUE` arguments -> dict; a malformed item names the option."""
    from pipelines.errors import UserError

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"{option} {item!r}: expected KEY=VALUE")
        out[key] = value
    return out
