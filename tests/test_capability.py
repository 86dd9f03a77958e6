"""The capability model: arch spelling, and each constraint a record can state."""

import dataclasses

import pytest
import torch

from lowbit import dispatch
from lowbit.capability import (
    ANY_GROUP_SIZE,
    ArchRange,
    Call,
    Capability,
    normalize_arch,
)


@pytest.mark.parametrize("spelling", [90, (9, 0), "sm_90", "sm_90a", "SM90", "9.0", "compute_90"])
def test_cuda_arch_spellings_normalize_to_the_compute_capability(spelling):
    assert normalize_arch(spelling) == 90


def test_other_vendors_archs_are_names():
    assert normalize_arch("gfx942") == "gfx942"
    assert normalize_arch(None) is None
    for bad in (9.0, [9, 0], ("9", "0")):
        with pytest.raises(ValueError, match=r"lowbit: arch=.* is not an arch; pass e.g. arch=90"):
            normalize_arch(bad)


def test_arch_range_bounds_are_inclusive():
    assert 80 in ArchRange(80, 90) and 90 in ArchRange(80, 90)
    assert 79 not in ArchRange(80, 90) and 100 not in ArchRange(80, 90)
    assert 120 in ArchRange(100) and "gfx942" not in ArchRange(80)
    assert str(ArchRange(100)) == "sm_100+" and str(ArchRange(80, 90)) == "sm_80..sm_90"


RECORD = Capability(
    op="quantize_fp8_group_packed", backend="fast", devices=("cuda",), dtypes=(torch.bfloat16, torch.float16),
    fidelity="bit-exact to SPEC", graph_safe=True, compile_safe=True, archs={"cuda": ArchRange(89)},
    min_ndim=2, max_ndim=3, group_sizes=(128,), last_dim_contiguous=True, out_buffers=False,
)
GOOD = Call(op="quantize_fp8_group_packed", device_type="cuda", arch=90, dtype=torch.bfloat16, ndim=2, k=256,
            group_size=128)


def constraints(**changes):
    return [u.constraint for u in RECORD.unmet(dataclasses.replace(GOOD, **changes))]


def test_a_call_inside_every_bound_meets_the_record():
    assert RECORD.unmet(GOOD) == []


@pytest.mark.parametrize("changes, expected", [
    (dict(device_type="xpu"), "runs on cuda tensors, not xpu"),
    (dict(arch=80), "needs sm_89+, not sm_80"),
    (dict(arch=None), "needs sm_89+ and cannot tell this cuda device's arch"),
    (dict(dtype=torch.float32), "input dtype float32 is not one of bfloat16, float16"),
    (dict(ndim=1), "input has 1 dims; needs at least 2"),
    (dict(ndim=4), "input has 4 dims; takes at most 3"),
    (dict(group_size=64), "group_size 64 is not one of 128"),
    (dict(group_size=100), "group_size 100 does not divide the last dim 256"),
    (dict(group_size=0), "group_size 0 does not divide the last dim 256"),
    (dict(last_dim_contiguous=False), "needs stride 1 along the last dim"),
    (dict(out_given=True), "takes no out= buffers"),
])
def test_each_constraint_is_named_when_broken(changes, expected):
    assert constraints(**changes) == [expected]


def test_every_broken_constraint_is_listed_with_a_fix():
    found = RECORD.unmet(Call(op="quantize_fp8_group_packed", device_type="cuda", arch=80, dtype=torch.int32,
                              ndim=1, k=256, group_size=64))
    assert len(found) == 4
    assert all(u.fix for u in found)


def test_block_scale_rule_and_output_dtype_constraints():
    record = Capability(op="quantize_mxfp4", backend="r", devices=("cpu",), dtypes=(torch.float32,),
                        fidelity="x", graph_safe=False, compile_safe=True, block_size=32,
                        scale_rules=("rceil",), out_dtypes=(torch.bfloat16,))
    call = Call(op="quantize_mxfp4", device_type="cpu", arch=None, dtype=torch.float32, ndim=2, k=48,
                scale_rule="floor", out_dtype=torch.float16)
    assert [u.constraint for u in record.unmet(call)] == [
        "last dim 48 is not a multiple of the block size 32",
        "scale_rule 'floor' is not one of 'rceil'",
        "output dtype float16 is not one of bfloat16",
    ]


