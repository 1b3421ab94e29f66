"""The shared failure kinds: every stage's per-record failure is a `Rejection` with reason and detail."""

from __future__ import annotations

import pytest

from medvl.errors import Rejection
from medvl.io.images import ImageLoadError, load_image
from medvl.train.encode import EncodeError
from medvl.train.validate import Rejected


def test_stage_rejections_share_reason_and_detail_and_keep_their_messages(tmp_path):
    with pytest.raises(Rejection) as image:
        load_image(tmp_path / "absent.png")
    assert isinstance(image.value, ImageLoadError) and image.value.reason == "missing"
    assert str(image.value) == f"{tmp_path / 'absent.png'}: missing: no such file"
    encode = EncodeError("too_long", "9 tokens > max_length 8")
    assert (encode.reason, encode.detail, str(encode)) == ("too_long", "9 tokens > max_length 8",
                                                          "too_long: 9 tokens > max_length 8")
    rejected = Rejected("tokens", "too_long", "9 > 8")
    assert isinstance(rejected, Rejection) and (rejected.stage, rejected.reason, rejected.detail) == (
        "tokens", "too_long", "9 > 8")
    assert str(rejected) == "tokens/too_long: 9 > 8"
    assert str(Rejection("empty_answer")) == "empty_answer"
