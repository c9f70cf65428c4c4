"""The calls tests speak: tone programs the STT emulators transcribe, and a card-number call.

The emulators answer a tone burst with its pitch ("tone 400 hertz" for 400 Hz), so a
program's tones are its words. Each test adds the tail it needs (a long silence to keep a
call open, a third burst), so what it proves stays visible where it is used.
"""

from __future__ import annotations

from tests.support.audio import pcm_program

Part = tuple[str, int] | tuple[str, int, float]

# The caller says two things: 400 Hz for 600 ms, then 700 Hz for 400 ms.
CALLER_OPENING: tuple[Part, ...] = (("silence", 200), ("tone", 600, 400), ("silence", 500),
                                    ("tone", 400, 700))
CALLER_SAYS = ["tone 400 hertz", "tone 700 hertz"]
# The agent says one thing: 1000 Hz for 500 ms.
AGENT_OPENING: tuple[Part, ...] = (("silence", 300), ("tone", 500, 1000))


def caller(*tail: Part) -> bytes:
    """The caller's two utterances, then ``tail``, as 16-bit PCM at 8 kHz."""
    return pcm_program(*CALLER_OPENING, *tail)


def agent(*tail: Part) -> bytes:
    """The agent's utterance, then ``tail``, as 16-bit PCM at 8 kHz."""
    return pcm_program(*AGENT_OPENING, *tail)


CALLER = caller(("silence", 500))

# A card-number call. Three utterances: the card number is spoken over the first two
# finals, the security code is announced at the end of the second and said in the third.
SPEECH = pcm_program(("silence", 200), ("tone", 1200, 400), ("silence", 500),
                     ("tone", 1200, 500), ("silence", 500), ("tone", 600, 600),
                     ("silence", 500))
SCRIPT = ["okay my card number is four one one one",
          "one one one one one one one one one one one one and the cvv is",
          "seven three seven thanks"]
# What must appear nowhere. (Digits alone would match ids and timestamps by chance: the
# engine speaks the numbers as words here, and texts are also checked for any digit.)
SECRETS = ["four one one one", "one one one one", "seven three seven"]


def leaked(text: str) -> list[str]:
    """The secrets of the card-number call that ``text`` contains."""
    return [s for s in SECRETS if s in text]


AGENT = agent(("silence", 700))
AGENT_SAYS = ["tone 1000 hertz"]
# Three utterances, for engines that must carry a leg across a drop, a failover or a roll.
CALLER_THREE = caller(("silence", 500), ("tone", 500, 1000), ("silence", 500))
CALLER_THREE_SAYS = [*CALLER_SAYS, "tone 1000 hertz"]
# A call that stays open a few seconds after its last word, to be watched while live.
CALLER_LIVE = caller(("silence", 2500))
AGENT_LIVE = agent(("silence", 3100))
