"""The README's HNN table is generated from the committed multi-seed results file, and matches it."""

from pathlib import Path

import pytest

from innergrad.core.errors import InnergradError
from innergrad.experiments import results
from innergrad.experiments.seeds import parse_seeds, summarise

ROOT = Path(__file__).resolve().parents[1]


def test_readme_table_matches_the_committed_results_file():
    res = results.collect([ROOT / "results" / "hnn.json"])
    assert set(res["tasks"]) == {"spring", "pendulum", "two-body"}
    for task in [*res["tasks"].values(), *res["measured"].values()]:
        assert len(task["seeds"]) >= 5
    assert "examples/data/pendulum_lab.csv" in res["measured"]
    block = results.readme_block((ROOT / "README.md").read_text())
    assert block is not None, "README.md lacks the generated HNN table"
    assert block == results.table(res), ("README's HNN table is stale: run `innergrad experiment table "
                                         "results/hnn.json --readme README.md`")


def test_seed_specs_and_statistics():
    assert parse_seeds("0-4") == [0, 1, 2, 3, 4]
    assert parse_seeds("0-1,5,7-8") == [0, 1, 5, 7, 8]
    for bad in ("a", "3-1", "1,1", "-2", ""):
        with pytest.raises(InnergradError):
            parse_seeds(bad)
    st = summarise([3.0, 1.0, 2.0, 10.0])
    assert (st["median"], st["min"], st["max"], st["mean"]) == (2.5, 1.0, 10.0, 4.0)
    assert st["std"] == pytest.approx(4.0824829, rel=1e-6)  # sample std
    assert summarise([1.0, float("inf")])["diverged"] == 1


def test_table_and_readme_update(tmp_path):
    def stats(v):
        return {k: summarise([v, 2 * v, 3 * v]) for k in ("train", "test", "energy_paper", "energy")}

    res = {"tasks": {"spring": {"seeds": [0, 1, 2], "stats": {"baseline": stats(1e-2), "hnn": stats(1e-4)}}}}
    text = results.table(res)
    assert "| Ideal mass-spring | Hamiltonian NN | 3 | 2.00e-04 [1.00e-04, 3.00e-04]" in text
    assert "HNN lower in 3/3 seeds" in text
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\nbefore\n{results.START}\nold\n{results.END}\nafter\n")
    assert results.update_readme(readme, res)
    assert results.readme_block(readme.read_text()) == text and "after" in readme.read_text()
    assert not results.update_readme(readme, res)
    (tmp_path / "plain.md").write_text("no markers")
    with pytest.raises(InnergradError, match="marker"):
        results.update_readme(tmp_path / "plain.md", res)


@pytest.mark.parametrize("block", ["lnn", "dhnn"])
def test_readme_physics_blocks_match_their_committed_results_files(block):
    res = results.collect([ROOT / "results" / f"{block}.json"])
    assert res["block"] == block and res["runs"]
    for run in res["runs"].values():
        assert len(run["seeds"]) >= 5
    got = results.readme_block((ROOT / "README.md").read_text(), block)
    assert got is not None, f"README.md lacks the generated {block} block"
    assert got == results.table(res), (f"README's {block} block is stale: run `innergrad experiment table "
                                       f"results/{block}.json --readme README.md`")


def test_physics_blocks_state_their_targets_seed_by_seed():
    def st(vals):
        return summarise(vals)

    runs = {"double-pendulum": {"seeds": [0, 1, 2, 3, 4], "command": "innergrad experiment lnn --task double-pendulum "
                                "--steps 5 --seed 0", "stats": {
        "baseline": {"energy_mse_mean": st([1, 1, 1, 1, 1]), "rollout_mse_mean": st([1] * 5), "test": st([1] * 5)},
        "lnn": {"energy_mse_mean": st([2, 0.5, 2, 0.5, 2]), "rollout_mse_mean": st([1] * 5), "test": st([1] * 5)}}}}
    text = results.table({"block": "lnn", "runs": runs})
    assert "2 of 5 seeds (target: at least 4 of 5)" in text and "**not reached**: short by 2 seed(s)" in text
    runs["double-pendulum"]["stats"]["lnn"]["energy_mse_mean"] = st([0.5, 0.5, 0.5, 2, 0.5])
    assert "4 of 5 seeds (target: at least 4 of 5) — **reached**" in results.table({"block": "lnn", "runs": runs})
