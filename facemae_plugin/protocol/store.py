"""Resumable steps of a protocol in one work directory: each runs once, its result kept.

A step writes its outputs, then ``steps/<name>.done.json`` with its result and the inputs that
decided it; a re-run reuses a finished step for the same inputs and runs it again for others. The
work directory is pinned to one protocol (``protocol.json``): finished steps of another are refused.
"""
import json
import os
import sys
import time

from ..core.files import write_json
from .spec import ProtocolError, merge_protocol

STEPS_DIR = "steps"


class StepStore:
    """The finished steps of one protocol in ``work_dir``."""

    def __init__(self, work_dir, protocol=None, progress=True):
        self.work_dir = os.path.abspath(os.fspath(work_dir))
        self.protocol = merge_protocol(protocol)
        self.progress = progress
        self.reused = set()  # steps already announced as reused, so a re-run prints each once
        self.used_steps = set()  # every step this object ran or reused
        self.own_seconds = {}  # step -> seconds it ran here, less the steps it ran first (its inputs)
        self._inner = []  # per running step: the seconds of the steps it ran inside it
        os.makedirs(self.work_dir, exist_ok=True)
        self._pin_protocol()

    def _pin_protocol(self):
        """Finished steps are only valid for the protocol that made them: refuse to mix two."""
        path = self.path("protocol.json")
        current = json.loads(json.dumps(self.protocol))  # tuples -> lists, as stored
        if os.path.isfile(path):
            with open(path) as f:
                stored = json.load(f)
            # A key added to the protocol after these steps ran had its default then too.
            stored = json.loads(json.dumps(merge_protocol(stored)))
            if stored != current:
                changed = sorted(k for k in set(stored) | set(current) if stored.get(k) != current.get(k))
                raise ProtocolError(f"{self.work_dir} holds steps of another protocol (differs in "
                                    f"{', '.join(changed)}); use a new work directory")
            return
        write_json(path, current, sort_keys=False, default=str)

    def path(self, *parts):
        return os.path.join(self.work_dir, *parts)

    def step_marker(self, name):
        """``steps/<name>.done.json``: written last, so its presence means the step finished."""
        return self.path(STEPS_DIR, f"{name}.done.json")

    def run_step(self, name, build, inputs=None):
        """Run ``build()`` unless ``<name>.done.json`` exists for the same ``inputs``; returns its
        (saved) result with seconds. A finished step made from other inputs (a variant edited
        without renaming it) runs again."""
        marker = self.step_marker(name)
        self.used_steps.add(name)
        if os.path.isfile(marker):
            with open(marker) as f:
                done = json.load(f)
            if inputs is None or done.get("inputs") == inputs:
                if name not in self.reused:
                    # Step lines are progress, like the bars: stderr, so stdout keeps only results.
                    print(f"[{name}] reusing finished step", file=sys.stderr, flush=True)
                    self.reused.add(name)
                return done
            stored = done.get("inputs") or {}
            changed = sorted(k for k in set(stored) | set(inputs) if stored.get(k) != inputs.get(k))
            print(f"[{name}] inputs changed ({', '.join(changed)}): running again", file=sys.stderr, flush=True)
        else:
            print(f"[{name}] running", file=sys.stderr, flush=True)
        started = time.perf_counter()
        self._inner.append(0.0)
        try:
            result = build()
        finally:
            inner = self._inner.pop()
        seconds = time.perf_counter() - started
        if self._inner:
            self._inner[-1] += seconds
        self.own_seconds[name] = seconds - inner
        result = {**result, "seconds": round(seconds, 1)}
        if inputs is not None:
            result["inputs"] = inputs
        write_json(marker, result, sort_keys=False, default=str)
        return result

    def step_finished(self, name, inputs):
        """Whether ``run_step(name, ..., inputs)`` would reuse a finished step."""
        marker = self.step_marker(name)
        if not os.path.isfile(marker):
            return False
        with open(marker) as f:
            return json.load(f).get("inputs", inputs) == inputs


def step_kind(name):
    """``recogniser-original-s0`` -> ``recogniser``: what a step does, without what it does it to."""
    return name.split("-", 1)[0]


def time_by_kind(store):
    """``{kind: (steps, seconds)}`` of the steps ``store`` ran (not reused), slowest kind first."""
    kinds = {}
    for name, seconds in store.own_seconds.items():
        count, total = kinds.get(step_kind(name), (0, 0.0))
        kinds[step_kind(name)] = (count + 1, total + seconds)
    return dict(sorted(kinds.items(), key=lambda item: -item[1][1]))


def where_the_time_went(store):
    """One line per kind of step run: how many, their minutes together and each on average."""
    kinds = time_by_kind(store)
    if not kinds:
        return "where the time went: nothing ran (every step reused)"
    total = sum(seconds for _, seconds in kinds.values())
    lines = [f"where the time went ({total / 60:.1f} min in steps, {len(store.reused)} reused):"]
    lines += [f"  {kind:<12} {count:>3} x {seconds / count / 60:5.1f} min = {seconds / 60:6.1f} min"
              for kind, (count, seconds) in kinds.items()]
    return "\n".join(lines)
