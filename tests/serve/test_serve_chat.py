"""`medvl chat`: one-shot answers for scripts, the REPL fed through stdin, history fitting the context."""

from __future__ import annotations

import re

import pytest
from PIL import Image
from serve_helpers import png_bytes
from typer.testing import CliRunner

from medvl.cli import build_app
from medvl.model.checkpoint import DISCLAIMER
from medvl.model.generate import GenerationSettings
from medvl.serve.session import ChatSession, ContextOverflow, fit_context, user_turn


@pytest.fixture
def two_images(tmp_path):
    paths = []
    for seed in (0, 1):
        path = tmp_path / f"img{seed}.png"
        path.write_bytes(png_bytes(seed))
        paths.append(path)
    return paths


def _generate(generator, messages, images, max_new_tokens):
    settings = GenerationSettings(max_new_tokens=max_new_tokens)
    return generator.generate([messages], [images], settings)[0].text


def test_one_shot_prints_the_greedy_answer(tiny_model_dir, generator, two_images):
    args = ["chat", str(tiny_model_dir), "--image", str(two_images[0]), "--image", str(two_images[1]),
            "--question", "Compare the two images.", "--max-new-tokens", "10"]
    result = CliRunner().invoke(build_app(), args)
    assert result.exit_code == 0, result.output
    images = [Image.open(p).convert("RGB") for p in two_images]
    expected = _generate(generator, [user_turn("Compare the two images.", 2)], images, 10)
    assert result.stdout.strip() == expected
    assert DISCLAIMER in result.stderr


def test_one_shot_reports_an_unreadable_image(tiny_model_dir, tmp_path, medvl):
    """The command raises a UserError and the CLI's one handler prints it: one line, exit 2."""
    from medvl.errors import UserError

    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    args = ["chat", str(tiny_model_dir), "-i", str(bad), "-q", "What?"]
    assert isinstance(CliRunner().invoke(build_app(), args).exception, UserError)
    result = medvl(*args)
    errors = [line for line in result.err.splitlines() if "error" in line]  # stderr also has a loading bar
    assert result.code == 2 and errors == [f"error: {bad}: not_image: not one of JPEG, PNG, TIFF, WEBP, BMP, GIF, "
                                           "PPM, JPEG2000 or DICOM"]


def test_one_shot_reports_a_question_too_long_for_the_context(tiny_model_dir, medvl):
    from medvl.model.generate import context_length
    from transformers import AutoConfig

    positions = context_length(AutoConfig.from_pretrained(tiny_model_dir))
    result = medvl("chat", str(tiny_model_dir), "-q", "why " * positions)
    errors = [line for line in result.err.splitlines() if "error" in line]  # stderr also has a loading bar
    assert result.code == 2 and len(errors) == 1 and errors[0].startswith("error: the question and its images take ")
    result = medvl("chat", str(tiny_model_dir), "-q", "Why?", "--system", "Be brief. " * positions)
    assert result.code == 2 and result.err.count("error:") == 1
    assert re.search(r"^error: the system prompt is too long: it takes \d+ tokens, the "
                     r"question \d+; with max_new_tokens=256 the model's context allows \d+ prompt tokens$",
                     result.err.strip(), re.M), result.err


def test_repl_streams_keeps_history_and_obeys_commands(tiny_model_dir, generator, two_images):
    script = "\n".join([
        f"/image {two_images[0]} {two_images[1]}",
        "/image /no/such/file.png",
        "Describe both.",
        "And now?",
        "/help",
        "/clear",
        "Hello",
        "/quit",
        "never asked",
    ]) + "\n"
    result = CliRunner().invoke(build_app(), ["chat", str(tiny_model_dir), "--max-new-tokens", "6"], input=script)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert DISCLAIMER.split(":")[0] in out and "/image PATH" in out and out.rstrip().endswith("bye")
    assert "2 image(s) for the next question" in out and "missing" in out

    images = [Image.open(p).convert("RGB") for p in two_images]
    first = _generate(generator, [user_turn("Describe both.", 2)], images, 6)
    history = [user_turn("Describe both.", 2), {"role": "assistant", "content": first}, user_turn("And now?", 0)]
    second = _generate(generator, history, images, 6)
    fresh = _generate(generator, [user_turn("Hello", 0)], [], 6)
    answers = [line.split("medvl> ", 1)[1].strip() for line in out.splitlines() if "medvl> " in line]
    assert answers == [first, second, fresh]
    assert "conversation cleared" in out and "never asked" not in out


