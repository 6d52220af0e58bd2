"""One rich progress bar (on stderr) for a multi-file hub download.

huggingface-hub reports progress through a tqdm-like class; `bar_class_for` builds one that
forwards every byte count to a single rich task, so the user sees one bar for the whole model.
"""

from __future__ import annotations


class DownloadBar:
    """Bytes downloaded across files; `finish_file` tops up whatever the hub did not report."""

    def __init__(self, progress, description: str, total_bytes: int):
        self.progress = progress
        self.task = progress.add_task(description, total=total_bytes or None)
        self.file_bytes_seen = 0

    def advance(self, n: int) -> None:
        self.file_bytes_seen += n
        self.progress.advance(self.task, n)

    def start_file(self) -> None:
        self.file_bytes_seen = 0

    def finish_file(self, size: int) -> None:
        """Count a file as complete (it was already cached, or its size was under-reported)."""
        missing = size - self.file_bytes_seen
        if missing > 0:
            self.progress.advance(self.task, missing)
        self.file_bytes_seen = size


def bar_class_for(bar: DownloadBar) -> type:
    """A tqdm stand-in class that huggingface-hub instantiates per file; it feeds `bar`."""

    class HubFileProgress:
        def __init__(self, *args, initial: int = 0, total=None, **kwargs):
            self.total = total
            self.n = initial
            if initial:
                bar.advance(initial)

        def update(self, n=1) -> None:
            n = int(n or 0)
            self.n += n
            bar.advance(n)

        def update_transfer(self, n=1) -> None:
            """Network bytes (before they reach the disk): already counted by `update`."""

        def set_postfix_str(self, *args, **kwargs) -> None:
            pass

        def set_transfer_postfix_str(self, *args, **kwargs) -> None:
            pass

        def refresh(self, *args, **kwargs) -> None:
            pass

        def close(self) -> None:
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            self.close()

    return HubFileProgress
