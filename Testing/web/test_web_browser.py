"""End to end: ``minisam web`` on a free 127.0.0.1 port, driven by Playwright in headless Debian chromium.

Upload the shared CT through the page, click in the liver, box the left kidney in a second segment,
propagate, undo, save, compare the saved files with what the server reports, open the saved ``.seg.nrrd``
again through the page and compare the labelmap, then delete a segment and close the volume from a second
tab (one shared session). The test waits by polling the server-reported state (the page's hidden JSON
report), never for a fixed time, and aims at voxels through the slice view's display-to-RAS matrix that the
server publishes; assertions are on the server-reported RAS/IJK.

``MINISAM_WEB_SCREENSHOT=PATH`` keeps a screenshot of the page with both masks; ``MINISAM_WEB_MODEL=default``
serves that model with ``minisam web``'s default adapter and runtime instead of the small test model (the
docs/web screenshot).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from model_files import SMALL_MODEL
from web_cases import KIDNEY_LEFT, LIVER, REPO, label_box, label_center, ras_to_xy

CHROMIUM = (
    "/usr/bin/chromium"  # Debian's package (.ci/run installs it); Playwright downloads nothing
)
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1200, "height": 760}
MODEL = os.environ.get("MINISAM_WEB_MODEL", "")  # "": the small test model, torch, no adapter
TIMEOUT = (
    300.0 if MODEL else 60.0
)  # seconds any one awaited state may take on the 2-core CI machine


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(what: str, check: Callable[[], object], timeout: float = TIMEOUT) -> object:
    """Poll ``check()`` until it returns something true; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[tuple[str, Path]]:
    """``minisam web`` with the small test model; (URL, its --output-dir)."""
    output = tmp_path_factory.mktemp("web-output")
    port = free_port()
    log = output / "server.log"
    choice = (
        ["--model", MODEL]
        if MODEL
        else ["--model", SMALL_MODEL, "--adapter", "none", "--runtime", "torch"]
    )
    command = [
        sys.executable, "-m", "minisam.cli.main", "web", *choice,
        "--port", str(port), "--output-dir", str(output),
    ]  # fmt: skip
    with open(log, "wb") as sink:
        process = subprocess.Popen(command, cwd=REPO, stdout=sink, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"

    def answers() -> bool:
        if process.poll() is not None:
            pytest.fail(f"minisam web exited with {process.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    try:
        wait_for("the server to answer", answers)
        yield url, output
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture(scope="module")
def page(server):
    from playwright.sync_api import sync_playwright

    url, _ = server
    if not Path(CHROMIUM).is_file():
        pytest.fail(
            f"{CHROMIUM} is missing: apt-get install -y chromium (.ci/run does)", pytrace=False
        )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield open_page(browser, url)
        browser.close()


def open_page(browser, url: str):
    """A new tab on the app, once the page shows the server's report."""
    page = browser.new_page(viewport=VIEWPORT, device_scale_factor=1)
    page.goto(url)
    page.wait_for_selector("#minisam-report", state="attached", timeout=TIMEOUT * 1000)
    return page


def report(page) -> dict:
    return json.loads(page.eval_on_selector("#minisam-report", "e => e.textContent"))


def views(page) -> dict:
    return json.loads(page.eval_on_selector("#minisam-views", "e => e.textContent") or "{}")


def after_action(page, act: Callable[[], None], what: str) -> dict:
    """Do ``act`` and wait until the server has finished one more action; returns its report."""
    count = report(page)["actions"]
    act()
    return wait_for(what, lambda: (r := report(page))["actions"] > count and not r["busy"] and r)


class AxialView:
    """The axial slice view in the page: where a voxel of its current slice is on the screen."""

    def __init__(self, page) -> None:
        self.page = page
        boxes = page.eval_on_selector_all(
            "img.image-display-area",
            "els => els.map(e => { const r = e.getBoundingClientRect(); "
            "return [r.x, r.y, r.width, r.height]; })",
        )
        # the layout shows the axial view largest; the server's slice node has the element's size
        self.x, self.y, self.width, self.height = max(boxes, key=lambda b: b[2] * b[3])
        size = [round(self.width), round(self.height)]
        geometry = wait_for(
            "the axial view to take the page's size",
            lambda: (v := views(page).get("Red")) and v["size"] == size and v,
        )
        self.xy_to_ras = np.array(geometry["xy_to_ras"])
        self.ijk_to_ras = np.array(report(page)["ijk_to_ras"])

    @property
    def slice(self) -> int:
        """The axial slice k the view shows."""
        centre = np.linalg.inv(self.ijk_to_ras) @ self.xy_to_ras @ [0.0, 0.0, 0.0, 1.0]
        return round(centre[2])

    def screen(self, ijk) -> tuple[float, float]:
        """Page position of a voxel centre (VTK's display y grows upwards, the page's downwards)."""
        x, y = ras_to_xy(self.xy_to_ras, (self.ijk_to_ras @ np.r_[ijk, 1.0])[:3])
        return self.x + x + 0.5, self.y + self.height - y - 0.5


def test_upload_click_box_propagate_undo_save_in_chromium(
    page, server, ct_path, reference_labels
) -> None:
    _, output = server
    upload = after_action(
        page,
        lambda: page.locator("#minisam-upload").set_input_files(str(ct_path)),
        "the uploaded CT to load",
    )
    assert upload["volume"] == "example_ct_sm" and upload["error"] == ""
    axial = AxialView(page)
    k = axial.slice

    # a click in the liver: the server saw it on the aimed voxel of the shown slice
    liver = label_center(reference_labels, LIVER, k)
    started = time.monotonic()
    clicked = after_action(page, lambda: page.mouse.click(*axial.screen(liver)), "the liver click")
    click_seconds = time.monotonic() - started
    assert clicked["error"] == "", clicked["error"]
    prompt = clicked["prompt"]
    assert prompt["kind"] == "positive" and prompt["axis"] == 0 and prompt["slice"] == k
    assert np.allclose(prompt["ijk"][0], liver, atol=0.7), (prompt["ijk"], liver)
    assert clicked["segment_voxels"] == prompt["voxels"] > 0
    liver_segment = clicked["segment_id"]

    # a second segment, and a box dragged around the left kidney
    added = after_action(page, lambda: page.click("#minisam-add-segment"), "a new segment")
    assert len(added["segments"]) == 2 and added["segment_id"] != liver_segment
    i0, j0, i1, j1 = label_box(reference_labels, KIDNEY_LEFT, k)

    def drag() -> None:
        page.mouse.move(*axial.screen((i0, j0, k)))
        page.mouse.down()
        page.mouse.move(*axial.screen(((i0 + i1) / 2, (j0 + j1) / 2, k)), steps=4)
        page.mouse.move(*axial.screen((i1, j1, k)), steps=4)
        page.mouse.up()

    boxed = after_action(page, drag, "the kidney box")
    assert boxed["error"] == "", boxed["error"]
    corners = np.array(boxed["prompt"]["ijk"])
    assert boxed["prompt"]["kind"] == "box" and boxed["prompt"]["slice"] == k
    assert np.allclose(corners[:, :2].min(axis=0), [i0, j0], atol=0.7)
    assert np.allclose(corners[:, :2].max(axis=0), [i1, j1], atol=0.7)
    kidney_voxels = boxed["segment_voxels"]
    assert kidney_voxels > 0

    # propagate the kidney, then undo the propagation in one step
    propagated = after_action(page, lambda: page.click("#minisam-propagate"), "the propagation")
    assert "Propagation filled" in propagated["status"], propagated["status"]
    assert propagated["segment_voxels"] > kidney_voxels and propagated["progress"][1] > 0
    if path := os.environ.get("MINISAM_WEB_SCREENSHOT"):
        page.screenshot(path=path)
    undone = after_action(page, lambda: page.click("#minisam-undo"), "undo")
    assert undone["segment_voxels"] == kidney_voxels

    # save both segments; the files hold what the server reported
    page.fill("#minisam-save-name", "e2e.nii.gz")
    saved = after_action(page, lambda: page.click("#minisam-save"), "saving the label map")
    assert saved["saved"] == str(output / "e2e.nii.gz"), saved["error"]
    page.fill("#minisam-save-name", "e2e.seg.nrrd")
    saved = after_action(page, lambda: page.click("#minisam-save"), "saving the segmentation")
    assert saved["saved"] == str(output / "e2e.seg.nrrd"), saved["error"]
    compare_saved(output, saved)
    with page.expect_download(timeout=TIMEOUT * 1000) as download:
        page.click("#minisam-download")
    sent = download.value.path()
    assert Path(sent).read_bytes() == (output / "e2e.seg.nrrd").read_bytes()  # the same file
    assert download.value.suggested_filename == "e2e.seg.nrrd"

    # open the saved .seg.nrrd again through the page: the same segments, the same labelmap
    reloaded = after_action(
        page,
        lambda: page.locator("#minisam-upload-segmentation").set_input_files(
            str(output / "e2e.seg.nrrd")
        ),
        "the saved segmentation to open",
    )
    assert reloaded["status"] == "Opened e2e.seg.nrrd: 2 segments.", reloaded["status"]
    voxels = {s["name"]: s["voxels"] for s in saved["segments"]}
    assert {s["name"]: s["voxels"] for s in reloaded["segments"]} == voxels
    page.fill("#minisam-save-name", "e2e-reloaded.nii.gz")
    after_action(page, lambda: page.click("#minisam-save"), "saving the reopened segmentation")
    assert np.array_equal(
        read_labels(output / "e2e-reloaded.nii.gz"), read_labels(output / "e2e.nii.gz")
    )

    # a choice in the page's menus reaches the logic (here the intensity preset)
    def choose_preset() -> None:
        page.locator(".v-field", has=page.locator("#minisam-chosen-modality")).click()
        page.get_by_role("option", name="ct-abdomen", exact=True).click()

    chosen = after_action(page, choose_preset, "the intensity preset to apply")
    assert chosen["error"] == "" and chosen["modality"] == "ct-abdomen", chosen["status"]

    # a second tab shows the same session (one scene per server); what it does, the first one sees
    second = open_page(page.context.browser, page.url)
    wait_for("the second tab's report", lambda: (r := report(second))["volume_id"] and r)
    assert report(second)["segments"] == report(page)["segments"]
    deleted = after_action(page, lambda: second.click("#minisam-delete-segment"), "the deletion")
    assert deleted["error"] == "" and len(deleted["segments"]) == 1, deleted["status"]
    closed = after_action(page, lambda: second.click("#minisam-close-volume"), "closing the volume")
    assert closed["error"] == "" and closed["volumes"] == [] and closed["volume"] == ""
    second.close()
    print(f"click to server-reported mask: {click_seconds:.2f} s")


def read_labels(path: Path) -> np.ndarray:
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def compare_saved(output: Path, state: dict) -> None:
    """The label map and the .seg.nrrd, read back, agree with each other and with the reported counts."""
    import slicer
    from MiniSAMSegmentLib.mrml_context import mrml_context
    from MiniSAMSegmentLib.segment_io import segment_array

    labels = read_labels(output / "e2e.nii.gz")
    counts = sorted(int((labels == value).sum()) for value in np.unique(labels) if value)
    assert counts == sorted(s["voxels"] for s in state["segments"])
    context = mrml_context()
    reader = slicer.vtkSlicerSegmentationsModuleLogic()
    reader.SetMRMLScene(context.scene)
    node = reader.LoadSegmentationFromFile(str(output / "e2e.seg.nrrd"), False)
    assert node is not None
    volume = context.load_volume(output / "e2e.nii.gz")  # the label map's grid is the CT's grid
    segmentation = node.GetSegmentation()
    for n in range(segmentation.GetNumberOfSegments()):
        mask = segment_array(node, segmentation.GetNthSegmentID(n), volume)
        assert any(
            np.array_equal(mask != 0, labels == value) for value in np.unique(labels) if value
        )
