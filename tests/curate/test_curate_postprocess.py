"""Post-processing: JSON schema, refusals, context leaks, LLaVA-Med-style turn cleaning."""

from __future__ import annotations

import json

import pytest

from medvl.curate.config import ReformatConfig, SelfInstructConfig
from medvl.curate.generate import FigureInput, reformat_records, self_instruct_record
from medvl.curate.postprocess import Rejected, clean_answer, parse_conversation, parse_reformat
from medvl.records import record_problems

GOOD = {
    "modality": "CT",
    "body_part": "liver",
    "description": "An axial CT slice of the upper abdomen shows a "
    "rounded hypodense lesion with an enhancing rim.",
    "question": "Is this lesion dangerous?",
    "answer": "It may be an abscess or a tumour; a doctor should review it.",
}
FIGURE = FigureInput(
    id="r1",
    images=["/x/a.png"],
    image_refs=["s/r1.png"],
    caption="CT of the liver.",
    meta={"source": "s", "licence": "cc-by", "modality": "ct", "domain": "ct_scan"},
)
LLM = {"model": "m", "base_url": "http://127.0.0.1:1/v1"}


def reason(text: str) -> str:
    with pytest.raises(Rejected) as caught:
        parse_reformat(text)
    return caught.value.reason


def test_valid_reply_gives_alignment_and_instruction_records():
    for text in (json.dumps(GOOD), "```json\n" + json.dumps(GOOD) + "\n```"):
        alignment, instruction = reformat_records(FIGURE, text, ReformatConfig(enabled=True, llm=LLM))
        assert record_problems(alignment) == [] and record_problems(instruction) == []
        assert alignment["conversations"][1]["value"] == GOOD["description"]
        assert alignment["conversations"][0]["value"].startswith("<image>\n")
        assert instruction["conversations"][0]["value"] == "<image>\n" + GOOD["question"]
        assert (instruction["modality"], instruction["body_part"]) == ("CT", "liver") and instruction["role"]


def test_reformat_rejection_reasons():
    assert reason("Here is the description: the image shows a lesion") == "invalid_json"
    assert reason("[1, 2]") == "invalid_json"
    assert reason(json.dumps({**GOOD, "answer": 3})) == "schema"
    assert reason(json.dumps({k: v for k, v in GOOD.items() if k != "question"})) == "schema"
    assert reason(json.dumps({**GOOD, "description": "Short."})) == "schema"
    assert reason("I'm sorry, but I can't help with identifying this image.") == "refusal"
    assert reason(json.dumps({**GOOD, "answer": "As an AI, I cannot give a diagnosis."})) == "refusal"
    assert reason(
        json.dumps({**GOOD, "description": GOOD["description"] + " Based on the caption, it is CT."})
    ) == ("context_leak")
    assert reason(json.dumps({**GOOD, "answer": "The text mentions an abscess."})) == "context_leak"


def test_parse_conversation_pairs_user_and_assistant_turns():
    text = "Intro line\nUser: What is shown?\nAssistant: A CT.\n\nuser: Where?\n\nAssistant: Liver.\n\nUser: tail"
    assert parse_conversation(text) == [("What is shown?", "A CT."), ("Where?", "Liver.")]


@pytest.mark.parametrize(
    "answer, cleaned",
    [
        ("Based on the figure caption, the lesion is in the liver.", "The lesion is in the liver."),
        ("Yes, according to the context provided, there is an effusion.", "There is an effusion."),
        ("The context provided suggests that the mass is benign.", "The mass is benign."),
        ("There is an effusion, as mentioned in the context.", "There is an effusion."),
        ("In the context of the CT scan provided, the mass is large.", "The mass is large."),
        ("The image shows a mass.", "The image shows a mass."),
        ("I'm sorry, I cannot see the image.", None),
        ("The description says it is a CT.", None),
        ("The caption is unclear.", None),
    ],
)
def test_llava_med_answer_cleaning(answer: str, cleaned: str | None):
    assert clean_answer(answer) == cleaned


def test_self_instruct_record_cleans_turns_and_places_the_image():
    reply = (
        "User: What modality is this?\n\nAssistant: Based on the caption, it is a CT scan.\n\n"
        "User: Can you see the liver?\n\nAssistant: Sorry, I cannot see the image.\n\n"
        "User: Is there a lesion?\n\nAssistant: Yes, there is a hypodense lesion."
    )
    record, dropped = self_instruct_record(FIGURE, reply, SelfInstructConfig(enabled=True, llm=LLM))
    assert record_problems(record) == []
    values = [t["value"] for t in record["conversations"]]
    assert values[1:] == ["It is a CT scan.", "Is there a lesion?", "Yes, there is a hypodense lesion."]
    assert values[0].replace("<image>", "").strip() == "What modality is this?" and "<image>" in values[0]
    assert len(dropped) == 1 and record["domain"] == "ct_scan"
    positions = {
        self_instruct_record(
            FigureInput(**{**FIGURE.__dict__, "id": f"r{i}"}),
            reply,
            SelfInstructConfig(enabled=True, llm=LLM),
        )[0]["conversations"][0]["value"].startswith("<image>")
        for i in range(20)
    }
    assert positions == {True, False}  # the coin flip goes both ways across records


def test_self_instruct_rejections():
    config = SelfInstructConfig(enabled=True, llm=LLM)
    with pytest.raises(Rejected, match="refusal"):
        self_instruct_record(FIGURE, "I'm sorry, but I cannot help with that.", config)
    with pytest.raises(Rejected, match="no_turns"):
        self_instruct_record(FIGURE, "Here is a conversation about the image.", config)
    with pytest.raises(Rejected, match="no_turns"):
        self_instruct_record(FIGURE, "User: What is it?\n\nAssistant: The caption says CT.", config)
