"""A third-party verifier package, as someone would publish it: it depends only on dyme's public helpers.

`exact` is the example plugin; `parity` is a coin for tests that need every mode of the gate. `hang`, `crash` and
`die` misbehave on purpose, to test that the engine survives plugins that never return, raise, or kill their
process; `broken` cannot even be constructed. `keyed` needs a secret option (as a verifier calling a paid API
would).
"""

import os
import time

from dyme_cli.verdict import AnswerVerifier, Match


class ExactVerifier(AnswerVerifier):
    name = "exact"
    description = "Character-exact match with the gold answer (example third-party plugin)."

    def __init__(self, answer_flag: str = "Answer:", strip: bool = True):
        super().__init__(answer_flag)
        self.strip = strip

    def matches(self, predicted, gold, sample):
        if self.strip:
            predicted, gold = predicted.strip(), gold.strip()
        return Match(predicted == gold, f"exact: {predicted!r} vs {gold!r}")


class HangingVerifier(ExactVerifier):
    name = "hang"
    description = "Never returns."

    def verify(self, completion, sample):
        time.sleep(3600)


class RaisingVerifier(ExactVerifier):
    name = "crash"
    description = "Raises on every call."

    def verify(self, completion, sample):
        raise RuntimeError("boom")


class ExitingVerifier(ExactVerifier):
    name = "die"
    description = "Kills its own process."

    def verify(self, completion, sample):
        os._exit(3)


class BrokenVerifier(ExactVerifier):
    name = "broken"
    description = "Fails in its constructor (a missing resource)."

    def __init__(self, answer_flag: str = "Answer:"):
        raise RuntimeError("cannot open the answer key")


class KeyedVerifier(ExactVerifier):
    name = "keyed"
    description = "Needs an API key (a verifier calling a paid service)."

    def __init__(self, answer_flag: str = "Answer:", api_key: str = ""):
        super().__init__(answer_flag)
        self.api_key = api_key

    def verify(self, completion, sample):
        verdict = super().verify(completion, sample)
        verdict.detail = f"called with a key of {len(self.api_key)} characters"
        return verdict


class ParityVerifier(ExactVerifier):
    name = "parity"
    description = "Right when the completion has an even number of characters: about half of any group's rollouts."

    def verify(self, completion, sample):
        from dyme_cli.verdict import Verdict

        even = len(completion) % 2 == 0
        return Verdict(even, None, {"format": 0.0, "accuracy": float(even)}, f"{len(completion)} characters")
