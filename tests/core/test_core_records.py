"""The LLaVA conversation record: validation and conversion to chat messages and back."""

from __future__ import annotations

import pytest

from medvl.records import RecordError, from_messages, make_record, record_images, record_problems, to_messages


def _record(**extra):
    base = {"id": "r1", "image": ["a.png"], "conversations": [
        {"from": "human", "value": "<image>\nWhat is shown?"}, {"from": "gpt", "value": "A chest X-ray."}]}
    return {**base, **extra}


def test_to_messages_and_back():
    messages = to_messages(_record())
    assert messages == [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is shown?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A chest X-ray."}]},
    ]
    assert from_messages(messages) == _record()["conversations"]


def test_untagged_record_gets_one_tag_per_image_in_first_turn():
    record = _record(image=["a.png", "b.png"], conversations=[
        {"from": "human", "value": "Compare."}, {"from": "gpt", "value": "Same."},
        {"from": "human", "value": "Sure?"}, {"from": "gpt", "value": "Yes."}])
    messages = to_messages(record)
    assert [p["type"] for p in messages[0]["content"]] == ["image", "image", "text"]
    assert messages[2]["content"] == [{"type": "text", "text": "Sure?"}]


def test_interleaved_images_keep_their_place():
    record = _record(image=["a", "b"], conversations=[
        {"from": "human", "value": "First <image>\nthen <image>\nwhich?"}, {"from": "gpt", "value": "b"}])
    parts = to_messages(record)[0]["content"]
    assert [p["type"] for p in parts] == ["text", "image", "text", "image", "text"]


@pytest.mark.parametrize("record,problem", [
    ({"image": "a", "conversations": []}, "missing 'id'"),
    (_record(conversations=[{"from": "gpt", "value": "hi"}, {"from": "human", "value": "x"}]), "first turn"),
    (_record(conversations=[{"from": "human", "value": "<image>\na"}, {"from": "human", "value": "b"}]), "alternate"),
    (_record(conversations=[{"from": "human", "value": "<image>\nx"}]), "no gpt turn"),
    (_record(image=["a", "b"]), "1 <image> tags but 2 images"),
    (_record(conversations=[{"from": "bot", "value": "x"}]), "unknown speaker"),
    (_record(image=3), "'image' must be"),
    ("not a dict", "not an object"),
])
def test_problems_are_named(record, problem):
    assert any(problem in p for p in record_problems(record))


def test_to_messages_raises_with_the_id():
    with pytest.raises(RecordError, match="'r1'.*no gpt turn"):
        to_messages(_record(conversations=[{"from": "human", "value": "<image>\nx"}]))


def test_record_images_forms():
    assert record_images({"image": "x.png"}) == ["x.png"]
    assert record_images({}) == [] and record_images({"image": ""}) == []


def test_embedded_images_are_read_only_when_asked_for(rgb_image):
    row = {"id": "r", "images": [{"bytes": b"\x89PNG", "path": "a.png"}, rgb_image, "b.png"],
           "conversations": [{"from": "human", "value": "Compare."}, {"from": "gpt", "value": "Same."}]}
    assert record_images(row, embedded=True) == row["images"]
    assert record_problems(row, embedded=True) == []
    assert [p["type"] for p in to_messages(row, embedded=True)[0]["content"]] == ["image", "image", "image", "text"]
    assert record_images(row) == [] and "'image' must be" in record_problems({**row, "image": row["images"]})[0]
    with pytest.raises(RecordError, match="neither a path"):
        record_images({"image": [{"bytes": b"", "path": ""}]}, embedded=True)


def test_make_record_tags_the_first_question_once_per_image():
    record = make_record("q1", ["a.png", "b.png"], [("Compare.", "Same."), ("Sure?", "Yes.")], benchmark="toy")
    assert record == {"id": "q1", "image": ["a.png", "b.png"], "benchmark": "toy", "conversations": [
        {"from": "human", "value": "<image>\n<image>\nCompare."}, {"from": "gpt", "value": "Same."},
        {"from": "human", "value": "Sure?"}, {"from": "gpt", "value": "Yes."}]}
    assert list(record)[:3] == ["id", "image", "conversations"] and record_problems(record) == []
    assert make_record("t", [], [("Hi?", "Hello.")])["conversations"][0]["value"] == "Hi?"
    after = make_record("q2", ["a.png", "b.png"], [("Compare.", "Same.")], images_after=True)
    assert after["conversations"][0]["value"] == "Compare.\n<image>\n<image>" and record_problems(after) == []
