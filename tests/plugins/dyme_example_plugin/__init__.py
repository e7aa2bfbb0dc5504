"""A third-party verifier package, as someone would publish it: it depends only on dyme's public helpers.

`exact` is the example plugin; `parity` is a coin for tests that need every mode of the gate. `hang`, `crash`,
`die`, `interrupt` and `huge` misbehave on purpose, to test that the engine survives plugins that never return, raise,
kill their process or return absurd rewards; `broken`, `slowstart` and `exitstart` cannot even be constructed (they
raise, never return, end the process). `keyed` needs a secret option (as a verifier calling a paid API
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


class SlowStartVerifier(ExactVerifier):
    name = "slowstart"
    description = "Its constructor never returns (a resource that never answers)."

    def __init__(self, answer_flag: str = "Answer:"):
        time.sleep(3600)


class ExitAtStartVerifier(ExactVerifier):
    name = "exitstart"
    description = "Its constructor ends the process."

    def __init__(self, answer_flag: str = "Answer:"):
        os._exit(7)


class InterruptingVerifier(ExactVerifier):
    name = "interrupt"
    description = "Raises KeyboardInterrupt on every call."

    def verify(self, completion, sample):
        raise KeyboardInterrupt


class HugeRewardVerifier(ExactVerifier):
    name = "huge"
    description = "Rewards of 1e308: finite, but their mean and spread overflow."

    def verify(self, completion, sample):
        from dyme_cli.verdict import Verdict

        return Verdict(True, None, {"format": 1e308, "accuracy": -1e308}, "huge")