def test_fit_context_drops_oldest_exchanges_with_their_images(generator):
    red, blue = Image.new("RGB", (32, 32), "red"), Image.new("RGB", (32, 32), "blue")
    long_answer = "lorem ipsum " * 60
    messages = [{"role": "system", "content": "Be brief."}, user_turn("first", 1),
                {"role": "assistant", "content": long_answer}, user_turn("second", 1),
                {"role": "assistant", "content": long_answer}, user_turn("third", 0)]
    kept, images, dropped = fit_context(generator, messages, [red, blue], max_new_tokens=100)
    assert (dropped, images) == (1, [blue]) and kept == messages[:1] + messages[3:]
    kept, images, dropped = fit_context(generator, messages, [red, blue], max_new_tokens=200)
    assert (dropped, images) == (2, []) and kept == [messages[0], messages[-1]]
    with pytest.raises(ContextOverflow):
        fit_context(generator, [user_turn("word " * 600, 0)], [], max_new_tokens=10)


def test_session_records_exchanges_and_clears(generator):
    session = ChatSession(generator, GenerationSettings(max_new_tokens=4))
    session.attach(Image.new("RGB", (32, 32), "white"))
    streamed = "".join(session.stream("What?")).strip()
    assert streamed and session.messages[-1] == {"role": "assistant", "content": streamed}
    assert len(session.images) == 1 and session.pending == []
    session.clear()
    assert session.messages == [] and session.images == []


def test_sampling_without_a_seed_is_fresh_each_time():
    from medvl.serve.session import sampling_settings

    seeds = {sampling_settings(8, temperature=1.0).seed for _ in range(5)}
    assert len(seeds) == 5 and sampling_settings(8, 1.0, seed=3).seed == 3
    assert not sampling_settings(8, temperature=0.0).do_sample


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")  # a stream left to the GC
def test_ctrl_c_while_answering_stops_the_answer_and_keeps_the_repl(tiny_model_dir, generator, monkeypatch):
    import signal
    from contextlib import closing

    answering = ChatSession.stream

    def pressed_ctrl_c_once(session, question):
        with closing(answering(session, question)) as deltas:
            for delta in deltas:
                yield delta
                if question == "Tell me a story":
                    signal.raise_signal(signal.SIGINT)  # the user's Ctrl-C, as the terminal delivers it

    monkeypatch.setattr(ChatSession, "stream", pressed_ctrl_c_once)
    script = "Tell me a story\nHello\n/quit\n"
    # a terminal's Ctrl-C is a KeyboardInterrupt; a job started in the background (CI's `cmd &`) inherits SIGINT
    # ignored, and raise_signal would then do nothing
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        result = CliRunner().invoke(build_app(), ["chat", str(tiny_model_dir), "--max-new-tokens", "6"], input=script)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert result.exit_code == 0, result.output
    assert "(stopped; this question is not kept" in result.stdout and result.stdout.rstrip().endswith("bye")
    answers = [line.split("medvl> ", 1)[1].strip() for line in result.stdout.splitlines() if "medvl> " in line]
    assert answers[-1] == _generate(generator, [user_turn("Hello", 0)], [], 6)  # the stopped one is not history


@pytest.mark.parametrize("args,expected", [
    (["--device", "banana"], "error: device 'banana' cannot be used here ("),
    (["--device", "cuda:0" if not __import__("torch").cuda.is_available() else "cuda:4096"],
     "cannot be used here ("),
    (["--max-new-tokens", "100000"], "error: max_new_tokens=100000 leaves no room for a question in the model's "
                                     "context of "),
])
def test_unusable_generation_options_are_one_line(args, expected, tiny_model_dir, medvl):
    result = medvl("chat", str(tiny_model_dir), "-q", "What?", *args)
    errors = [line for line in result.err.splitlines() if "error" in line.lower()]  # stderr also has a loading bar
    assert result.code == 2 and len(errors) == 1 and expected in errors[0], result.err
    assert "Traceback" not in result.err


