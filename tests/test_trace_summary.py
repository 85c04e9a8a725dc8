"""scripts/trace_summary.py on a real profiler trace of a jitted forward and backward (CPU)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest


@pytest.fixture(scope="module")
def trace_summary(load_script):
    return load_script("trace_summary")


def test_kinds_of_kernel_names(trace_summary):
    assert trace_summary.kind_of("nvjet_sm90_tst_256x128_64x4_1x2_h_bz_coopA_NNT") == "gemm"
    assert trace_summary.kind_of("cudnn_generated_fort_native_sdpa_sm90_flash_bprop") == "attention"
    assert trace_summary.kind_of("MemcpyD2D") == "copy"
    assert trace_summary.kind_of("loop_dynamic_update_slice_fusion_5") == "scatter/update"
    assert trace_summary.kind_of("loop_add_multiply_fusion") == "fusion"
    assert trace_summary.phase_of({"args": {"name": "jit(step)/transpose(jvp())/dot_general"}}) == "backward"
    assert trace_summary.phase_of({"args": {"name": "jit(step)/jvp()/dot_general"}}) == "forward"


def test_summary_of_a_traced_gradient(trace_summary, tmp_path, capsys):
    w = jnp.ones((256, 256))
    grad = jax.jit(jax.grad(lambda w, x: jnp.tanh(x @ w).sum()))
    x = jnp.ones((64, 256))
    jax.block_until_ready(grad(w, x))  # compile outside the trace
    with jax.profiler.trace(str(tmp_path), create_perfetto_trace=True):
        jax.block_until_ready(grad(w, x))
    summary = trace_summary.summarize(tmp_path)
    assert summary["total_ms"] > 0
    assert summary["ops"], "no device op in the trace"
    assert abs(sum(row[2] for row in summary["kinds"]) - summary["total_ms"]) < 1e-6
    assert abs(sum(row[3] for row in summary["ops"]) - summary["total_ms"]) < 1e-6
    assert [row[3] for row in summary["ops"]] == sorted((row[3] for row in summary["ops"]), reverse=True)
    trace_summary.print_summary(summary, top=3)
    printed = capsys.readouterr().out
    assert "| phase | kind | ms |" in printed and printed.count("\n| ") >= 4
    with pytest.raises(FileNotFoundError):
        trace_summary.trace_file(tmp_path / "empty")
