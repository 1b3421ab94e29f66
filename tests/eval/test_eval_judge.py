"""LLM judges against the real mock OpenAI server: both answer orders, relative scores, malformed replies."""

from __future__ import annotations

import pytest

from medvl.eval.judge import JudgeConfig, judge_chat, judge_open, parse_pair_scores, parse_verdict
from medvl.llm.mock_server import MockServer


def judge_config(server: MockServer, **extra) -> JudgeConfig:
    llm = {"base_url": server.base_url, "model": "judge", "api_key_env": "MEDVL_NO_KEY", "max_retries": 0}
    return JudgeConfig.model_validate({"llm": llm, **extra})


def chat_responder(body):
    user = body["messages"][1]["content"]
    if "cannot-judge" in user:
        return "I am unable to rate these answers."
    # a position-biased judge: whoever comes first gets one point more
    return "9 4\nThe first is better." if "[Assistant 1]\nREFERENCE" in user else "5 8\nThe second is better."


QUESTIONS = [
    {"question_id": 1, "text": "What is shown?", "gpt4_answer": "REFERENCE one", "fig_caption": "CT of the chest",
     "fig_label": "Figure 1", "in_text_mention": "as shown in Fig. 1", "type": "conversation",
     "domain": {"chest_xray": False, "mri": False, "histology": False, "gross": False, "ct_scan": True}},
    {"question_id": 2, "text": "Describe it.", "gpt4_answer": "REFERENCE two", "fig_caption": "H&E stain",
     "fig_label": "Figure 2", "in_text_mention": "", "type": "detailed_description", "domain": "histology"},
    {"question_id": 3, "text": "cannot-judge", "gpt4_answer": "REFERENCE three", "type": "conversation",
     "domain": "histology"},
]


def test_chat_judge_both_orders_and_relative_scores():
    answers = {"1": "model one", "2": "model two", "3": "model three"}
    with MockServer(responder=chat_responder) as server:
        rows, summary = judge_chat(QUESTIONS, answers, judge_config(server))
        bodies = server.requests
    assert len(bodies) == 6  # 3 questions × 2 orders
    first = next(b["messages"] for b in bodies if "[Assistant 1]\nREFERENCE one" in b["messages"][1]["content"])
    assert first[0]["content"].startswith("'You are a helpful and precise assistant")
    assert "Figure Caption:\nFigure 1: CT of the chest" in first[1]["content"]
    assert first[1]["content"].index("REFERENCE one") < first[1]["content"].index("[Assistant 2]\nmodel one")
    assert any("[Assistant 1]\nmodel one" in b["messages"][1]["content"] for b in bodies)  # the swapped order
    assert rows[0]["reference_first"]["reference_score"] == 9 and rows[0]["model_first"]["reference_score"] == 8
    overall = summary["overall"]
    assert overall["reference_first"]["relative_score"] == pytest.approx(100 * 4 / 9)
    assert overall["model_first"]["relative_score"] == pytest.approx(100 * 5 / 8)
    assert overall["relative_score_average"] == pytest.approx((100 * 4 / 9 + 100 * 5 / 8) / 2)
    assert overall["reference_first"]["malformed"] == 1 and overall["reference_first"]["scored"] == 2
    assert rows[2]["reference_first"]["raw"].startswith("I am unable")  # the malformed reply is kept
    assert set(summary) == {"conversation", "detailed_description", "ct_scan", "histology", "overall", "unanswered"}
    assert summary["unanswered"] == {"n": 0, "question_ids": []}
    assert summary["ct_scan"]["n"] == 1


def test_chat_judge_reference_order_only_and_server_errors():
    with MockServer(responder=chat_responder, script=[{"status": 400}, "ok", "ok"]) as server:
        rows, summary = judge_chat(QUESTIONS, {"1": "a", "2": "b", "3": "c"}, judge_config(server, both_orders=False))
    assert "model_first" not in summary["overall"]
    assert summary["overall"]["reference_first"]["failed"] == 1
    assert sum(bool(r["reference_first"]["error"]) for r in rows) == 1  # recorded on its row, run goes on


def test_open_judge_verdicts():
    records = [
        {"id": "a", "answer_type": "open", "question": "Where?", "answer": "left lung", "output": "the left lung"},
        {"id": "b", "answer_type": "open", "question": "Where?", "answer": "liver", "output": "spleen"},
        {"id": "c", "answer_type": "open", "question": "Where?", "answer": "kidney", "output": "unclear"},
        {"id": "d", "answer_type": "closed", "question": "Is it?", "answer": "yes", "output": "yes"},
    ]

    def responder(body):
        user = body["messages"][1]["content"]
        if "unclear" in user:
            return "Hard to say."
        return "Correct" if "the left lung" in user else "**Incorrect**\nThe reference says liver."

    with MockServer(responder=responder) as server:
        rows, summary = judge_open(records, judge_config(server))
    assert [r["judge_correct"] for r in rows] == [True, False, None]  # closed items are not sent
    assert summary == {"n": 3, "judged": 2, "judge_accuracy": 0.5, "malformed": 1, "failed": 0}


