"""Progress bars: tqdm when it is installed (it is a dependency), else plain lines, so that a machine that cannot
install it still runs everything."""
from __future__ import annotations

import sys

try:
    from tqdm import tqdm as progress_bar
except ImportError:  # pragma: no cover - exercised only where tqdm is missing
    class progress_bar:  # noqa: N801 - mirrors tqdm's name and interface
        def __init__(self, iterable=None, total=None, initial=0, desc="", disable=False, **_):
            self.iterable, self.total, self.n, self.desc, self.disable = iterable, total, initial, desc, disable

        def __iter__(self):
            for item in self.iterable:
                yield item
                self.update(1)

        def update(self, n=1):
            self.n += n

        def set_postfix(self, **values):
            if not self.disable:
                shown = " ".join(f"{k}={v}" for k, v in values.items())
                print(f"{self.desc} {self.n}/{self.total or '?'} {shown}", file=sys.stderr)

        @staticmethod
        def write(text):
            print(text)

        def close(self):
            pass