def test_an_empty_one_shot_question_without_images_is_refused(tiny_model_dir, medvl):
    result = medvl("chat", str(tiny_model_dir), "-q", "  ")
    assert result.code == 2 and result.out == "" and result.err.strip() == (
        "error: Invalid value for '--question': an empty question and no image: nothing to ask (see medvl chat --help)")


def test_one_shot_images_are_read_before_the_model_loads(tmp_path, medvl):
    """A typo in an image path is reported at once, not after loading a model (here: no model at all)."""
    result = medvl("chat", str(tmp_path), "-i", str(tmp_path / "scan [1].png"), "-q", "What?")
    assert result.code == 2 and result.err.strip() == f"error: {tmp_path / 'scan [1].png'}: missing: no such file"


def test_text_that_is_not_utf8_is_refused_in_one_line(tmp_path, medvl):
    """Bytes a terminal could not decode (Python keeps them as surrogates) were a TypeError traceback from the
    tokenizer; the one-shot question and system prompt are checked before the model loads (here: no model)."""
    result = medvl("chat", str(tmp_path), "-q", "what \udcff?")
    assert result.code == 2 and result.err.strip() == "error: --question is not UTF-8 text (byte 0xff at character 6)"
    result = medvl("chat", str(tmp_path), "-q", "what?", "--system", "be \udcc3")
    assert result.code == 2 and result.err.strip() == "error: --system is not UTF-8 text (byte 0xc3 at character 4)"


def test_repl_refuses_what_it_cannot_ask_in_one_line_and_goes_on(tiny_model_dir, two_images, generator, monkeypatch,
                                                                  medvl):
    """A line that is not UTF-8 is not asked (it was a traceback); a question too long for the context says
    that the attached images wait (else every next question fails the same way, unexplained); a command
    given arguments it does not take does nothing ("/clear images" cleared everything); end of input
    leaves the prompt's line before "bye"."""
    import io
    import sys

    lines = [b"\xff\xfe what is this?", f"/image {two_images[0]}".encode(), b"why " * 600, b"/clear images",
             b"/quit now", b"Hello"]
    stdin = io.TextIOWrapper(io.BytesIO(b"\n".join(lines) + b"\n"), encoding="utf-8", errors="surrogateescape")
    monkeypatch.setattr(sys, "stdin", stdin)  # as Python reads a terminal: undecodable bytes kept as surrogates
    result = medvl("chat", str(tiny_model_dir), "--max-new-tokens", "6")
    assert result.code == 0 and "Traceback" not in result.out + result.err, result.err
    out = result.out
    assert "medvl> not asked: the question is not UTF-8 text (byte 0xff at character 1)\n" in out
    overflow = re.search(r"medvl> not asked: the question and its images take \d+ tokens; .*\n", out)
    assert overflow and overflow.group().endswith(
        "(1 attached image(s) stay attached for the next question; /clear drops them)\n"), out
    assert "/clear takes no arguments (try /help)" in out and "/quit takes no arguments (try /help)" in out
    image = Image.open(two_images[0]).convert("RGB")
    answers = [line.split("medvl> ", 1)[1] for line in out.splitlines() if "medvl> " in line]
    assert answers[-1] == _generate(generator, [user_turn("Hello", 1)], [image], 6)  # not cleared: image attached
    assert out.endswith("you> \nbye\n")


def test_a_stopped_answer_drops_nothing_from_the_history(generator):
    """The exchanges dropped to fit a question are gone only once its answer is complete: the REPL's
    "(dropped N oldest exchange(s))" counted, after an answer stopped with Ctrl-C, exchanges still kept."""
    session = ChatSession(generator, GenerationSettings(max_new_tokens=400))
    session.messages = [user_turn("first", 0), {"role": "assistant", "content": "lorem ipsum " * 60}]
    kept = list(session.messages)
    answer = session.stream("second")
    next(answer)
    answer.close()  # as Ctrl-C while answering
    assert (session.dropped, session.messages) == (0, kept)
    "".join(session.stream("second"))
    assert session.dropped == 1 and session.messages[0] == user_turn("second", 0)
