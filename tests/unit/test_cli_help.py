"""The command line explains itself: every subcommand and option has help text."""

from __future__ import annotations

import argparse

import pytest

from bridge.cli import build_parser


def subcommands(parser: argparse.ArgumentParser, prefix: str = ""
                ) -> list[tuple[str, argparse.ArgumentParser, str | None]]:
    """(name, parser, its one-line help) for every subcommand, nested ones included."""
    found = []
    for action in parser._actions:  # argparse offers no public walk over subparsers
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, sub in action.choices.items():
                found.append((f"{prefix}{name}", sub, helps.get(name)))
                found += subcommands(sub, f"{prefix}{name} ")
    return found


COMMANDS = subcommands(build_parser())


def test_the_commands_are_all_found() -> None:
    names = {name for name, _, _ in COMMANDS}
    assert {"serve", "stt-local", "demo", "simulate", "outbox", "outbox replay"} <= names


@pytest.mark.parametrize(("name", "parser", "summary"), COMMANDS, ids=[c[0] for c in COMMANDS])
def test_every_subcommand_and_option_has_help(name: str, parser: argparse.ArgumentParser,
                                              summary: str | None) -> None:
    assert summary, f"{name} has no help line"
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            continue
        assert action.help, f"{name} {'/'.join(action.option_strings) or action.dest}"


def test_serve_help_names_the_settings_file_and_the_main_variables() -> None:
    [serve] = [parser for name, parser, _ in COMMANDS if name == "serve"]
    text = serve.format_help()
    for needed in ("--config", "CALLBRIDGE_CONFIG", "config/callbridge.toml",
                   "TELNYX_API_KEY", "CALLBRIDGE_WEBHOOKS_URLS", "CALLBRIDGE_WEBHOOKS_SECRET",
                   "CALLBRIDGE_SERVER_PORT", "ready on"):
        assert needed in text


def test_simulate_help_says_what_speed_0_does() -> None:
    [simulate] = [parser for name, parser, _ in COMMANDS if name == "simulate"]
    text = " ".join(simulate.format_help().split())
    assert "0 sends as fast as the socket takes it" in text
    assert "drops" in text and "--wait" in text
