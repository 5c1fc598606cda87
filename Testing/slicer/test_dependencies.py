"""First-use installation: one confirmation, nothing installed without it, one-sentence errors."""

from __future__ import annotations

import pytest
from MiniSAMSegmentLib.dependencies import (
    PIP_REQUIREMENTS,
    InstallError,
    ensure_dependencies,
    missing_requirements,
    resolve_device,
)

TORCH = object()  # stands for the installed torch module


class Recorder:
    """Fake confirm / installers that record their calls."""

    def __init__(self, answer: bool = True, fail_on: str | None = None, torch=TORCH) -> None:
        self.answer, self.fail_on, self.torch = answer, fail_on, torch
        self.questions: list[str] = []
        self.pip: list[str] = []
        self.torch_calls = 0

    def confirm(self, text: str) -> bool:
        self.questions.append(text)
        return self.answer

    def pip_install(self, requirement: str) -> None:
        if requirement == self.fail_on:
            raise RuntimeError("network unreachable\nlong pip log")
        self.pip.append(requirement)

    def install_torch(self):
        self.torch_calls += 1
        return self.torch


def _finder(missing: set[str]):
    return lambda name: None if name in missing else object()


def _ensure(recorder: Recorder, missing: set[str]) -> list[str]:
    return ensure_dependencies(
        recorder.confirm, recorder.pip_install, recorder.install_torch, _finder(missing)
    )


def test_nothing_missing_asks_nothing() -> None:
    recorder = Recorder()
    assert _ensure(recorder, set()) == []
    assert recorder.questions == [] and recorder.pip == [] and recorder.torch_calls == 0


def test_one_confirmation_then_torch_and_the_missing_packages() -> None:
    recorder = Recorder()
    installed = _ensure(recorder, {"torch", "segment_anything", "scipy"})
    assert len(recorder.questions) == 1
    assert "PyTorch" in recorder.questions[0] and "segment-anything" in recorder.questions[0]
    assert recorder.torch_calls == 1
    assert recorder.pip == [PIP_REQUIREMENTS["segment_anything"], PIP_REQUIREMENTS["scipy"]]
    assert installed[0].startswith("torch") and installed[1:] == recorder.pip


def test_torch_present_is_not_reinstalled() -> None:
    recorder = Recorder()
    _ensure(recorder, {"safetensors"})
    assert recorder.torch_calls == 0 and recorder.pip == ["safetensors>=0.4"]
    assert "PyTorch" not in recorder.questions[0]


def test_declining_installs_nothing() -> None:
    recorder = Recorder(answer=False)
    with pytest.raises(InstallError, match="cannot run until"):
        _ensure(recorder, {"torch", "tqdm"})
    assert recorder.pip == [] and recorder.torch_calls == 0


def test_failures_are_one_sentence() -> None:
    recorder = Recorder(fail_on="tqdm>=4.60")
    with pytest.raises(InstallError) as error:
        _ensure(recorder, {"tqdm"})
    assert "\n" not in str(error.value) and "network unreachable" in str(error.value)
    with pytest.raises(InstallError, match="PyTorch was not installed"):
        _ensure(Recorder(torch=None), {"torch"})


def test_missing_requirements_and_device_here() -> None:
    assert missing_requirements() == (False, [])  # this environment has everything
    assert missing_requirements(_finder({"torch", "tqdm"})) == (True, ["tqdm>=4.60"])
    import torch

    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device(" cuda:1 ") == "cuda:1"


def test_a_second_installation_while_one_runs_is_refused() -> None:
    """pip's output is logged while Qt processes events: a click then must not start a second install."""
    from MiniSAMSegmentLib.busy import BusyError

    recorder, refused = Recorder(), []

    def pip_install(requirement: str) -> None:  # a click arrives while pip runs
        with pytest.raises(BusyError) as error:
            _ensure(Recorder(), {"tqdm"})
        refused.append(str(error.value))
        recorder.pip_install(requirement)

    installed = ensure_dependencies(
        recorder.confirm, pip_install, recorder.install_torch, _finder({"scipy"})
    )
    assert installed == [PIP_REQUIREMENTS["scipy"]] and recorder.pip == [PIP_REQUIREMENTS["scipy"]]
    assert len(refused) == 1 and refused[0].startswith("MiniSAM is busy installing Python packages")
    assert _ensure(Recorder(), {"tqdm"}) == [PIP_REQUIREMENTS["tqdm"]]  # free again afterwards


def test_pip_runs_off_the_calling_thread_while_it_pumps() -> None:
    """The GUI's installer: pip in a subprocess waited for by a worker thread, the caller pumping events."""
    import subprocess
    import threading

    from MiniSAMSegmentLib.dependencies import background_pip_installer

    caller, pumped, seen = threading.current_thread(), threading.Event(), {}

    def runner(command, **kwargs):
        seen["command"], seen["thread"] = command, threading.current_thread()
        assert pumped.wait(10), "the calling thread did not pump while pip ran"
        return subprocess.CompletedProcess(command, 0, "Successfully installed scipy\n", "")

    install = background_pip_installer(pumped.set, python="/slicer/PythonSlicer", runner=runner)
    assert _ensure_with(install, {"scipy"}) == [PIP_REQUIREMENTS["scipy"]]
    assert seen["command"] == [
        "/slicer/PythonSlicer", "-m", "pip", "install", PIP_REQUIREMENTS["scipy"],
    ]  # fmt: skip
    assert seen["thread"] is not caller


def test_a_failing_pip_is_one_sentence_with_its_last_line() -> None:
    import subprocess

    from MiniSAMSegmentLib.dependencies import background_pip_installer

    def runner(command, **kwargs):
        return subprocess.CompletedProcess(
            command, 1, "Collecting scipy\n", "ERROR: No matching distribution found for scipy\n"
        )

    install = background_pip_installer(lambda: None, python="py", runner=runner)
    with pytest.raises(InstallError) as error:
        _ensure_with(install, {"scipy"})
    assert "No matching distribution found for scipy" in str(error.value)
    assert "\n" not in str(error.value)


def _ensure_with(install, missing: set[str]) -> list[str]:
    recorder = Recorder()
    return ensure_dependencies(
        recorder.confirm, pip_install=install, install_torch=recorder.install_torch,
        find_spec=_finder(missing),
    )  # fmt: skip