@pytest.mark.parametrize("text, expected", [
    ("8 9\nbecause", (8.0, 9.0)), ("Assistant 1: 7, Assistant 2: 6", (7.0, 6.0)),
    ("Scores: 8/10 and 6/10", (8.0, 6.0)), ("no numbers here", None), ("", None), (None, None),
    ("Assistant 1 earns 7.5, Assistant 2 earns 6.", (7.5, 6.0)),
    ("Both discuss Fig 1 (c0a70128), the reference more fully.", None),  # digits inside a word are no score
    ("Fig2b and 3x are no scores; 8 9 are", (8.0, 9.0)),
])
def test_parse_pair_scores(text, expected):
    assert parse_pair_scores(text) == expected


def test_parse_verdict():
    assert parse_verdict("correct") is True and parse_verdict("Incorrect.") is False
    assert parse_verdict("correct or incorrect?") is None and parse_verdict("") is None


def write_jsonl_rows(path, rows):
    import json

    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def judge_yaml(tmp_path, server: MockServer):
    path = tmp_path / "judge.yaml"
    path.write_text(f"llm:\n  base_url: {server.base_url}\n  model: judge\n  api_key_env: MEDVL_NO_KEY\n"
                    "  max_retries: 0\n  bad_response_retries: 0\n")
    return path


def test_chat_question_without_an_answer_is_listed_not_judged_as_empty(tmp_path, medvl):
    questions = write_jsonl_rows(tmp_path / "q.jsonl", QUESTIONS)
    answers = write_jsonl_rows(tmp_path / "a.jsonl", [{"question_id": 1, "text": "model one"}])
    with MockServer(responder=chat_responder) as server:
        result = medvl("eval", "judge-chat", questions, answers, "--config", judge_yaml(tmp_path, server),
                       "--out", tmp_path / "out")
        sent = [b["messages"][1]["content"] for b in server.requests]
    assert result.code == 0 and len(sent) == 2 and all("model one" in text for text in sent)
    assert "2 of 3 questions have no answer" in result.err
    import json

    assert json.loads((tmp_path / "out" / "judge_chat.json").read_text())["unanswered"] == {
        "n": 2, "question_ids": ["2", "3"]}


@pytest.mark.parametrize("questions, answers, words", [
    ([{"question_id": 1, "question": "x"}], [{"question_id": 1, "text": "a"}], "q.jsonl: record 1 has no 'text'"),
    (QUESTIONS, [{"qid": 1, "text": "a"}], "a.jsonl: record 1 has no 'question_id'"),
    (QUESTIONS, [{"question_id": 99, "text": "a"}], "a.jsonl: none of the 3 questions has an answer"),
    ([], [{"question_id": 1, "text": "a"}], "q.jsonl: no records"),
])
def test_chat_judge_inputs_it_cannot_read_are_one_line_before_any_request(tmp_path, medvl, questions, answers,
                                                                          words):
    with MockServer(responder=chat_responder) as server:
        result = medvl("eval", "judge-chat", write_jsonl_rows(tmp_path / "q.jsonl", questions),
                       write_jsonl_rows(tmp_path / "a.jsonl", answers), "--config", judge_yaml(tmp_path, server),
                       "--out", tmp_path / "out")
        assert not server.requests
    assert result.code == 2 and result.err.count("\n") == 1 and words in result.err, result


def test_open_judge_with_no_open_item_or_no_question_is_one_line(tmp_path, medvl):
    choice = write_jsonl_rows(tmp_path / "choice.jsonl", [{"id": "a", "answer_type": "choice", "answer": "A"}])
    bare = write_jsonl_rows(tmp_path / "bare.jsonl", [{"id": "a", "answer_type": "open", "output": "x"}])
    with MockServer() as server:
        config = judge_yaml(tmp_path, server)
        no_open = medvl("eval", "judge-open", choice, "--config", config)
        no_question = medvl("eval", "judge-open", bare, "--config", config)
        assert not server.requests
    assert no_open.code == 2 and "no open question to judge (1 items: choice questions)" in no_open.err
    assert no_question.code == 2 and "item 'a' has no 'question', 'answer'" in no_question.err


def test_a_judge_that_judged_nothing_writes_its_rows_and_exits_2(tmp_path, medvl):
    records = [{"id": str(i), "answer_type": "open", "question": "Where?", "answer": "liver", "output": f"liver {i}"}
               for i in range(3)]  # three distinct prompts: identical ones would be sent once
    predictions = write_jsonl_rows(tmp_path / "predictions.jsonl", records)
    with MockServer(script=["malformed", {"status": 500}, {"text": "no idea"}]) as server:
        result = medvl("eval", "judge-open", predictions, "--config", judge_yaml(tmp_path, server))
    assert result.code == 2 and "the judge judged nothing: 2 requests failed, 1 replies had no verdict" in result.err
    assert len((tmp_path / "judge_open.jsonl").read_text().splitlines()) == 3
