"""The speed benchmarks' scripts on CPU: the tower benchmark's smoke run, its kernel categories and targets, and the
layers the propagation benchmark times (the model's own, against transformers' SigLIP layers)."""

import importlib.util
import json
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, _cur_sdpa_kernel_backends

from tests.test_training_utils import single_thread

pytestmark = pytest.mark.usefixtures(single_thread.__name__)
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_script(name: str):
    """Import ``benchmarks/<name>.py`` as a module; yields it, then forgets it and the path it added."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve their annotations through the module
    path = list(sys.path)
    spec.loader.exec_module(module)
    yield module
    del sys.modules[name]
    sys.path[:] = path


@pytest.fixture(scope="module")
def bench():
    yield from load_script("bench_tower")


@pytest.fixture(scope="module")
def bench_propagation():
    yield from load_script("bench_propagation")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("void propagate_fwd_prefetch_kernel<__nv_bfloat16, 8, 1>(cgspn::PropagateParams)", "propagation"),
        ("_propagate_bwd_kernel", "propagation"),
        ("void merge_directions_kernel<float>(float const*, float*, long)", "propagation"),
        ("void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<128, 128, 64, 4>>", "attention"),
        ("aten::_native_multi_head_attention", "attention"),
        ("nvjet_tst_192x192_64x4_2x1_v_bz_coopB_TNT", "matmul"),
        ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64", "matmul"),
        ("aten::addmm", "matmul"),
        ("void at::native::(anonymous namespace)::vectorized_layer_norm_kernel<c10::BFloat16>", "norm"),
        ("void at::native::vectorized_elementwise_kernel<4, at::native::GeluCUDAKernelImpl>", "elementwise/copy"),
        ("aten::convolution", "conv"),
        ("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_3_64x64x128_4x1x1_cga1x1x1", "attention"),
        ("void cutlass__5x_cudnn::Kernel<cutlass_tensorop_bf16_s16816fprop_optimized_bf16_64x64_64x5_nhwc>", "conv"),
        ("void cudnn::engines_precompiled::nchwToNhwcKernel<__nv_bfloat16>", "conv"),
        ("cudaLaunchKernel", "other"),
    ],
)
def test_kernel_categories(bench, name, expected):
    assert bench.category(name) == expected


def test_smoke_run(bench, tmp_path, capsys):
    out = tmp_path / "tower.json"
    bench.main(["--smoke", "--budget-s", "0", "--out", str(out)])
    result = json.loads(out.read_text())
    entry = result["resolutions"]["32"]
    assert (entry["batch"], entry["grid"]) == (2, 8)
    towers = entry["towers"]
    assert set(towers) == {"siglip", "siglip_contiguous", "hybrid", "all_propagation"}
    for name in ("hybrid", "all_propagation"):
        tower = towers[name]
        assert tower["inference_ms"] > 0 and tower["train_step_ms"] > 0
        assert tower["inference_ms_by_category"]["matmul"] > 0
        assert tower["train_step_ms_by_category"]["matmul"] > tower["inference_ms_by_category"]["matmul"]
        for baseline, suffix in (("siglip", ""), ("siglip_contiguous", "_vs_contiguous_siglip")):
            assert tower[f"inference_speedup{suffix}"] * tower["inference_ms"] == pytest.approx(
                towers[baseline]["inference_ms"]
            )
    siglip = towers["siglip"]
    assert towers["siglip_contiguous"]["parameters_m"] == siglip["parameters_m"]
    # the C-GSPN towers are smaller than SigLIP (propagation in 64 // 18 = 3 latent channels), the hybrid one keeps
    # one attention layer
    assert siglip["parameters_m"] > towers["hybrid"]["parameters_m"] > towers["all_propagation"]["parameters_m"]
    assert result["targets"] == []  # the targets name full-size resolutions only
    assert "siglip" in capsys.readouterr().out
    # torch's CPU sdpa operator in the hybrid layer (and the MAP heads)
    assert any("scaled_dot_product" in kernel for kernel in towers["hybrid"]["attention_kernels"])


def test_targets_report_met_and_missed(bench):
    measured = {
        "378": {"towers": {"hybrid": {"inference_speedup": 1.9, "train_step_speedup": 1.5}}},
        "2058": {
            "towers": {
                "siglip": {"inference_speedup": 1.0},
                "hybrid": {"inference_speedup": 4.0},
                "hybrid_cudnn": {"inference_speedup": 5.1},
                "all_propagation": {"inference_speedup": 5.5},
            }
        },
    }
    rows = {(row["tower"], row["measurement"], row["resolution"]): row for row in bench.check_targets(measured)}
    assert set(rows) == {
        ("hybrid", "inference", 378),
        ("hybrid", "train_step", 378),
        ("hybrid", "inference", 2058),
        ("hybrid_cudnn", "inference", 2058),
        ("all_propagation", "inference", 2058),
    }
    assert [rows[key]["met"] for key in sorted(rows)] == [False, True, False, False, True]
    assert rows[("hybrid", "inference", 2058)]["target"] == rows[("hybrid_cudnn", "inference", 2058)]["target"] == 5.0
    assert rows[("all_propagation", "inference", 2058)]["target"] == 6.0


def test_hybrid_cudnn_tower_runs_with_cudnn_first(bench, monkeypatch):
    """The hybrid_cudnn tower's attention runs with cuDNN first in sdpa's priority order (then torch's own order); the
    hybrid tower with torch's default, which the call leaves in place."""
    default = _cur_sdpa_kernel_backends(with_priority=True)
    seen = []

    def recording_sdpa(*args, **kwargs):
        seen.append(_cur_sdpa_kernel_backends(with_priority=True))
        return scaled_dot_product_attention(*args, **kwargs)

    scaled_dot_product_attention = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", recording_sdpa)
    towers = bench.build_towers(bench.TINY, 32, torch.device("cpu"), torch.float32, ("hybrid", "hybrid_cudnn"))
    pixel_values = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        towers["hybrid"](pixel_values)
        assert seen and all(order == default for order in seen)
        seen.clear()
        towers["hybrid_cudnn"](pixel_values)
    assert seen and all(order == [SDPBackend.CUDNN_ATTENTION, *bench.SDPA_ORDER[:-1]] for order in seen)
    assert _cur_sdpa_kernel_backends(with_priority=True) == default
    assert bench.SDPA_ORDER[-1] == SDPBackend.CUDNN_ATTENTION
    assert default[: len(bench.SDPA_ORDER)] == list(bench.SDPA_ORDER)  # torch's own order, as the bench assumes


def test_hybrid_cudnn_tower_is_eager_only(bench, tmp_path, capsys):
    with pytest.raises(SystemExit):
        bench.main(["--smoke", "--compile", "aot_eager", "--towers", "hybrid_cudnn", "--out", str(tmp_path / "t.json")])
    assert "hybrid_cudnn is eager only" in capsys.readouterr().err


def test_propagation_benchmark_times_the_model_layers(bench_propagation, monkeypatch):
    """The layers it times are CGSPNPropagation/CGSPNLayer and SiglipAttention/SiglipEncoderLayer, and each returns a
    (B, tokens, width) tensor through run_layer."""
    monkeypatch.setattr(bench_propagation, "DTYPE", torch.float32)
    monkeypatch.setattr(bench_propagation, "WIDTH", 32)
    monkeypatch.setattr(bench_propagation, "MLP_WIDTH", 48)
    monkeypatch.setattr(bench_propagation, "HEADS", 4)
    monkeypatch.setattr(bench_propagation, "PROPAGATION_CHANNELS", 4)
    layers = bench_propagation.model_layers("torch", device="cpu")
    assert {name: type(layer).__name__ for name, layer in layers.items()} == {
        "cgspn_sublayer": "CGSPNPropagation",
        "sdpa_sublayer": "SiglipAttention",
        "cgspn_block": "CGSPNLayer",
        "vit_block": "SiglipEncoderLayer",
    }
    assert layers["sdpa_sublayer"].config._attn_implementation == "sdpa"
    assert layers["cgspn_block"].mixer.propagation_backend == "torch"
    x = torch.randn(2, 5 * 5, 32)
    for name, layer in layers.items():
        assert bench_propagation.run_layer(name, layer, x, 5).shape == (2, 25, 32)


def test_contiguous_siglip_baseline_computes_the_same(bench):
    """The hooked SigLIP tower differs from the shipped one only in its residual stream's memory layout."""
    towers = bench.build_towers(bench.TINY, 32, torch.device("cpu"), torch.float32)
    pixel_values = torch.randn(2, 3, 32, 32)
    shipped = towers["siglip"].embeddings(pixel_values)
    hooked = towers["siglip_contiguous"].embeddings(pixel_values)
    assert not shipped.is_contiguous() and hooked.is_contiguous()
    with torch.no_grad():
        torch.testing.assert_close(
            towers["siglip_contiguous"](pixel_values).pooler_output, towers["siglip"](pixel_values).pooler_output
        )


def test_smoke_run_compiled(bench, tmp_path):
    """--compile runs the C-GSPN towers' layers under torch.compile and SigLIP both eager (issue 14's baseline) and
    compiled (aot_eager here: no C++ toolchain needed on CPU); three compiled towers stay within the raised
    recompile limit (a hit would raise)."""
    out = tmp_path / "tower.json"
    torch._dynamo.reset()
    bench.main(["--smoke", "--budget-s", "0", "--compile", "aot_eager", "--out", str(out)])
    torch._dynamo.reset()
    result = json.loads(out.read_text())
    assert result["torch_compile_backend"] == "aot_eager"
    towers = result["resolutions"]["32"]["towers"]
    assert set(towers) == {"siglip", "siglip_compiled", "hybrid", "all_propagation"}
    assert all(tower["inference_ms"] > 0 and tower["train_step_ms"] > 0 for tower in towers.values())
    hybrid = towers["hybrid"]
    assert hybrid["inference_speedup_vs_compiled_siglip"] * hybrid["inference_ms"] == pytest.approx(
        towers["siglip_compiled"]["inference_ms"]
    )


def compiled_layers(tower) -> list[bool]:
    layers = [module for module in tower.modules() if type(module).__name__.endswith("Layer")]
    return [layer._compiled_call_impl is not None for layer in layers]


def test_compiled_towers_are_the_model_classes_with_compiled_layers(bench):
    """Under --compile the C-GSPN tower and the second SigLIP baseline are the libraries' own classes with every
    encoder layer compiled (regional compilation); the first SigLIP baseline stays the eager model as shipped."""
    towers = bench.build_towers(bench.TINY, 32, torch.device("cpu"), torch.float32, ("hybrid",), "aot_eager")
    assert type(towers["siglip"]).__name__ == "SiglipVisionModel"
    assert type(towers["siglip_compiled"]).__name__ == "SiglipVisionModel"
    assert type(towers["hybrid"]).__name__ == "CGSPNVisionModel"
    assert towers["siglip_compiled"] is not towers["siglip"]
    assert compiled_layers(towers["siglip"]) == [False] * bench.TINY.num_hidden_layers
    for name in ("siglip_compiled", "hybrid"):
        assert compiled_layers(towers[name]) == [True] * bench.TINY.num_hidden_layers, name


def test_compiled_layers_never_fall_back_to_eager(bench, tmp_path, monkeypatch):
    """The compiled layers of all towers share one code object: --compile raises the recompile limit above what
    they need and turns a hit into an error (by default dynamo would silently run the remaining layers eager)."""
    limits = []
    monkeypatch.setattr(
        bench,
        "bench_resolution",
        lambda *args: (
            limits.append((torch._dynamo.config.recompile_limit, torch._dynamo.config.fail_on_recompile_limit_hit))
            or {"towers": {}}
        ),
    )
    bench.main(["--smoke", "--budget-s", "0", "--compile", "aot_eager", "--out", str(tmp_path / "tower.json")])
    bench.main(["--smoke", "--budget-s", "0", "--out", str(tmp_path / "eager.json")])
    assert limits == [(64, True), (8, False)]


def test_resolutions_must_be_measured_ones(bench, tmp_path, capsys):
    with pytest.raises(SystemExit):
        bench.main(["--smoke", "--resolutions", "64", "--out", str(tmp_path / "tower.json")])
    assert "--resolutions [64]: choose from [32]" in capsys.readouterr().err


@pytest.fixture(scope="module")
def timing():
    yield from load_script("timing")


def test_median_ms_repeats_within_bounds(timing):
    """Two warm-up calls, then at least min_reps and at most max_reps timed calls; the median of their times."""
    calls = []
    durations = iter([0, 0] + [0.001, 0.010, 0.004] + [0.0] * 100)

    def work() -> None:
        calls.append(1)
        time.sleep(next(durations))

    median = timing.median_ms(work, torch.device("cpu"), min_reps=3, budget_s=0.0)
    assert len(calls) == 5
    assert 4.0 <= median < 10.0
    calls.clear()
    timing.median_ms(lambda: calls.append(1), torch.device("cpu"), min_reps=1, budget_s=60.0, max_reps=7)
    assert len(calls) == 2 + 7
