"""Python packages MiniSAM needs inside Slicer: installed on first use, after one confirmation.

torch comes from the PyTorch extension (PyTorchUtils has light-the-torch pick the CUDA or CPU build for this
computer); the rest comes from pip. In the application both run as ``PythonSlicer -m ...`` subprocesses
waited for off the GUI thread (:func:`background_pip_installer`, :func:`background_torch_installer`).
Nothing is installed unless ``confirm`` returns True, and packages Slicer ships (numpy, SimpleITK) are never
reinstalled. Every function takes its side effects as arguments so it runs, and is tested, without the
application.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from functools import partial

from minisam.errors import MiniSAMError

from .busy import BusyGuard, run_in_background

__all__ = [
    "INSTALLING",
    "PIP_REQUIREMENTS",
    "background_pip_installer",
    "background_torch_installer",
    "TORCH_REQUIREMENT",
    "InstallError",
    "ensure_dependencies",
    "missing_requirements",
    "nvidia_gpu_present",
    "resolve_device",
]

TORCH_REQUIREMENT = ">=2.1"
# what PyTorchUtils._installLightTheTorch installs when light-the-torch is missing
LIGHT_THE_TORCH_REQUIREMENT = "light-the-torch>=0.5"
PIP_REQUIREMENTS: dict[str, str] = {
    # import name -> pip requirement (what the segmentation path of minisam imports besides torch)
    "segment_anything": "segment-anything>=1.0",
    "safetensors": "safetensors>=0.4",
    "scipy": "scipy>=1.10",
    "tqdm": "tqdm>=4.60",
    "peft": "peft>=0.13",  # modality adapters (the effect's Adapter "auto" is the default)
    # the CPU fast path of the image encoder (the effect's Runtime "auto"): torch.onnx.export writes the
    # encoder through onnx, OpenVINO runs it (2-3x torch's speed for the default, docs/bench/upstream.md;
    # without them auto runs torch)
    "onnx": "onnx>=1.14",
    "openvino": "openvino>=2024.0",
}

INSTALLING = BusyGuard()
"""One installation at a time in this process: the effect, the module panel, MiniSAM Train and the batch
script all install through :func:`ensure_dependencies` (or :func:`install_requirement`); pip's output is
logged while Qt processes events, so a second click could otherwise start a second installation."""

Confirm = Callable[[str], bool]
Installer = Callable[[str], object]


class InstallError(MiniSAMError):
    """A required package is missing and was not, or could not be, installed."""


def nvidia_gpu_present() -> bool:
    """True when an NVIDIA driver tool is on PATH (PyTorchUtils then picks a CUDA build of torch)."""
    return shutil.which("nvidia-smi") is not None


def resolve_device(choice: str = "auto") -> str:
    """'auto' -> "cuda" when torch sees a CUDA GPU, else "mps" on Apple silicon, else "cpu"."""
    if choice.strip().lower() != "auto":
        return choice.strip()
    import torch

    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    return "mps" if mps is not None and mps.is_available() else "cpu"


def missing_requirements(
    find_spec: Callable[[str], object] = importlib.util.find_spec,
) -> tuple[bool, list[str]]:
    """(torch missing?, pip requirements of the other missing packages)."""
    torch_missing = find_spec("torch") is None
    missing = [req for name, req in PIP_REQUIREMENTS.items() if find_spec(name) is None]
    return torch_missing, missing


def _pytorch_utils_logic() -> object:
    """The PyTorch extension's ``PyTorchUtilsLogic()``; InstallError when the extension is missing."""
    try:
        import PyTorchUtils
    except ModuleNotFoundError:
        raise InstallError(
            "MiniSAM needs the PyTorch extension: install 'PyTorch' from the Extensions Manager, "
            "restart Slicer and try again"
        ) from None
    return PyTorchUtils.PyTorchUtilsLogic()


