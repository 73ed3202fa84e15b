"""Smoke test of the benchmark: a tiny configuration where every way must agree (no timings asserted)."""

import argparse
import json

import pytest

from innergrad.bench import harness as bench
from innergrad.cli import bench as bench_cli
from innergrad.cli import build_parser, main


def test_every_way_agrees_on_a_tiny_configuration():
    cfg = bench.Config(T=3, B=4, width=8, reps=1, warmup=0)
    results = bench.run_config(cfg, bench.available_ways("cpu"))
    ran = {r.way: r for r in results if r.skipped is None}
    for must in ("naive", "torch_func", "autograd", "func", "closed_form", "fused", "compiled", "compiled_user_step"):
        assert must in ran, f"{must} did not run: {[r.skipped for r in results if r.way == must]}"
    floor = ran.pop("matmul_floor")  # the step's products alone: timed, nothing to agree on
    assert floor.ms > 0 and floor.agrees is None and "GFLOP" in floor.note
    for r in ran.values():
        assert r.agrees, f"{r.way} disagrees with the naive loop by {r.max_rel_diff:.2e}"
        assert r.ms > 0 and len(r.ms_all) == 1
    table = bench.format_table(results)
    assert table.count("\n") >= len(results) + 1 and "**NO**" not in table


def test_cli_subcommand_writes_json(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="innergrad")
    sub = parser.add_subparsers(dest="command")
    bench_cli.add_parser(sub)
    out = tmp_path / "bench.json"
    args = parser.parse_args(["bench", "--device", "cpu", "--T", "2,3", "--B", "3", "--width", "8",
                              "--reps", "1", "--warmup", "0", "--ways", "naive,fused", "--json", str(out)])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "| fused |" in printed and "ms/step vs T" in printed
    data = json.loads(out.read_text())
    assert {r["way"] for r in data["results"]} == {"naive", "fused"}
    assert all(r["agrees"] for r in data["results"])


def test_unknown_way_is_an_error(capsys):
    assert main(["bench", "--ways", "naive,nope"]) == 2
    assert "unknown way" in capsys.readouterr().err


def test_sweep_grid_is_the_issue_grid():
    cfgs = bench_cli.configs_from_args(build_parser().parse_args(["bench", "--sweep"]))
    assert {c.T for c in cfgs} == {64, 256} and {c.B for c in cfgs} == {32, 256, 4096}
    assert {c.width for c in cfgs} == {64, 128, 512} and len(cfgs) == 18


@pytest.mark.parametrize("dtype", ["float64"])
def test_float64_agreement_is_tight(dtype):
    cfg = bench.Config(T=3, B=2, width=6, reps=1, warmup=0, dtype=dtype, memory=False)
    res = bench.run_config(cfg, ["naive", "fused", "closed_form"])
    assert all(r.max_rel_diff < 1e-10 for r in res)


def test_cpu_memory_counts_the_fused_ops_reused_buffers():
    """The fused op reuses its saved-activation buffers between steps; the memory column must still count them."""
    cfg = bench.Config(T=16, B=128, width=128, reps=2, warmup=1)  # saved: 3 arrays of 1 MiB
    for _ in range(2):  # the second run finds the workspace filled by the first
        (res,) = bench.run_config(cfg, ["fused"])
        assert res.skipped is None
        assert res.peak_mib is not None and res.peak_mib >= 3.0, res.peak_mib


@pytest.mark.parametrize("model", sorted(bench.single_call.MODELS))
def test_single_call_models_every_way_agrees(model):
    """`--model hnn|field|dhnn|lnn` on the same harness: the user-written ways and every innergrad way
    agree (the innergrad ways of a model not in this version are n/a with the reason)."""
    cfg = bench.Config(model=model, dim=4, B=6, width=8, reps=1, warmup=0, memory=False, dtype="float64")
    ways = ["naive", "torch_func", "autograd", "closed_form", "auto", "fused", "fused_loop", "matmul_floor"]
    results = {r.way: r for r in bench.run_config(cfg, ways)}
    floor = results.pop("matmul_floor")
    assert (floor.ms > 0) if model != "lnn" else "Hessian" in floor.skipped
    assert results["naive"].skipped is None and results["torch_func"].skipped is None
    missing = {"dhnn": "DissipativeHNN", "lnn": "LagrangianNet"}.get(model)
    import innergrad as ig

    for way, r in results.items():
        if r.skipped is not None:
            no_hessians = model == "lnn" and "computes no Hessians" in r.skipped and way.startswith("fused")
            assert no_hessians or (missing and not hasattr(ig, missing) and missing in r.skipped), (way, r.skipped)
            continue
        assert r.agrees and r.max_rel_diff < 1e-9, (way, r.max_rel_diff)


def test_single_call_cli_exits_non_zero_when_a_way_disagrees(monkeypatch, capsys):
    def broken(pb, cfg):
        step, m = bench.single_call.way_naive(pb, cfg)

        def off():
            loss, grads = step()
            return loss, [g * 1.01 for g in grads]

        return off, m

    monkeypatch.setitem(bench.single_call.WAY_FUNCS, "broken", broken)
    args = ["bench", "--model", "hnn", "--B", "8", "--width", "8", "--reps", "1", "--warmup", "0", "--no-memory"]
    assert main([*args, "--ways", "naive,fused"]) == 0
    assert main([*args, "--ways", "naive,broken"]) == 1
    out = capsys.readouterr().out
    assert "hnn, dim=2, B=8" in out and "**NO**" in out
