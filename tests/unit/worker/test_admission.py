"""The sampling strides' two forms (`_speedups.Admission` and `PyAdmission`): the weights the
design asks for, the same ones in the same order whatever the strides do, and the same refusals."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modeltap.capture import compiled
from modeltap.worker.sampling import MAX_PAYLOAD_STRIDE, MAX_STRIDE, PyAdmission, Sampling, new_admission

FORMS = ["python", *(["compiled"] if compiled.AVAILABLE else [])]


def make(form: str, max_stride: int = MAX_STRIDE, max_payload_stride: int = MAX_PAYLOAD_STRIDE) -> Any:
    if form == "compiled":
        return compiled._speedups.Admission(max_stride, max_payload_stride)
    return PyAdmission(max_stride, max_payload_stride)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize(("stride", "payload_stride"), [(1, 1), (1, 4), (3, 1), (2, 5), (4, 4)])
def test_every_stride_th_exchange_is_captured_and_every_payload_stride_th_capture_keeps_its_payload(
    form: str, stride: int, payload_stride: int
) -> None:
    admission = make(form)
    admission.stride, admission.payload_stride = stride, payload_stride
    weights = [admission.admit() for _ in range(stride * payload_stride * 3)]
    expected = []
    captured = 0
    for index in range(1, len(weights) + 1):
        if index % stride:
            expected.append((0, 0))
            continue
        captured += 1
        expected.append((stride, stride * payload_stride) if captured % payload_stride == 0 else (stride, 0))
    assert weights == expected
    # Unbiased: the weights of the captured exchanges, and of the kept payloads, add up to all.
    assert sum(weight for weight, _ in weights) == len(weights)
    assert sum(payload for _, payload in weights) == len(weights)


_steps = st.lists(
    st.one_of(
        st.tuples(st.just("admit"), st.integers(1, 20)),
        # Mostly small strides, where the counters' phases show within a few exchanges.
        st.tuples(st.just("stride"), st.integers(-1, 9) | st.sampled_from([MAX_STRIDE, MAX_STRIDE + 1])),
        st.tuples(st.just("payload_stride"), st.integers(-1, 9) | st.sampled_from([256, 257])),
    ),
    max_size=40,
)


@pytest.mark.skipif(not compiled.AVAILABLE, reason="the extension is not built here")
@settings(max_examples=300, deadline=None)
@given(_steps)
def test_both_forms_give_the_same_weights_in_the_same_order(steps: list[tuple[str, int]]) -> None:
    forms = [make("python", MAX_STRIDE, 256), make("compiled", MAX_STRIDE, 256)]
    for action, value in steps:
        if action == "admit":
            python, native = ([form.admit() for _ in range(value)] for form in forms)
            assert python == native
            continue
        outcomes: list[type[ValueError] | None] = []
        for form in forms:
            try:
                setattr(form, action, value)
            except ValueError as error:
                outcomes.append(type(error))
            else:
                outcomes.append(None)
        assert outcomes[0] == outcomes[1]
        assert (outcomes[0] is None) == (1 <= value <= (MAX_STRIDE if action == "stride" else 256))
        assert [form.stride for form in forms] == [forms[0].stride] * 2
        assert [form.payload_stride for form in forms] == [forms[0].payload_stride] * 2


@pytest.mark.parametrize("form", FORMS)
def test_strides_are_ints_within_their_bounds(form: str) -> None:
    admission = make(form, 8, 16)
    assert (admission.stride, admission.payload_stride) == (1, 1)
    for field, bound in (("stride", 8), ("payload_stride", 16)):
        setattr(admission, field, bound)
        for wrong in (0, -1, bound + 1, 1 << 70):
            with pytest.raises(ValueError, match=f"{field} must be between 1 and {bound}"):
                setattr(admission, field, wrong)
        with pytest.raises(TypeError):
            setattr(admission, field, 2.0)
        assert getattr(admission, field) == bound  # a refused value leaves the stride as it was


@pytest.mark.parametrize("form", FORMS)
def test_the_largest_weight_fits_a_record(form: str) -> None:
    """A weight is stride x payload stride, written as a signed 32-bit field of the record."""
    for bounds in ((0, 4), (4, 0), (1 << 16, 1 << 15)):
        with pytest.raises(ValueError, match="below 2"):
            make(form, *bounds)
    assert make(form, MAX_STRIDE, MAX_PAYLOAD_STRIDE).admit() == (1, 1)


@pytest.mark.parametrize("form", FORMS)
def test_sampling_takes_the_form_the_capture_takes(form: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(compiled.PURE_PYTHON_ENV, "1" if form == "python" else "0")
    assert isinstance(new_admission(), PyAdmission) is (form == "python")
    sampling = Sampling(watermark=0.5)
    sampling.stride, sampling.payload_stride = 2, 2
    assert (sampling.admission.stride, sampling.admission.payload_stride) == (2, 2)
    assert [sampling.admit() for _ in range(4)] == [(0, 0), (2, 0), (0, 0), (2, 4)]
    sampling.follow_load(1.0)  # the hand-off is filling: capture half as many again
    assert sampling.stride == 4
