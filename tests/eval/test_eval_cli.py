"""`medvl eval` commands end to end: run (majority baseline), score with another scorer, compare, list, inspect."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from medvl.cli import build_app

FIXTURES = Path(__file__).parent / "fixtures"
ROOT = Path(__file__).resolve().parents[2]


def invoke(*args: str):
    result = CliRunner().invoke(build_app(), list(args))
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


def test_run_score_compare(tmp_path):
    config = tmp_path / "eval.yaml"
    config.write_text(yaml.safe_dump({"benchmark": {"name": "huatuo_eval", "root": str(FIXTURES / "huatuo")},
                                      "backend": {"kind": "majority"}, "extra_scorers": ["huatuo_match_choice3"]}))
    first, second = tmp_path / "majority", tmp_path / "majority-text-only"
    output = invoke("eval", "run", str(config), f"output_dir={first}")
    assert "choice acc" in output and str(first) in output
    output = invoke("eval", "run", str(config), f"output_dir={second}", "missing_images=text_only", "report=false")
    assert "no report.md or plots/" in output and not (second / "report.md").exists()  # says what it wrote

    rescored = json.loads(invoke("eval", "score", str(first), "--scorer", "huatuo_match_choice3", "--out",
                                 str(tmp_path / "rescored")))
    assert rescored["scorer"] == "huatuo_match_choice3" and rescored["question_number"] == 2
    assert (tmp_path / "rescored" / "scores.huatuo_match_choice3.json").is_file()
    scored = [json.loads(line) for line in (tmp_path / "rescored" / "predictions.huatuo_match_choice3.jsonl").open()]
    assert {r["scorer"] for r in scored} == {"huatuo_match_choice3"}

    table = invoke("eval", "compare", str(first), str(second), "--out", str(tmp_path / "compare.md"))
    lines = [line for line in table.splitlines() if line.startswith("| majority")]
    assert len(lines) == 2 and "huatuo_eval [test]" in lines[0]
    assert (tmp_path / "compare.md").read_text() == table.rstrip("\n") + "\n"


def test_list_and_inspect():
    listed = invoke("eval", "list")
    assert "vqa_rad" in listed and "llava_med_run_eval_batch" in listed
    summary = invoke("eval", "inspect", "slake", str(FIXTURES / "slake"), "--option", "lang=all")
    assert "3 questions" in summary and "missing images: 2" in summary


def test_shipped_configs_validate():
    from medvl.config import load_config
    from medvl.eval.judge import JudgeConfig
    from medvl.eval.config import EvalConfig

    for path in sorted((ROOT / "configs" / "eval").glob("*.yaml")):
        load_config(JudgeConfig if path.stem == "judge" else EvalConfig, path)


def test_judge_commands_against_the_mock_server(tmp_path):
    from medvl.llm.mock_server import MockServer

    predictions = tmp_path / "predictions.jsonl"
    predictions.write_text(json.dumps({"id": "a", "answer_type": "open", "question": "Where?", "answer": "liver",
                                       "output": "the liver"}) + "\n")
    questions, answers = tmp_path / "questions.jsonl", tmp_path / "answers.jsonl"
    questions.write_text(json.dumps({"question_id": 7, "text": "What is shown?", "gpt4_answer": "a mass",
                                     "type": "conversation", "domain": "ct_scan"}) + "\n")
    answers.write_text(json.dumps({"question_id": 7, "text": "a large mass"}) + "\n")
    judge = tmp_path / "judge.yaml"

    def responder(body):
        return "correct" if "[Candidate answer]" in body["messages"][1]["content"] else "8 6\nfine"

    with MockServer(responder=responder) as server:
        judge.write_text(yaml.safe_dump({"llm": {"base_url": server.base_url, "model": "judge",
                                                 "api_key_env": "MEDVL_NO_KEY"}}))
        opened = json.loads(invoke("eval", "judge-open", str(predictions), "--config", str(judge)))
        chat = json.loads(invoke("eval", "judge-chat", str(questions), str(answers), "--config", str(judge),
                                 "--out", str(tmp_path / "chat")))
    assert opened["judge_accuracy"] == 1.0 and (tmp_path / "judge_open.jsonl").is_file()
    assert chat["reference_first"]["relative_score"] == pytest.approx(75.0)
    assert chat["model_first"]["relative_score"] == pytest.approx(100 * 8 / 6)


def test_a_judge_run_again_pays_for_nothing_it_already_received(medvl, tmp_path):
    """Without llm.cache_dir the judges cache in their output folder: a rerun (after a kill, an outage)
    re-asks nothing; an output folder that cannot be made fails before the first request."""
    from medvl.llm.mock_server import MockServer

    predictions = tmp_path / "run" / "predictions.jsonl"
    predictions.parent.mkdir()
    predictions.write_text("".join(json.dumps({"id": str(i), "answer_type": "open", "question": f"Where {i}?",
                                               "answer": "liver", "output": "liver"}) + "\n" for i in range(3)))
    questions, answers = tmp_path / "questions.jsonl", tmp_path / "answers.jsonl"
    questions.write_text(json.dumps({"question_id": 7, "text": "What is shown?", "gpt4_answer": "a mass",
                                     "type": "conversation", "domain": "ct_scan"}) + "\n")
    answers.write_text(json.dumps({"question_id": 7, "text": "a large mass"}) + "\n")
    judge, blocker = tmp_path / "judge.yaml", tmp_path / "a-file"
    blocker.write_text("")

    def responder(body):
        return "correct" if "[Candidate answer]" in body["messages"][1]["content"] else "8 6\nfine"

    with MockServer(responder=responder) as server:
        judge.write_text(yaml.safe_dump({"llm": {"base_url": server.base_url, "model": "judge",
                                                 "api_key_env": "MEDVL_NO_KEY"}}))
        commands = (["eval", "judge-open", predictions.parent, "--config", judge],
                    ["eval", "judge-chat", questions, answers, "--config", judge, "--out", tmp_path / "chat"])
        for args in commands:
            assert medvl(*args).code == 0
        asked = len(server.requests)
        assert asked == 3 + 2  # three open verdicts, one chat question in both orders
        for args in commands:
            assert medvl(*args).code == 0
        assert len(server.requests) == asked
        assert (predictions.parent / "llm-cache").is_dir() and (tmp_path / "chat" / "llm-cache").is_dir()
        refused = medvl("eval", "judge-chat", questions, answers, "--config", judge, "--out", blocker / "chat")
        assert refused.code == 2 and "a-file is a file" in refused.err and len(server.requests) == asked


def test_an_llm_endpoint_that_cannot_be_used_is_one_line(medvl, tmp_path, unusable_llm):
    """`eval run` with the openai backend and both judges stop at the first request (after its retries, for
    an endpoint never reached) instead of recording every item as failed; a key is never printed."""
    endpoint, error_line = unusable_llm
    llm = {**endpoint, "model": "mock", "max_retries": 1, "backoff_initial_s": 0.01}
    config, judge = tmp_path / "eval.yaml", tmp_path / "judge.yaml"
    config.write_text(yaml.safe_dump({"benchmark": {"name": "vqa_rad", "root": str(FIXTURES / "vqa_rad")},
                                      "backend": {"kind": "openai", "llm": llm},
                                      "output_dir": str(tmp_path / "run")}))
    judge.write_text(yaml.safe_dump({"llm": llm}))
    predictions, questions, answers = (tmp_path / f for f in ("predictions.jsonl", "q.jsonl", "a.jsonl"))
    predictions.write_text(json.dumps({"id": "a", "answer_type": "open", "question": "Where?",
                                       "answer": "liver", "output": "the liver"}) + "\n")
    questions.write_text(json.dumps({"question_id": 7, "text": "What?", "gpt4_answer": "a mass"}) + "\n")
    answers.write_text(json.dumps({"question_id": 7, "text": "a large mass"}) + "\n")
    for args in (["eval", "run", config],
                 ["eval", "judge-open", predictions, "--config", judge],
                 ["eval", "judge-chat", questions, answers, "--config", judge, "--out", tmp_path / "chat"]):
        outcome = medvl(*args)
        last = outcome.err.strip().splitlines()[-1]
        assert outcome.code == 2 and "Traceback" not in outcome.err, (args, outcome.err[-3000:])
        assert last.startswith(error_line), (args, last)
        key = os.environ.get(llm["api_key_env"])
        assert key is None or key not in outcome.err + outcome.out


def test_compare_and_score_refuse_bad_inputs_in_one_line(medvl, tmp_path):
    """A damaged or unfinished run folder, a folder given twice, a candidates file that is not JSON: one line,
    exit 2, saying what to do; an unfinished run finished as the line says compares."""
    config = tmp_path / "eval.yaml"
    config.write_text(yaml.safe_dump({"benchmark": {"name": "huatuo_eval", "root": str(FIXTURES / "huatuo")},
                                      "backend": {"kind": "majority"}}))
    finished = tmp_path / "finished"
    assert medvl("eval", "run", config, f"output_dir={finished}").code == 0
    corrupt, keyless, unfinished = (Path(shutil.copytree(finished, tmp_path / name))
                                    for name in ("corrupt", "keyless", "unfinished"))
    (corrupt / "scores.json").write_text('{"benchmark": "huatuo_e')
    (keyless / "scores.json").write_text('{"scores": {}}')
    (unfinished / "scores.json").unlink()  # killed before scoring: its answers still in a part file
    (unfinished / "predictions.jsonl").rename(unfinished / "predictions.part-0.jsonl")
    candidates, number = tmp_path / "candidates.txt", tmp_path / "number.json"
    candidates.write_text("yes\nno\n")
    number.write_text("5")
    rerun = "run the same `medvl eval run`"
    for args, words in (
        (["eval", "compare", finished, corrupt], [f"{corrupt / 'scores.json'}: not valid JSON", rerun]),
        (["eval", "compare", finished, keyless], ["no 'benchmark', 'split', 'backend', 'answered'", rerun]),
        (["eval", "compare", finished, unfinished], [f"{unfinished}: an unfinished run", rerun, "to finish it"]),
        (["eval", "compare", finished, tmp_path / "." / "finished"], [f"{finished} is given more than once"]),
        (["eval", "score", finished, "--scorer", "llava_med_run_eval", "--candidates", candidates],
         [f"{candidates}: not valid JSON", 'candidate.json ({"0": [answer, ...]})']),
        (["eval", "score", finished, "--scorer", "llava_med_run_eval", "--candidates", number],
         [f"{number}: a JSON int without a list of answers"]),
        (["eval", "score", finished, "--scorer", "llava_med_run_eval", "--candidates", tmp_path / "absent.json"],
         ["absent.json: no such file"]),
    ):
        outcome = medvl(*args)
        assert outcome.code == 2 and outcome.err.count("\n") == 1, (args, outcome)
        assert all(word in outcome.err for word in words), (args, outcome.err)
    # the same run, from its saved config (a copy of `finished`: its output_dir named again)
    assert medvl("eval", "run", unfinished / "config.yaml", f"output_dir={unfinished}").code == 0
    compared = medvl("eval", "compare", finished, unfinished)
    assert compared.code == 0 and "| unfinished | huatuo_eval [test]" in compared.out


def test_a_model_whose_config_json_is_broken_is_one_line_naming_it(medvl, broken_model_dirs, tmp_path):
    """A local engine's model folder whose config.json is a list was a TypeError traceback; cut short or
    without model_type, a line naming no file."""
    config = tmp_path / "eval.yaml"
    benchmark = {"name": "huatuo_eval", "root": str(FIXTURES / "huatuo")}
    config.write_text(yaml.safe_dump({"benchmark": benchmark}))
    for folder, said in broken_model_dirs:
        outcome = medvl("eval", "run", config, f"backend.model={folder}",
                        f"output_dir={tmp_path / folder.name}")
        lines = outcome.err.strip().splitlines()
        assert outcome.code == 2 and len(lines) == 1 and lines[0].startswith(f"error: {said}"), outcome.err
