import json

import pytest
import torch

from albef_helpers import tiny_overrides, toy_tokenizer, write_toy_shards
from models.albef.config import load_config
from models.albef.train import train


def _cfg(**extra):
    return load_config("tiny", tiny_overrides(**extra))


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    d = tmp_path_factory.mktemp("shards")
    write_toy_shards(d, 48, per_shard=16, corrupt=0)
    return d


def test_resume_gives_same_next_step_loss(shards, tmp_path):
    # Both runs share one tokenizer: WordPiece training may break merge ties differently.
    toy_tokenizer().save(tmp_path / "tok")
    cfg = _cfg(**{"train.save_every": 0, "text.tokenizer": str(tmp_path / "tok")})
    full = train(cfg, shards, tmp_path / "full", steps=5, progress=False)
    part = train(cfg, shards, tmp_path / "part", steps=5, stop_at=3, progress=False)
    assert part["step"] == 3
    assert part["losses"] == pytest.approx(full["losses"][:3], rel=1e-6)
    rest = train(cfg, shards, tmp_path / "part", steps=5, resume=True, progress=False)
    assert rest["step"] == 5
    assert rest["losses"] == pytest.approx(full["losses"][3:], rel=1e-5)


def test_checkpoint_loads_weights_only(shards, tmp_path):
    train(_cfg(), shards, tmp_path / "ck", steps=2, progress=False)
    for f in ("model.pt", "train_state.pt", "rng/rank0.pt"):
        torch.load(tmp_path / "ck" / f, weights_only=True)
    cfg = json.loads((tmp_path / "ck" / "config.json").read_text())
    assert cfg["text"]["vocab_size"] > 5
    assert (tmp_path / "ck" / "tokenizer").is_dir()


def test_bad_data_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no .tar shards"):
        train(_cfg(), tmp_path / "nothing", tmp_path / "out", steps=1, progress=False)


@pytest.mark.slow
def test_ray_two_workers_match_single_process(shards, tmp_path):
    ray = pytest.importorskip("ray")
    # 2 workers x 4 samples = the single process's batch of 8; dropout is 0 in tiny configs.
    toy_tokenizer().save(tmp_path / "tok")
    tok = {"text.tokenizer": str(tmp_path / "tok")}
    single = train(_cfg(**tok), shards, tmp_path / "single", steps=3, progress=False)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        multi = train(_cfg(**tok, **{"train.batch_size": 4}), shards, tmp_path / "multi", steps=3,
                      num_workers=2, progress=False)
    finally:
        ray.shutdown()
    assert multi["step"] == 3
    assert multi["losses"] == pytest.approx(single["losses"], rel=0.05)
    assert multi["last"]["itc"] == pytest.approx(single["last"]["itc"], rel=0.02)