def test_any_device_records_take_other_devices_but_check_the_rest():
    record = Capability(op="quantize_fp8_group_packed", backend="r", devices=("cpu",), dtypes=(torch.float32,),
                        fidelity="x", graph_safe=False, compile_safe=True, any_device=True,
                        group_sizes=ANY_GROUP_SIZE, archs={"cpu": ArchRange(1)})
    call = Call(op="quantize_fp8_group_packed", device_type="cuda", arch=None, dtype=torch.float32, ndim=2,
                k=96, group_size=48)
    assert record.unmet(call) == []  # archs are checked only on native devices


def test_as_row_states_the_record_in_words():
    row = RECORD.as_row()
    assert row["arch"] == "cuda sm_89+" and row["sizes"] == "group 128" and row["ndim"] == "2..3"
    assert row["strides"] == "last dim contiguous" and row["graph-safe"] == "yes"


def test_a_record_prints_as_one_line():
    assert str(RECORD) == ("quantize_fp8_group_packed on fast: devices cuda; arch cuda sm_89+; dtypes bfloat16/float16; "
                           "ndim 2..3; sizes group 128; rules -; strides last dim contiguous; bit-exact to SPEC; "
                           "graph-safe yes; compile-safe yes; auto-dispatch yes")


def test_an_opt_in_record_says_when_auto_dispatch_uses_it():
    record = dataclasses.replace(RECORD, opt_in="LOWBIT_TEST_PROVIDER=fast", contiguous=True,
                                 fidelity="ties toward zero, not bit-exact to SPEC")
    row = record.as_row()
    assert row["auto"] == "only with LOWBIT_TEST_PROVIDER=fast" and RECORD.as_row()["auto"] == "yes"
    assert row["strides"] == "contiguous"  # the stricter of the two stride needs is the one stated
    assert str(record).endswith("; strides contiguous; ties toward zero, not bit-exact to SPEC; graph-safe yes; "
                                "compile-safe yes; auto-dispatch only with LOWBIT_TEST_PROVIDER=fast")


def test_a_contiguous_record_refuses_any_non_contiguous_input():
    record = dataclasses.replace(RECORD, contiguous=True, last_dim_contiguous=False)
    assert record.unmet(GOOD) == []
    for changes in (dict(contiguous=False), dict(last_dim_contiguous=False, contiguous=False)):
        [unmet] = record.unmet(dataclasses.replace(GOOD, **changes))
        assert (unmet.constraint, unmet.fix) == ("needs a contiguous input", "pass x.contiguous()")
    # a record without the need takes rows with gaps (RECORD needs only the last dim contiguous)
    assert RECORD.unmet(dataclasses.replace(GOOD, contiguous=False)) == []


def test_a_call_describes_an_input_that_is_not_contiguous():
    assert dataclasses.replace(GOOD, contiguous=False).describe() == (
        "bfloat16 input, ndim 2, last dim 256, group_size 128, input not contiguous, on cuda sm_90")
    # a strided last dim says that instead (it implies the rest)
    assert dataclasses.replace(GOOD, last_dim_contiguous=False, contiguous=False).describe() == (
        "bfloat16 input, ndim 2, last dim 256, group_size 128, last dim strided, on cuda sm_90")
    assert "contiguous" not in GOOD.describe() and "strided" not in GOOD.describe()


def test_call_for_reads_contiguity_from_the_tensor():
    rows_with_gaps = torch.empty(4, 128)[:, :64]  # stride 1 along the last dim, but rows 128 apart
    call = dispatch.call_for("quantize_mxfp4", rows_with_gaps)
    assert (call.last_dim_contiguous, call.contiguous) == (True, False)
    assert "input not contiguous" in call.describe()
    call = dispatch.call_for("quantize_mxfp4", torch.empty(64, 4).t())
    assert (call.last_dim_contiguous, call.contiguous) == (False, False)
    assert dispatch.call_for("quantize_mxfp4", torch.empty(4, 64)).contiguous
