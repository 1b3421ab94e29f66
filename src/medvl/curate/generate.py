"""The three generators: requests to build and replies to turn into LLaVA conversation records.

- Concept alignment (LLaVA-Med stage 1, no model): one of LLaVA's 11 concise instructions when the
  caption has fewer than `cutoff_words` words, else one of its 16 detailed ones; the caption (its
  leading "Figure 3." label stripped) is the answer.
- Unblinded reformatting (PubMedVision): the MLLM sees the image(s), the caption and the mentions
  and returns JSON; it yields an Alignment record (a pool question → the detailed description) and
  an Instruction record (the role's question → the answer), both with `modality` and `body_part`.
- Blinded self-instruct (LLaVA-Med): a text-only model sees the caption (and inline mentions) after
  few-shot examples, and writes a User/Assistant conversation; `<image>` goes before or after the
  first question by a seeded coin flip, as LLaVA-Med's post-processing does.

Records: `{"id", "image": [paths relative to the image root], "conversations", "source", "licence",
"pmcid", "figure_id", "modality", ...}` — the format of `medvl.records`, with the provenance of the
figure. Choices are seeded by the record id.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from medvl.curate.config import ConceptConfig, ReformatConfig, SelfInstructConfig
from medvl.curate.postprocess import Rejected, clean_turns, find_refusal, parse_conversation, parse_reformat
from medvl.curate.prompts import pick, read_pool, read_roles, read_text, render, self_instruct_examples
from medvl.llm.messages import ChatRequest
from medvl.records import make_record

__all__ = [
    "FigureInput",
    "concept_record",
    "reformat_request",
    "build_reformat_request",
    "reformat_records",
    "self_instruct_request",
    "self_instruct_record",
    "context_text",
    "strip_figure_label",
]

_LABEL = re.compile(
    r"^\s*(?:supplementary\s+)?(?:fig(?:ure)?|table)\.?\s*[a-z]?\d+[a-z]?\s*[.:|\-–—)]?\s*", re.IGNORECASE
)


@dataclass
class FigureInput:
    """What the generators need from a prepared record."""

    id: str
    images: list[str]  # absolute source paths
    image_refs: list[str]  # paths relative to the output image root
    caption: str
    mentions: list[str] = field(default_factory=list)
    fig_label: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)  # source, licence, provenance, modality, domain

    @classmethod
    def from_prepared(cls, record: dict[str, Any], image_refs: list[str]) -> "FigureInput":
        meta = record["metadata"]
        return cls(
            id=record["id"],
            images=[m.get("path") or m["url"] for m in record.get("media", [])],
            image_refs=image_refs,
            caption=record["text"],
            mentions=list(meta.get("mentions") or []),
            fig_label=meta.get("fig_label"),
            meta={k: meta.get(k) for k in ("source", "licence", "pmcid", "figure_id", "modality", "domain")},
        )

    def record(self, exchanges: list[tuple[str, str]], images_after: bool = False, **extra: Any) -> dict[str, Any]:
        """This figure's record of `exchanges` (`medvl.records.make_record`) with its provenance."""
        provenance = {key: self.meta.get(key) for key in ("source", "licence", "pmcid", "figure_id", "modality")}
        return make_record(self.id, self.image_refs, exchanges, images_after, **provenance, **extra)


def strip_figure_label(caption: str) -> str:
    """'Figure 4. Nuclear magnetic ...' → 'Nuclear magnetic ...' (unchanged when no label leads)."""
    stripped = _LABEL.sub("", caption, count=1)
    return stripped[:1].upper() + stripped[1:] if stripped else caption


# ------------------------------------------------------------------------ concept alignment


def concept_record(figure: FigureInput, config: ConceptConfig) -> dict[str, Any]:
    answer = strip_figure_label(figure.caption) if config.strip_figure_label else figure.caption
    concise = len(answer.split()) < config.cutoff_words
    pool = read_pool("concise_instructions.txt" if concise else "detailed_instructions.txt")
    instruction = pick(pool, config.seed, figure.id, "concept")
    return figure.record([(instruction, answer)], kind="concise" if concise else "detailed")


# ------------------------------------------------------------------------ unblinded reformatting


def _reformat_choices(figure: FigureInput, config: ReformatConfig) -> tuple[str, Any]:
    question = pick(read_pool("alignment_questions.txt"), config.seed, figure.id, "alignment")
    role = pick(read_roles(config.roles), config.seed, figure.id, "role")
    return question, role


