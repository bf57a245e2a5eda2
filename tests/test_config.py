import pytest

from pipeline.config import RecipeError, load_recipe, recipe_from_dict

GOOD = {"input": {"path": "urls.parquet"}, "workdir": "run"}


def test_defaults_fill_in():
    r = recipe_from_dict(GOOD)
    assert r.stages[0] == "download" and r.select.min_short_side == 200 and r.select.max_aspect_ratio == 3.0


@pytest.mark.parametrize("data, needle", [
    ({**GOOD, "shard_sise": 10}, "shard_sise: unknown key"),
    ({**GOOD, "select": {"min_short_side": -5}}, "select.min_short_side"),
    ({**GOOD, "select": {"max_aspect": 2}}, "select.max_aspect: unknown key"),
    ({"workdir": "run"}, "input: required key is missing"),
    ({**GOOD, "stages": ["download", "exprot"]}, "unknown stage"),
    ({**GOOD, "stages": ["download", "export", "select"]}, "pipeline order"),
    ({**GOOD, "stages": ["annotate"]}, "first stage must be 'download'"),
    ({**GOOD, "executor": "spark"}, "executor"),
    ({**GOOD, "download": {"timeout": "soon"}}, "download.timeout"),
])
def test_bad_recipes_name_the_key(data, needle):
    with pytest.raises(RecipeError) as e:
        recipe_from_dict(data)
    assert needle in str(e.value)


def test_bad_files(tmp_path):
    with pytest.raises(RecipeError, match="not found"):
        load_recipe(tmp_path / "missing.yaml")
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(RecipeError, match="is empty"):
        load_recipe(empty)
    broken = tmp_path / "broken.yaml"
    broken.write_text("input: [unclosed\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(broken)
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(RecipeError, match="expected a mapping"):
        load_recipe(listy)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("workdir: caf\xe9\n".encode("latin-1"))
    with pytest.raises(RecipeError, match="not UTF-8"):
        load_recipe(latin)


def test_relative_paths_resolve_against_recipe(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text("input: {path: data/urls.parquet}\nworkdir: out\n")
    r = load_recipe(f)
    assert r.input.path == str(tmp_path / "data/urls.parquet") and r.workdir == str(tmp_path / "out")
