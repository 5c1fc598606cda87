"""The effect's prompt memory: clicks accumulate per slice, a box replaces the box, volume/axis resets."""

from __future__ import annotations

from MiniSAMSegmentLib.prompt_book import PromptBook

from minisam.prompts import Prompt


def test_clicks_accumulate_and_box_replaces() -> None:
    book = PromptBook()
    book.add("vol1", 0, 24, Prompt.create(box=[1, 2, 30, 40]))
    book.add("vol1", 0, 24, Prompt.create(positive=[[10, 12]]))
    combined = book.add("vol1", 0, 24, Prompt.create(negative=[[5, 6]]))
    assert combined.box.tolist() == [1, 2, 30, 40]
    assert combined.points.tolist() == [[10, 12], [5, 6]] and combined.labels.tolist() == [1, 0]
    replaced = book.add("vol1", 0, 24, Prompt.create(box=[3, 3, 9, 9]))
    assert replaced.box.tolist() == [3, 3, 9, 9] and len(replaced.points) == 2
    book.add("vol1", 0, 10, Prompt.create(positive=[[1, 1]]))
    assert sorted(book.prompts("vol1", 0)) == [10, 24]
    assert book.prompts("vol1", 1) == {} and book.prompts("vol2", 0) == {}


def test_other_volume_or_axis_starts_a_new_book() -> None:
    book = PromptBook()
    book.add("vol1", 0, 24, Prompt.create(positive=[[10, 12]]))
    book.add("vol1", 1, 50, Prompt.create(positive=[[3, 4]]))
    assert list(book.prompts("vol1", 1)) == [50] and book.prompts("vol1", 0) == {}
    book.add("vol2", 1, 50, Prompt.create(positive=[[3, 4]]))
    assert book.volume_id == "vol2" and book.prompts("vol1", 1) == {}
    book.clear()
    assert book.prompts("vol2", 1) == {} and book.axis is None
