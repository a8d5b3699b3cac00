"""`llmlab.calc.roofline.ReadBandwidth`: the read bandwidth sampled through a run (issue 21's denominator):
best of the back-to-back reads within a probe, median over probes, max over thread counts."""
from __future__ import annotations

import pytest
import torch

from llmlab.calc.roofline import ReadBandwidth


def test_best_within_a_probe_median_over_probes_max_over_counts():
    # seconds per read of 1 GB, per probe (an untimed read first, then 3): 1 thread 10 GB/s, 2 threads
    # 20, 25, 30 GB/s over three probes, with one slow read (a lost time slice) in each probe
    seq = {1: [9.0, 0.1, 0.5, 0.1] * 3,
           2: [9.0, 1 / 20, 1.0, 1 / 20, 9.0, 1.0, 1 / 25, 1 / 25, 9.0, 1 / 30, 1 / 30, 1.0]}
    bw = ReadBandwidth(2, reads=3, nbytes=10 ** 9, read=lambda n: seq[n].pop(0))
    for _ in range(3):
        bw.probe()
    est = bw.estimate()
    assert est["bandwidth_probes"] == 3
    assert est["bandwidth_gb_s_1t"] == pytest.approx(10.0)
    assert est["bandwidth_gb_s_2t"] == pytest.approx(25.0)  # the median, not the max (30) nor the mean
    assert est["bandwidth_probes_gb_s_2t"] == pytest.approx([20.0, 30.0])
    assert est["bandwidth_gb_s"] == pytest.approx(25.0)
    assert not seq[1] and not seq[2]  # every read taken: 1 untimed + 3 per probe and count


def test_one_thread_run_and_no_probe():
    bw = ReadBandwidth(1, read=lambda n: 0.5, nbytes=10 ** 9)
    with pytest.raises(ValueError):
        bw.estimate()
    bw.probe()
    assert bw.counts == [1] and bw.estimate()["bandwidth_gb_s"] == pytest.approx(2.0)


def test_real_reads_are_a_plausible_bandwidth():
    bw = ReadBandwidth(torch.get_num_threads(), reads=2, nbytes=32 << 20)
    bw.probe()
    bw.probe()
    est = bw.estimate()
    assert 0.1 < est["bandwidth_gb_s"] < 10_000  # GB/s: a number, not seconds or bytes
    lo, hi = est["bandwidth_probes_gb_s_1t"]
    assert lo <= est["bandwidth_gb_s_1t"] <= hi
