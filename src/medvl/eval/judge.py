"""LLM judges through the shared LLM client: LLaVA-Med's chat protocol, and a judge for open answers.

**Chat judge** (LLaVA-Med `eval_multimodal_chat_gpt_score.py` + `summarize_gpt_review.py`): the
judge reads the figure caption and in-text mention as context, the question, and two answers —
[Assistant 1] and [Assistant 2] — and gives each a 1–10 score on the first line. LLaVA-Med always
puts the reference (text-only GPT-4) answer first; the relative score is mean(model / reference)
× 100 per question type, per domain and overall. medvl runs both orders (reference first, model
first) and reports each and their average, which cancels the judge's position bias. The prompt
text is the reference's, word for word, so scores are comparable.

**Open-answer judge**: for each open item, is the model's answer correct against the reference?
One word, "correct" or "incorrect", on the first line.

A judge reply that cannot be parsed is kept (raw text) and counted as malformed, never a crash;
a failed request is recorded with its error. Both are left out of the means and reported.

Inputs are checked before the first request (`read_chat_questions`, `read_chat_answers`,
`open_records`): a row without a field the prompt needs is a `JudgeInputError` naming the file and
line; a chat question without a model answer is left out and listed (`unanswered`), never judged
as an empty answer; nothing to judge at all is an error. A judge that judged nothing (every request
failed, every reply malformed) writes its files, then the command says so and exits 2.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from statistics import fmean
from typing import Any

from pydantic import Field

from medvl.config import Config
from medvl.errors import UserError
from medvl.llm.config import LLMConfig

__all__ = [
    "JudgeConfig",
    "JudgeInputError",
    "chat_judge_messages",
    "judge_chat",
    "judge_open",
    "open_judge_messages",
    "open_records",
    "parse_pair_scores",
    "parse_verdict",
    "read_chat_answers",
    "read_chat_questions",
]

# The system message as LLaVA-Med sends it, stray leading quote included.
CHAT_SYSTEM = "'You are a helpful and precise assistant for checking the quality of the answer."
CHAT_INSTRUCTION = (
    "We would like to request your feedback on the performance of two AI assistants in response to the user "
    "question displayed above. The user asks the question on observing an image. For your reference, the visual "
    "content in the image is represented with caption describing the same image.\n"
    "  Please rate the helpfulness, relevance, accuracy, level of details of their responses. Each assistant "
    "receives an overall score on a scale of 1 to 10, where a higher score indicates better overall performance.\n"
    "  Please first output a single line containing only two values indicating the scores for Assistant 1 and 2, "
    "respectively. The two scores are separated by a space. In the subsequent line, please provide a "
    "comprehensive explanation of your evaluation, avoiding any potential bias and ensuring that the order in "
    "which the responses were presented does not affect your judgment."
)
OPEN_SYSTEM = "You grade answers to medical visual questions against a reference answer."
OPEN_TEMPLATE = (
    "[Question]\n{question}\n\n[Reference answer]\n{reference}\n\n[Candidate answer]\n{candidate}\n\n"
    "Does the candidate answer give the same answer as the reference (wording may differ; extra correct detail "
    "is fine; a contradicting or missing answer is not)? Reply with one word on the first line: correct or "
    "incorrect. You may explain on the next lines."
)
DOMAINS = ("chest_xray", "mri", "histology", "gross", "ct_scan")
_NUMBER = re.compile(r"(?<![\w.])\d+(?:\.\d+)?(?!\w)")  # a number of its own, not digits in a word
_NOT_SCORES = re.compile(r"(?i)assistant\s*[12]|/\s*10\b")  # labels and "/10" are not scores
_VERDICT = re.compile(r"\b(incorrect|correct)\b", re.IGNORECASE)


class JudgeConfig(Config):
    llm: LLMConfig
    both_orders: bool = Field(True, description="chat judge: also score with the model's answer first")


class JudgeInputError(UserError, ValueError):
    """A questions, answers or predictions file a judge cannot read; names the file (and line) and the fix."""


def _checked_rows(path: Path, keys: Sequence[str], what: str) -> list[dict[str, Any]]:
    """The rows of a JSONL/JSON file, each holding every one of `keys`; else one error naming the line."""
    from medvl.io.jsonl import read_records

    rows = read_records(path)
    for number, row in enumerate(rows, start=1):
        absent = [key for key in keys if row.get(key) is None]
        if absent:
            raise JudgeInputError(f"{path}: record {number} has no {', '.join(map(repr, absent))}; {what}")
    if not rows:
        raise JudgeInputError(f"{path}: no records; {what}")
    return rows


def read_chat_questions(path: Path) -> list[dict[str, Any]]:
    """LLaVA-Med's chat questions (`llava_med_eval_qa50_qa.jsonl`): each with question_id, text, gpt4_answer."""
    return _checked_rows(path, ("question_id", "text", "gpt4_answer"),
                         "give LLaVA-Med's questions file (question_id, text, gpt4_answer, fig_caption, ...)")


