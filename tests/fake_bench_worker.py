"""A stand-in for `python -m localai.bench.worker` that speaks its protocol without a model.

FAKE_WORKER in its environment says how it behaves:
  ok                 says ready, then sends one result per `go`
  silent-loading     never says ready
  silent-repeat      says ready, then never answers `go`
  half-line          writes part of its ready line and never finishes it
  dies-leaving-pipe  exits with code 3 while a child of its own keeps the protocol pipe open
  fails              reports an error instead of ready, as a worker whose model fails to load does
The silent ones (and that child) give up after HANG_S, so a launcher that waits for them fails a test instead of hanging it.
"""

import json
import os
import subprocess
import sys
import time

HANG_S = 20


def send(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def ready() -> str:
    return json.dumps({"event": "ready", "batch_size": 1, "engine": "fake", "decode_mode": "eager",
                       "pid": os.getpid(), "cores": None}) + "\n"


def result(spec: dict, repeat: int) -> str:
    traces = [{"request_id": i, "input_len": 4, "admitted": 0.0, "token_times": [0.5, 1.0], "token_ids": [i, i]}
              for i in spec["request_ids"]]
    return json.dumps({"event": "result", "repeat": repeat, "traces": traces, "peak_memory_mb": 1.0}) + "\n"


def main() -> None:
    spec = json.loads(sys.stdin.readline())
    behaviour = os.environ.get("FAKE_WORKER", "ok")
    if behaviour == "dies-leaving-pipe":  # the child inherits stdin and stdout; it ends when stdin closes
        subprocess.Popen([sys.executable, "-c", f"import select, sys; select.select([sys.stdin], [], [], {HANG_S})"])
        sys.exit(3)
    if behaviour == "fails":
        send(json.dumps({"event": "error", "message": "out of memory loading the model"}) + "\n")
        sys.exit(1)
    if behaviour == "silent-loading":
        time.sleep(HANG_S)
        return
    if behaviour == "half-line":
        send(ready()[:12])
        time.sleep(HANG_S)
        return
    send(ready())
    for repeat in range(spec["repeats"]):
        if sys.stdin.readline().strip() != "go":
            return
        if behaviour == "silent-repeat":
            time.sleep(HANG_S)
            return
        send(result(spec, repeat))


if __name__ == "__main__":
    main()
