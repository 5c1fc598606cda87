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


class FakePyTorchUtilsLogic:
    """PyTorchUtils' logic as SlicerPyTorch has it: the light-the-torch arguments, installTorch."""

    installed = False
    torch = TORCH
    calls: list = []

    @staticmethod
    def torchInstalled() -> bool:
        return FakePyTorchUtilsLogic.installed

    @staticmethod
    def _getPipInstallArguments(
        forceComputationBackend=None, torchVersionRequirement=None
    ) -> list[str]:
        args = ["install", f"torch{torchVersionRequirement or ''}", "torchvision"]
        if forceComputationBackend is not None:
            args.append(f"--pytorch-computation-backend={forceComputationBackend}")
        return args

    def installTorch(self, askConfirmation=False, **requirements):
        FakePyTorchUtilsLogic.calls.append((askConfirmation, requirements))
        return TORCH


class OldPyTorchUtilsLogic(FakePyTorchUtilsLogic):
    """A PyTorchUtils that does not expose its light-the-torch arguments."""

    _getPipInstallArguments = None


@pytest.fixture
def pytorch_utils(monkeypatch):
    """A fake PyTorchUtils module in sys.modules; returns it (swap ``PyTorchUtilsLogic`` to vary it)."""
    import sys
    import types

    module = types.ModuleType("PyTorchUtils")
    module.PyTorchUtilsLogic = FakePyTorchUtilsLogic
    monkeypatch.setitem(sys.modules, "PyTorchUtils", module)
    monkeypatch.setattr(FakePyTorchUtilsLogic, "calls", [])
    return module


def _ensure_torch(install_torch) -> list[str]:
    recorder = Recorder()
    return ensure_dependencies(
        recorder.confirm, recorder.pip_install, install_torch, _finder({"torch"})
    )


def test_torch_installs_off_the_calling_thread_with_pytorchutils_command(pytorch_utils) -> None:
    """light-the-torch, as PyTorchUtils would run it, in a subprocess waited for by a worker thread."""
    import subprocess
    import threading

    from MiniSAMSegmentLib.dependencies import TORCH_REQUIREMENT, background_torch_installer

    caller, pumped = threading.current_thread(), threading.Event()
    commands, threads, order = [], [], []

    def runner(command, **kwargs):
        commands.append(command)
        threads.append(threading.current_thread())
        assert pumped.wait(10), "the calling thread did not pump while light-the-torch ran"
        return subprocess.CompletedProcess(command, 0, "Successfully installed torch-2.5.1\n", "")

    def import_torch():
        order.append(len(commands))
        return TORCH

    install = background_torch_installer(
        pumped.set, python="/slicer/PythonSlicer", runner=runner,
        find_spec=_finder({"light_the_torch"}), import_torch=import_torch,
    )  # fmt: skip
    assert _ensure_torch(install) == [f"torch{TORCH_REQUIREMENT}"]
    assert commands == [
        ["/slicer/PythonSlicer", "-m", "pip", "install", "light-the-torch>=0.5"],
        ["/slicer/PythonSlicer", "-m", "light_the_torch", "install", "torch>=2.1", "torchvision"],
    ]
    assert all(thread is not caller for thread in threads) and order == [2]
    assert FakePyTorchUtilsLogic.calls == []  # installTorch (on the GUI thread) was not called

    commands.clear()  # light-the-torch already there: only its install command runs
    install = background_torch_installer(
        pumped.set, python="py", runner=runner, find_spec=_finder(set()), import_torch=import_torch
    )
    assert install() is TORCH
    assert commands == [["py", "-m", "light_the_torch", "install", "torch>=2.1", "torchvision"]]


def test_a_failing_torch_install_is_one_sentence_with_its_last_line(pytorch_utils) -> None:
    import subprocess

    from MiniSAMSegmentLib.dependencies import background_torch_installer

    def runner(command, **kwargs):
        return subprocess.CompletedProcess(
            command, 1, "Collecting torch>=2.1\n",
            "ERROR: No matching distribution found for torch>=2.1\n",
        )  # fmt: skip

    install = background_torch_installer(lambda: None, "py", runner, find_spec=_finder(set()))
    with pytest.raises(InstallError) as error:
        _ensure_torch(install)
    assert "No matching distribution found for torch>=2.1" in str(error.value)
    assert "installing PyTorch failed" in str(error.value) and "\n" not in str(error.value)


def test_old_pytorchutils_installs_torch_on_the_gui_thread(pytorch_utils, caplog) -> None:
    from MiniSAMSegmentLib.dependencies import TORCH_REQUIREMENT, background_torch_installer

    def runner(command, **kwargs):
        raise AssertionError(f"no subprocess expected: {command}")

    pytorch_utils.PyTorchUtilsLogic = OldPyTorchUtilsLogic
    install = background_torch_installer(lambda: None, python="py", runner=runner)
    with caplog.at_level("WARNING"):
        assert _ensure_torch(install) == [f"torch{TORCH_REQUIREMENT}"]
    assert FakePyTorchUtilsLogic.calls == [(False, {"torchVersionRequirement": TORCH_REQUIREMENT})]
    assert "may not respond" in caplog.text


def test_torch_installer_without_the_pytorch_extension_says_so(monkeypatch) -> None:
    import sys

    from MiniSAMSegmentLib.dependencies import background_torch_installer

    monkeypatch.setitem(sys.modules, "PyTorchUtils", None)  # importing it: ModuleNotFoundError
    install = background_torch_installer(lambda: None, python="py", runner=None)
    with pytest.raises(InstallError, match="needs the PyTorch extension"):
        _ensure_torch(install)