def read_chat_answers(path: Path) -> dict[str, str]:
    """The model's answers by question id (a JSONL of question_id, text)."""
    rows = _checked_rows(path, ("question_id", "text"), "give the model's answers as JSONL rows of question_id, text")
    return {str(row["question_id"]): str(row["text"]) for row in rows}


def open_records(records: Sequence[dict[str, Any]], path: Path) -> list[dict[str, Any]]:
    """The open items of a predictions file, each with the question and reference the judge is shown."""
    opened = [r for r in records if r.get("answer_type") == "open"]
    if not opened:
        kinds = ", ".join(sorted({str(r.get("answer_type")) for r in records})) or "no"
        raise JudgeInputError(f"{path}: no open question to judge ({len(records)} items: {kinds} questions); "
                              "judge-open judges the open items of a predictions.jsonl")
    for record in opened:
        absent = [key for key in ("id", "question", "answer") if record.get(key) is None]
        if absent:
            raise JudgeInputError(f"{path}: item {record.get('id')!r} has no {', '.join(map(repr, absent))}; "
                                  "give the predictions.jsonl that `medvl eval run` wrote")
    return opened


def chat_judge_messages(question: str, answer1: str, answer2: str, caption: str = "", label: str = "",
                        mention: str = "") -> list[dict[str, str]]:
    """The reference's two messages: the judge's role, then context, question, both answers, instruction."""
    user = (f"[Context]\nFigure Caption:\n{label}: {caption}\n\nFigure Context:\n\t- {mention}\n\n"
            f"[Question]\n{question}\n\n[Assistant 1]\n{answer1}\n\n[End of Assistant 1]\n\n"
            f"[Assistant 2]\n{answer2}\n\n[End of Assistant 2]\n\n[System]\n{CHAT_INSTRUCTION}\n\n")
    return [{"role": "system", "content": CHAT_SYSTEM}, {"role": "user", "content": user}]


def parse_pair_scores(text: str | None) -> tuple[float, float] | None:
    """The two scores: the first line's two numbers (the protocol), else the first two numbers 0–10 anywhere
    (numbers standing alone: the digits of "Fig2b" or a hash are no score)."""
    if not text:
        return None
    for candidate in (text.strip().split("\n")[0], text):
        candidate = _NOT_SCORES.sub(" ", candidate)
        numbers = [float(n) for n in _NUMBER.findall(candidate) if 0 <= float(n) <= 10]
        if len(numbers) == 2 or (len(numbers) > 2 and "\n" in candidate):
            return numbers[0], numbers[1]
    return None


def _domain(value: Any) -> str:
    if isinstance(value, dict):
        return next((d for d in DOMAINS if value.get(d)), "unknown")
    return str(value or "unknown")


def _send(llm: LLMConfig, conversations: list[list[dict[str, Any]]]) -> list[tuple[str | None, str | None]]:
    """(text, error) per conversation, in order."""
    from medvl.llm.client import LLMClient
    from medvl.llm.messages import ChatRequest, LLMError

    results = LLMClient(llm).run_many([ChatRequest(c) for c in conversations], progress=False)
    return [(None, str(r)) if isinstance(r, LLMError) else (r.text, None) for r in results]