def _install_torch_on_this_thread(logic: object) -> object:
    """``logic.installTorch`` (blocks the calling thread until torch is installed); torch or None."""
    # One confirmation covers everything: ours was given already, so PyTorchUtils must not ask again.
    return logic.installTorch(askConfirmation=False, torchVersionRequirement=TORCH_REQUIREMENT)


def _install_torch_with_pytorchutils() -> object:
    """Install torch through the PyTorch extension's logic; return the torch module or None."""
    logic = _pytorch_utils_logic()
    if logic.torchInstalled():
        return logic.torch
    return _install_torch_on_this_thread(logic)


def _pip_install(requirement: str) -> object:
    import slicer

    return slicer.util.pip_install(requirement)


def _run_python_module(
    module: str,
    args: Sequence[str],
    pump: Callable[[], object],
    python: str | None = None,
    runner: Callable[..., subprocess.CompletedProcess] = subprocess.run,
) -> subprocess.CompletedProcess:
    """``python -m MODULE ARGS...`` (``python`` default ``sys.executable``, Slicer's PythonSlicer) in a
    subprocess waited for by a worker thread while the calling thread calls ``pump()``. The output goes to
    the log; a non-zero exit raises RuntimeError with the output's last line."""
    command = [python or sys.executable, "-m", module, *args]

    def work() -> subprocess.CompletedProcess:
        result = runner(command, capture_output=True, text=True, check=False)
        output = f"{result.stdout or ''}{result.stderr or ''}".strip()
        for line in output.splitlines():
            logging.info("%s: %s", module, line)
        if result.returncode != 0:
            last = output.splitlines()[-1] if output else f"exit code {result.returncode}"
            raise RuntimeError(last)
        return result

    return run_in_background(work, pump, name=f"MiniSAM {module}")


def background_pip_installer(
    pump: Callable[[], object],
    python: str | None = None,
    runner: Callable[..., subprocess.CompletedProcess] = subprocess.run,
) -> Installer:
    """An installer for :func:`ensure_dependencies` that keeps pip off the GUI thread: ``python -m pip
    install REQUIREMENT`` (``python`` default ``sys.executable``, Slicer's PythonSlicer) runs in a subprocess
    waited for by a worker thread, while the calling (GUI) thread calls ``pump()`` to keep the progress
    dialog and the application alive. pip's output goes to the log; a failure raises with pip's last line."""

    def install(requirement: str) -> subprocess.CompletedProcess:
        return _run_python_module("pip", ["install", requirement], pump, python, runner)

    return install


def _light_the_torch_arguments(logic: object) -> list[str] | None:
    """The arguments PyTorchUtils' ``installTorch`` gives ``python -m light_the_torch`` (``install torch>=2.1
    torchvision``, ltt choosing the CUDA or CPU build), or None when this PyTorchUtils cannot tell them."""
    build = getattr(logic, "_getPipInstallArguments", None)
    if build is None:
        return None
    try:
        return [str(arg) for arg in build(torchVersionRequirement=TORCH_REQUIREMENT)]
    except TypeError:  # PyTorchUtils before June 2023 took no version requirement
        return None


def _import_torch() -> object:
    try:
        return importlib.import_module("torch")
    except ModuleNotFoundError:
        return None


