"""The effect's prompt memory: clicks accumulate per slice, a box replaces the box; each volume, segment and
axis has its own prompts; undone edits take their prompts back."""

from __future__ import annotations

from MiniSAMSegmentLib.prompt_book import Owner, PromptBook

from minisam.prompts import Prompt

LIVER = Owner("vol1", "seg1", "liver")
SPLEEN = Owner("vol1", "seg1", "spleen")


def test_clicks_accumulate_and_box_replaces() -> None:
    book = PromptBook()
    book.add(LIVER, 0, 24, Prompt.create(box=[1, 2, 30, 40]))
    book.add(LIVER, 0, 24, Prompt.create(positive=[[10, 12]]))
    combined = book.add(LIVER, 0, 24, Prompt.create(negative=[[5, 6]]))
    assert combined.box.tolist() == [1, 2, 30, 40]
    assert combined.points.tolist() == [[10, 12], [5, 6]] and combined.labels.tolist() == [1, 0]
    replaced = book.add(LIVER, 0, 24, Prompt.create(box=[3, 3, 9, 9]))
    assert replaced.box.tolist() == [3, 3, 9, 9] and len(replaced.points) == 2
    book.add(LIVER, 0, 10, Prompt.create(positive=[[1, 1]]))
    assert sorted(book.prompts(LIVER, 0)) == [10, 24]
    assert book.prompts(LIVER, 1) == {} and book.prompts(LIVER._replace(volume_id="vol2"), 0) == {}


def test_each_segment_has_its_own_prompts() -> None:
    book = PromptBook()
    book.add(LIVER, 0, 24, Prompt.create(box=[1, 2, 30, 40]))
    first = book.add(SPLEEN, 0, 24, Prompt.create(positive=[[3, 4]]))
    assert first.box is None and first.points.tolist() == [[3, 4]]  # another segment starts clean
    book.add(LIVER, 1, 50, Prompt.create(positive=[[3, 4]]))
    assert book.latest_axis(LIVER) == 1 and book.latest_axis(SPLEEN) == 0
    assert book.prompts(LIVER, 0)[24].box.tolist() == [1, 2, 30, 40]  # coming back resumes
    book.drop(segmentation_id="seg1", segment_id="liver")
    assert book.latest_axis(LIVER) is None and list(book.prompts(SPLEEN, 0)) == [24]
    book.drop(volume_id="vol1")
    assert book.pages == {}


def test_sync_takes_back_prompts_whose_edits_were_undone() -> None:
    book = PromptBook()
    content = {"slice 24": "empty"}
    book.add(LIVER, 0, 24, Prompt.create(box=[1, 2, 30, 40]))
    book.mark("slice 24", "empty", "box mask")
    book.add(LIVER, 0, 24, Prompt.create(positive=[[10, 12]]))
    book.mark("slice 24", "box mask", "refined mask")
    book.add(LIVER, 0, 30, Prompt.create(positive=[[5, 5]]))
    book.mark(
        "slice 30", "nothing", "nothing"
    )  # an edit that changed nothing cannot be told undone
    content.update({"slice 24": "refined mask", "slice 30": "nothing"})
    assert book.sync(LIVER, content.get) == 0

    book.take_back_last()  # e.g. the slice-30 edit failed
    content["slice 24"] = "box mask"  # one Undo
    assert book.sync(LIVER, content.get) == 1
    assert book.prompts(LIVER, 0)[24].points is None  # the click is gone, the box stays
    assert book.sync(LIVER, content.get) == 0
    content["slice 24"] = "painted over"  # another effect: prompts stay
    assert book.sync(LIVER, content.get) == 0 and list(book.prompts(LIVER, 0)) == [24]
    content["slice 24"] = "empty"  # undone down to before the box
    assert book.sync(LIVER, content.get) == 1 and book.prompts(LIVER, 0) == {}
    assert book.latest_axis(LIVER) is None