def judge_chat(questions: Sequence[dict[str, Any]], answers: dict[str, str], config: JudgeConfig,
               source: str = "answers") -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Score model answers (by question_id) against LLaVA-Med-format questions; returns (rows, summary).

    A question row has `question_id`, `text`, `gpt4_answer`, `fig_caption`, `fig_label`,
    `in_text_mention`, `type` and `domain` (a string, or LLaVA-Med's dict of booleans). Questions
    without an answer are not judged; the summary lists them (`unanswered`), and when no question has
    one the error names `source` (the answers file).
    """
    orders = ["reference_first", "model_first"] if config.both_orders else ["reference_first"]
    unanswered = [str(q["question_id"]) for q in questions if str(q["question_id"]) not in answers]
    answered = [q for q in questions if str(q["question_id"]) in answers]
    if not answered:
        raise JudgeInputError(f"{source}: none of the {len(questions)} questions has an answer (no question_id matches, "
                              f"e.g. {unanswered[:3]}); give the answers to these questions")
    conversations, rows = [], []
    for q in answered:
        answer = answers[str(q["question_id"])]
        context = {"caption": q.get("fig_caption", ""), "label": q.get("fig_label", ""),
                   "mention": q.get("in_text_mention", "")}
        pairs = {"reference_first": (q["gpt4_answer"], answer), "model_first": (answer, q["gpt4_answer"])}
        conversations += [chat_judge_messages(q["text"], *pairs[order], **context) for order in orders]
        rows.append({"question_id": q["question_id"], "type": q.get("type", "unknown"), "domain": _domain(q.get("domain"))})
    replies = iter(_send(config.llm, conversations))
    for row in rows:
        for order in orders:
            text, error = next(replies)
            pair = parse_pair_scores(text)
            scores = None if pair is None else (pair if order == "reference_first" else (pair[1], pair[0]))
            row[order] = {"raw": text, "error": error, "malformed": error is None and pair is None,
                          "reference_score": scores[0] if scores else None, "model_score": scores[1] if scores else None}
    summary = _summarize_chat(rows, orders)
    summary["unanswered"] = {"n": len(unanswered), "question_ids": unanswered}
    return rows, summary


def _summarize_chat(rows: list[dict[str, Any]], orders: list[str]) -> dict[str, Any]:
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        for group in (row["type"], row["domain"], "overall"):
            groups[group].append(row)
    summary: dict[str, Any] = {}
    for group, members in groups.items():
        entry: dict[str, Any] = {"n": len(members)}
        for order in orders:
            valid = [m[order] for m in members if m[order]["reference_score"]]
            entry[order] = {
                "reference_score": fmean(v["reference_score"] for v in valid) if valid else None,
                "model_score": fmean(v["model_score"] for v in valid) if valid else None,
                "relative_score": 100 * fmean(v["model_score"] / v["reference_score"] for v in valid) if valid else None,
                "scored": len(valid), "malformed": sum(m[order]["malformed"] for m in members),
                "failed": sum(m[order]["error"] is not None for m in members),
            }
        relatives = [entry[o]["relative_score"] for o in orders if entry[o]["relative_score"] is not None]
        entry["relative_score_average"] = fmean(relatives) if len(relatives) == len(orders) else None
        summary[group] = entry
    return summary


def open_judge_messages(question: str, reference: str, candidate: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": OPEN_SYSTEM},
            {"role": "user", "content": OPEN_TEMPLATE.format(question=question, reference=reference,
                                                             candidate=candidate or "(no answer)")}]


def parse_verdict(text: str | None) -> bool | None:
    """True for "correct", False for "incorrect": the verdict words of the first line, else of the whole
    reply; None when there are none or both."""
    if not text:
        return None
    for candidate in (text.strip().split("\n")[0], text):
        found = {m.lower() for m in _VERDICT.findall(candidate)}
        if found:
            return found.pop() == "correct" if len(found) == 1 else None
    return None


def judge_open(records: Iterable[dict[str, Any]], config: JudgeConfig) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Judge each open prediction record against its reference; returns (verdict rows, summary)."""
    opened = [r for r in records if r.get("answer_type") == "open"]  # checked by `open_records` in the command
    replies = _send(config.llm, [open_judge_messages(r["question"], r["answer"], r.get("output") or "")
                                 for r in opened])
    rows = []
    for record, (text, error) in zip(opened, replies):
        verdict = parse_verdict(text)
        rows.append({"id": record["id"], "judge_correct": verdict, "raw": text, "error": error,
                     "malformed": error is None and verdict is None})
    judged = [r["judge_correct"] for r in rows if r["judge_correct"] is not None]
    summary = {"n": len(rows), "judged": len(judged), "judge_accuracy": fmean(map(float, judged)) if judged else None,
               "malformed": sum(r["malformed"] for r in rows), "failed": sum(r["error"] is not None for r in rows)}
    return rows, summary