def background_torch_installer(
    pump: Callable[[], object],
    python: str | None = None,
    runner: Callable[..., subprocess.CompletedProcess] = subprocess.run,
    find_spec: Callable[[str], object] = importlib.util.find_spec,
    import_torch: Callable[[], object] = _import_torch,
) -> Callable[[], object]:
    """An ``install_torch`` for :func:`ensure_dependencies` that keeps torch's download off the GUI thread.

    Runs the command PyTorchUtils' ``installTorch`` would run, ``python -m light_the_torch install ...``
    (light-the-torch picks the CUDA or CPU build; it is pip-installed first when missing, as PyTorchUtils
    does), through the same background subprocess as :func:`background_pip_installer`, then returns
    ``import_torch()`` (the module or None). A PyTorchUtils that does not expose its arguments
    (``_getPipInstallArguments``) installs on the calling thread instead, with a warning in the log.
    """

    def install() -> object:
        logic = _pytorch_utils_logic()
        if logic.torchInstalled():
            return logic.torch
        args = _light_the_torch_arguments(logic)
        if args is None:
            logging.warning(
                "This PyTorch extension does not expose its light-the-torch arguments: installing PyTorch "
                "on the GUI thread, Slicer may not respond until it has finished"
            )
            return _install_torch_on_this_thread(logic)
        run = partial(_run_python_module, pump=pump, python=python, runner=runner)
        if find_spec("light_the_torch") is None:
            run("pip", ["install", LIGHT_THE_TORCH_REQUIREMENT])
        run("light_the_torch", args)
        importlib.invalidate_caches()
        return import_torch()

    return install


def _message(torch_missing: bool, missing: Sequence[str]) -> str:
    parts = list(missing)
    if torch_missing:
        build = "CUDA build, an NVIDIA GPU was found" if nvidia_gpu_present() else "CPU build"
        parts.insert(0, f"PyTorch {TORCH_REQUIREMENT} ({build}, via the PyTorch extension)")
    return (
        f"MiniSAM needs these Python packages, which will be downloaded and installed now "
        f"(this can take several minutes): {', '.join(parts)}. Continue?"
    )


def ensure_dependencies(
    confirm: Confirm,
    pip_install: Installer = _pip_install,
    install_torch: Callable[[], object] = _install_torch_with_pytorchutils,
    find_spec: Callable[[str], object] = importlib.util.find_spec,
) -> list[str]:
    """Install what is missing after one ``confirm(message)``; return what was installed ([] if nothing).

    Arguments:
      confirm: asks the user once (``slicer.util.confirmOkCancelDisplay`` in the application).
      pip_install: installs one requirement string (default ``slicer.util.pip_install``).
      install_torch: installs torch and returns the module or None (default: the PyTorch extension's
        ``installTorch`` on the calling thread; :func:`background_torch_installer` keeps it off).
      find_spec: tells whether an import name is available (default ``importlib.util.find_spec``).

    Raises:
      InstallError: the user declined, or an installation failed (one sentence; details in the log).
      BusyError: another installation is running (its confirmation dialog may be open).
    """
    torch_missing, missing = missing_requirements(find_spec)
    if not torch_missing and not missing:
        return []
    with INSTALLING("installing Python packages"):
        return _install(confirm, pip_install, install_torch, torch_missing, missing)


def _install(confirm, pip_install, install_torch, torch_missing, missing) -> list[str]:
    if not confirm(_message(torch_missing, missing)):
        raise InstallError("MiniSAM cannot run until its Python packages are installed")
    installed: list[str] = []
    if torch_missing:
        try:
            torch = install_torch()
        except InstallError:
            raise
        except Exception as exc:
            logging.exception("PyTorch installation failed")
            raise InstallError(
                f"installing PyTorch failed ({_first_line(exc)}); see the Python console for details"
            ) from exc
        if torch is None:
            raise InstallError("PyTorch was not installed, so MiniSAM cannot run")
        installed.append(f"torch{TORCH_REQUIREMENT}")
    for requirement in missing:
        install_requirement(requirement, pip_install)
        installed.append(requirement)
    importlib.invalidate_caches()
    return installed


def install_requirement(requirement: str, pip_install: Installer = _pip_install) -> None:
    """``pip_install(requirement)``; a failure becomes one InstallError sentence (details in the log)."""
    try:
        pip_install(requirement)
    except Exception as exc:
        logging.exception("pip install %s failed", requirement)
        raise InstallError(
            f"installing {requirement} failed ({_first_line(exc)}); see the Python console for details"
        ) from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
