"""Every option of every verb says what it does and shows its default."""
from __future__ import annotations

import argparse

import pytest

from hrmedseg.cli.main import build_parser

def _verbs() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


VERBS = sorted(_verbs())


@pytest.mark.parametrize("verb", VERBS)
def test_every_option_has_help(verb):
    p = _verbs()[verb]
    missing = [a.option_strings or [a.dest] for a in p._actions
               if not isinstance(a, argparse._HelpAction) and a.help != argparse.SUPPRESS
               and not (a.help or "").strip()]
    assert not missing, f"{verb}: no help for {missing}"


@pytest.mark.parametrize("verb", VERBS)
def test_help_shows_defaults(verb):
    p = _verbs()[verb]
    text = " ".join(p.format_help().split())
    for a in p._actions:
        if a.option_strings and not any(a.default is d for d in (None, False, argparse.SUPPRESS)) \
                and a.default != [] and a.help != argparse.SUPPRESS:
            assert f"default: {a.default}" in text or "default" in (a.help or ""), \
                f"{verb} {a.option_strings[0]}: default {a.default!r} not shown"


BATCH_VERB_ARGV = {
    "profile": ["m"], "benchmark": ["--models", "m", "-o", "x"], "predict": ["m", "-o", "x"],
    "evaluate": ["m", "--data", "d", "-o", "x"],
    "distill": ["--teacher", "t.pt", "--images", "d", "-o", "x"],
    "train-esp": ["--data", "a=d:0", "-o", "x"],
    "zeroshot": ["--encoder", "teacher", "--sam", "s.pt", "--data", "d", "-o", "x"],
}


def test_training_verbs_are_checked_too():
    assert {"train", "distill", "train-esp", "compare", "zeroshot", "reproduce"} <= set(VERBS)


@pytest.mark.parametrize("verb", sorted(BATCH_VERB_ARGV))
def test_batch_size_everywhere_batch_hidden_alias(verb):
    p = _verbs()[verb]
    assert "--batch-size" in p.format_help()
    assert "--batch " not in p.format_help() and "--batch," not in p.format_help()
    base = BATCH_VERB_ARGV[verb]
    a = p.parse_args(base + ["--batch", "3"])
    b = p.parse_args(base + ["--batch-size", "3"])
    assert vars(a) == vars(b)