def reformat_prompt(figure: FigureInput, config: ReformatConfig) -> tuple[str, str]:
    """(system, user text) of the reformatting request (the images go before the user text)."""
    question, role = _reformat_choices(figure, config)
    system = render(
        "reformat_system.j2",
        n_images=len(figure.images),
        alignment_question=question,
        role=role.name,
        role_description=role.description,
    )
    user = render("reformat_user.j2", caption=figure.caption, mentions=figure.mentions[: config.max_mentions])
    return system, user


def reformat_request(
    figure: FigureInput, config: ReformatConfig, image_parts: list[dict[str, Any]]
) -> ChatRequest:
    system, user = reformat_prompt(figure, config)
    content = [*image_parts, {"type": "text", "text": user}]
    params = {"response_format": {"type": "json_object"}} if config.json_mode else {}
    return ChatRequest([{"role": "system", "content": system}, {"role": "user", "content": content}], params)


def build_reformat_request(figure: FigureInput, config: ReformatConfig) -> ChatRequest:
    """The request with the record's images loaded by the shared loader and sent as JPEG data URLs."""
    from medvl.io.images import load_image
    from medvl.llm.messages import image_part

    parts = [image_part(load_image(path), config.image_max_side) for path in figure.images]
    return reformat_request(figure, config, parts)


def reformat_records(figure: FigureInput, reply_text: str, config: ReformatConfig) -> tuple[dict, dict]:
    """(Alignment record, Instruction record); raises `Rejected`."""
    reply = parse_reformat(reply_text)
    question, role = _reformat_choices(figure, config)
    labels = {"modality": reply.modality, "body_part": reply.body_part}
    alignment = figure.record([(question, reply.description)])
    instruction = figure.record([(reply.question, reply.answer)], role=role.name)
    return alignment | labels, instruction | labels


# ------------------------------------------------------------------------ blinded self-instruct


def context_text(fig_label: str | None, caption: str, mentions: list[str], use_mentions: bool) -> str:
    """LLaVA-Med's user turn: 'Figure Caption:\\n{label}: {caption}' (+ '\\n\\nFigure Context:\\n\\t- ..')."""
    labelled = fig_label and not _LABEL.match(caption)  # PMC captions often start with "Figure 4." already
    text = f"Figure Caption:\n{fig_label}: {caption}" if labelled else f"Figure Caption:\n{caption}"
    if use_mentions and mentions:
        text += "\n\nFigure Context:\n\t- " + "\n\t- ".join(mentions)
    return text


def _transcript(conversations: list[dict[str, str]]) -> str:
    return "\n\n".join(
        ("User: " if t["from"] == "human" else "Assistant: ") + t["value"] for t in conversations
    )


def self_instruct_request(figure: FigureInput, config: SelfInstructConfig) -> ChatRequest:
    messages: list[dict[str, Any]] = [{"role": "system", "content": read_text("self_instruct_system.txt")}]
    for example in self_instruct_examples()[: config.few_shot]:
        context = context_text(
            example["fig_label"],
            example["fig_caption"],
            example["in_text_mention"],
            config.use_inline_mentions,
        )
        messages += [
            {"role": "user", "content": context},
            {"role": "assistant", "content": _transcript(example["conversations"])},
        ]
    mentions = figure.mentions[: config.max_mentions]
    messages.append(
        {
            "role": "user",
            "content": context_text(figure.fig_label, figure.caption, mentions, config.use_inline_mentions),
        }
    )
    return ChatRequest(messages)


def self_instruct_record(
    figure: FigureInput, reply_text: str, config: SelfInstructConfig
) -> tuple[dict, list[str]]:
    """(record, notes on dropped turns); raises `Rejected` (refusal, no_turns)."""
    pairs = parse_conversation(reply_text)
    if not pairs:
        phrase = find_refusal(reply_text)
        if phrase:
            raise Rejected("refusal", f"{phrase!r}")
        raise Rejected("no_turns", f"no User:/Assistant: turns in {reply_text[:120]!r}")
    kept, dropped = clean_turns(pairs)
    if not kept:
        raise Rejected("no_turns", "every turn was dropped: " + "; ".join(dropped[:3]))
    after = pick((False, True), config.seed, figure.id, "image-position")
    return figure.record(kept, images_after=after, domain=figure.meta.get("domain")), dropped
