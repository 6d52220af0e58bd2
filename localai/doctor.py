"""`localai doctor`: what this machine offers (Python, torch, CUDA, GPUs, kernels, audio, TTS, caches).

Each check returns `Check` records; a check that crashes becomes a 'missing' record instead of
stopping the report. `tts_engine_checks` is where the text-to-speech engines report themselves.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import subprocess
import sys
import traceback
from dataclasses import asdict, dataclass
from typing import Callable, Optional

from localai.settings import settings

CUDA_TORCH_HINT = "Install a CUDA build of torch: pip install torch --index-url https://download.pytorch.org/whl/cu128"


@dataclass
class Check:
    name: str
    status: str  # ok | missing | info
    detail: str
    hint: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def ok(name: str, detail: str) -> Check:
    return Check(name, "ok", detail)


def missing(name: str, detail: str, hint: str) -> Check:
    return Check(name, "missing", detail, hint)


def note(name: str, detail: str, hint: str = "") -> Check:
    return Check(name, "info", detail, hint)


@contextlib.contextmanager
def _stdout_to_stderr():
    """Libraries that print on import must not pollute stdout (it carries the report)."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


def python_checks() -> list[Check]:
    version = platform.python_version()
    if sys.version_info < (3, 10):
        return [missing("python", version, "Use Python 3.10 or newer")]
    return [ok("python", f"{version} ({sys.executable})")]


def _driver_version() -> Optional[str]:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        done = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = done.stdout.strip().splitlines()
    return lines[0].strip() if done.returncode == 0 and lines else None


def torch_checks() -> list[Check]:
    import torch

    build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU build"
    checks = [ok("torch", f"{torch.__version__} ({build}, {torch.get_num_threads()} CPU threads)")]
    if torch.version.cuda is None:
        return checks + [missing("cuda", "this torch is a CPU build: everything runs on the CPU", CUDA_TORCH_HINT)]
    if not torch.cuda.is_available():
        return checks + [missing("cuda", "no CUDA GPU visible",
                                 "Install the NVIDIA driver (check `nvidia-smi`) and CUDA_VISIBLE_DEVICES")]
    driver = _driver_version()
    checks.append(ok("cuda", f"runtime {torch.version.cuda}, driver {driver or 'unknown (no nvidia-smi)'}"))
    for index in range(torch.cuda.device_count()):
        checks += _gpu_checks(index)
    return checks


def _gpu_checks(index: int) -> list[Check]:
    import torch

    props = torch.cuda.get_device_properties(index)
    free, total = torch.cuda.mem_get_info(index)
    gib = 1024 ** 3
    detail = (f"{props.name}, compute capability {props.major}.{props.minor}, "
              f"{free / gib:.1f} GiB free of {total / gib:.1f} GiB")
    with torch.cuda.device(index):
        bf16 = torch.cuda.is_bf16_supported(including_emulation=False)  # emulated bf16 is no support
    bf16_check = ok(f"gpu{index} bf16", "supported") if bf16 else missing(
        f"gpu{index} bf16", "not supported (compute capability below 8.0)", "Models run in float16 on this GPU")
    return [ok(f"gpu{index}", detail), bf16_check]


def kernel_checks() -> list[Check]:
    checks = []
    try:
        with _stdout_to_stderr():
            import triton
        checks.append(ok("triton", triton.__version__))
    except ImportError:
        checks.append(missing("triton", "not installed", "pip install triton (Linux + NVIDIA GPU)"))
    try:
        with _stdout_to_stderr():
            import bitsandbytes
        checks.append(ok("bitsandbytes", bitsandbytes.__version__))
    except ImportError:
        checks.append(missing("bitsandbytes", "not installed", "pip install bitsandbytes"))
    return checks


def audio_checks() -> list[Check]:
    try:
        with _stdout_to_stderr():
            import sounddevice
    except OSError as exc:  # raised at import when the PortAudio library is missing
        return [missing("portaudio", str(exc), "Install PortAudio: sudo apt-get install libportaudio2")]
    except ImportError:
        return [missing("portaudio", "the sounddevice package is not installed", "pip install sounddevice")]
    checks = [ok("portaudio", sounddevice.get_portaudio_version()[1])]
    outputs = [d for d in sounddevice.query_devices() if d["max_output_channels"] > 0]
    if not outputs:
        return checks + [missing("audio output", "no output device found",
                                 "Connect speakers or headphones; audio can still be written to a file")]
    names = ", ".join(d["name"] for d in outputs[:4]) + (", ..." if len(outputs) > 4 else "")
    return checks + [ok("audio output", f"{len(outputs)} device(s): {names}")]


def tts_engine_checks() -> list[Check]:
    """The text-to-speech engines available here. Speech engines add their own records to this list."""
    from localai.store.aliases import lookup_alias
    from localai.store.hub import cached_snapshot

    voxtral = lookup_alias("voxtral-tts")
    snapshot = cached_snapshot(voxtral.repo)
    if snapshot is None:
        checks = [note("voxtral weights", f"{voxtral.repo} not downloaded",
                       "Run `localai download voxtral-tts` (about 8 GB, CC BY-NC 4.0)")]
    else:
        checks = [ok("voxtral weights", str(snapshot))]
    from localai.tts.engines import engine_report

    return checks + [Check(**record) for record in engine_report()]


def cache_checks() -> list[Check]:
    from localai.settings import localai_home
    from localai.store.home import folder_size
    from localai.store.hub import hub_cache_dir
    from localai.store.listing import format_size

    checks = []
    for name, folder, setting in (("localai home", localai_home(), "LOCALAI_HOME"),
                                  ("hf cache", hub_cache_dir(), "HF_HOME")):
        # the folder, or the nearest one above it that it would be created in
        existing = next((p for p in [folder, *folder.absolute().parents] if p.exists()), folder)
        if not existing.is_dir():
            detail = f"{folder} is a file" if existing == folder else f"{folder} is under {existing}, a file"
            checks.append(missing(name, detail + ", not a folder", f"Point {setting} at a folder"))
        elif not os.access(existing, os.W_OK):
            checks.append(missing(name, f"{existing} is not writable", "Fix its permissions or point it elsewhere"))
        elif not folder.exists():
            checks.append(note(name, f"{folder} (empty)"))
        else:
            checks.append(ok(name, f"{folder} ({format_size(folder_size(folder))})"))
    return checks


CHECK_GROUPS: list[Callable[[], list[Check]]] = [
    python_checks, torch_checks, kernel_checks, audio_checks, tts_engine_checks, cache_checks,
]


def run_checks() -> list[Check]:
    checks = []
    for group in CHECK_GROUPS:
        try:
            checks += group()
        except Exception as exc:  # one broken component must not hide the rest of the report
            if settings.debug:
                traceback.print_exc()
            name = group.__name__.removesuffix("_checks").replace("_", " ")
            checks.append(missing(name, f"check failed: {type(exc).__name__}: {exc}".splitlines()[0],
                                  "Run with --debug for details"))
    return checks
