"""The command line every `python -m <command>` shares: `--help` (exit 0), `--version`, and a
pointer to where the settings are listed, since most of what a command does is set there."""

from __future__ import annotations

import argparse
from importlib.metadata import PackageNotFoundError, version
from urllib.parse import urlsplit, urlunsplit

DISTRIBUTION = "bybit-klines-pipeline"

SETTINGS_EPILOG = (
    "Settings: STREAMER_* variables from the environment or ./.env (STREAMER_ENV_FILE names "
    "another file); every one is listed with its default and meaning in .env.example and in "
    "docs/settings.md. A problem with them exits 2 with one line per problem."
)


def package_version() -> str:
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:  # pragma: no cover - run from a source tree not installed
        return "unknown"


def command_parser(
    prog: str, description: str, epilog: str = SETTINGS_EPILOG
) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_version(parser)
    return parser


def add_version(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")


def redacted(url: str) -> str:
    """A Redis URL fit for an error line: the password replaced by ***."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + host))
