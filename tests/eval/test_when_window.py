"""benchmarks/when_window.py's reading of answers: a time reader and an order reader come out as each."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "when_window.py"
_spec = importlib.util.spec_from_file_location("when_window", _PATH)
when_window = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(when_window)


def order_map(t):  # the defaults' window: grid time 0.5 + 2 (t - 2.0)
    return 0.5 + 2.0 * (np.asarray(t) - 2.0)


TIMES = [2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0, 5.5] * 3


def rows(answer):
    return [{"value": t, "prediction": f"at {answer(t)} seconds"} for t in TIMES]


def test_a_time_reader_is_right_with_slope_one():
    s = when_window.summarise(rows(lambda t: t), order_map)
    assert s["within_0.5"] == 1.0 and s["apart_within_0.5"] == 1.0
    assert s["slope"] == pytest.approx(1.0)
    assert s["error_early"] == pytest.approx(0.0) and s["error_late"] == pytest.approx(0.0)


def test_an_order_reader_errs_early_then_late_with_slope_two():
    s = when_window.summarise(rows(lambda t: float(order_map(t))), order_map)
    assert s["apart_within_0.5"] == 0.0  # where the readings differ by >= 1 s it is never right
    assert s["n_apart"] == 5 * 3  # t = 2.0, 2.5 (early) and 4.5, 5.0, 5.5 (late)
    assert s["slope"] == pytest.approx(2.0)
    assert s["error_early"] < -0.9 and s["error_late"] > 0.9


def test_answers_without_a_number_count_as_wrong():
    s = when_window.summarise([{"value": 3.0, "prediction": "it turns"}, {"value": 4.0, "prediction": "at 4 s"}], None)
    assert s["within_0.5"] == 0.5 and np.isnan(s["slope"])


def test_the_window_sampler_takes_consecutive_frames_and_refuses_short_clips():
    from types import SimpleNamespace

    sampler = when_window.ConsecutiveSampler(4, 8)
    assert sampler(SimpleNamespace(num_frames=16, path="a.mp4")).tolist() == list(range(4, 12))
    with pytest.raises(ValueError, match="a.mp4"):
        sampler(SimpleNamespace(num_frames=10, path="a.mp4"))


def test_the_jitter_sampler_draws_one_frame_per_segment_by_path_and_mirrors_it():
    from types import SimpleNamespace

    clip = SimpleNamespace(num_frames=16, path="a.mp4")
    pick = when_window.JitterSampler(8)(clip)
    assert ((pick // 2) == np.arange(8)).all()  # one frame of each two-frame segment
    assert (pick == when_window.JitterSampler(8)(clip)).all()  # the same clip, the same draw
    draws = [when_window.JitterSampler(8)(SimpleNamespace(num_frames=16, path=f"{k}.mp4")) for k in range(8)]
    assert len({tuple(d) for d in draws}) > 1  # other clips, other draws
    assert (when_window.JitterSampler(8, mirror=True)(clip) == pick ^ 1).all()  # the other frame of each segment
    with pytest.raises(ValueError, match="a.mp4"):
        when_window.JitterSampler(8)(SimpleNamespace(num_frames=5, path="a.mp4"))


def answered(value, said, frame_times, written):
    return {"value": value, "prediction": f"at {said} seconds", "frame_times": frame_times, "written": written}


def test_follows_is_one_for_a_reader_of_the_written_times_and_zero_for_an_order_reader():
    real = [0.0, 1.5, 2.0, 3.5, 4.0, 5.5, 6.0, 7.5]  # a jitter draw at 2 fps
    mirrored = [0.5, 1.0, 2.5, 3.0, 4.5, 5.0, 6.5, 7.0]
    events = [1.2, 2.0, 3.1, 3.9, 5.3, 5.8]
    first = [int(np.searchsorted(real, t)) for t in events]  # the frame where each event shows

    def run(reader, written):
        return [answered(t, reader(written, p), real, written) for t, p in zip(events, first, strict=True)]

    def time_reader(written, p):
        return written[p]

    def order_reader(written, p):
        return 0.5 + p

    for reader, want in ((time_reader, 1.0), (order_reader, 0.0)):
        assert when_window.follows(run(reader, real), run(reader, mirrored)) == pytest.approx(want)
