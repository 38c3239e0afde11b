"""Progress on a terminal: bars for chunks and a line naming the stage of training."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator

from tqdm import tqdm


def progress(total: int | None, desc: str, quiet: bool, unit: str = "chunk"):
    """A progress bar on stderr; ``disable=None`` draws only on a terminal, so logs and pipes
    stay clean."""
    return tqdm(total=total, desc=desc, disable=True if quiet else None, file=sys.stderr,
                leave=False, unit=unit)


class Stages:
    """On a terminal, one line naming the stage of training that runs and the time so far:
    the stages are long (seconds each on millions of rows) and have no steps to count."""

    def __init__(self, names: list[str], quiet: bool):
        self.bar = tqdm(total=len(names), disable=True if quiet else None, file=sys.stderr,
                        leave=False, bar_format="training: {desc} ({n}/{total} done, {elapsed})")
        self.started = False

    def __call__(self, name: str) -> None:
        if self.started:
            self.bar.update(1)
        self.started = True
        self.bar.set_description_str(name)

    def close(self) -> None:
        self.bar.close()


TRAIN_STAGES = ["reading metrics", "baselines", "forest", "calibration", "diagnosis",
                "writing the bundle"]


def with_progress(items: Iterable, bar) -> Iterator:
    with bar:
        for x in items:
            yield x
            bar.update(1)

