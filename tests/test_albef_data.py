import torch

from albef_helpers import write_toy_shards
from models.albef.data import EpochSampler, ShardDataset, collate, gpu_augment, pick_caption


def test_dataset_reads_exported_and_plain_shards(tmp_path):
    truth = write_toy_shards(tmp_path / "a", 10, per_shard=4)
    write_toy_shards(tmp_path / "b", 6, per_shard=4, with_captions_list=False, seed=1)
    ds = ShardDataset(tmp_path, load_size=40)
    assert len(ds) == 16
    item = ds[0]
    assert item["image"].shape == (3, 40, 40) and item["image"].dtype == torch.uint8
    color, pos = truth[0]
    assert color in item["caption"] or pos in item["caption"] or "方块" in item["caption"]


def test_caption_choice_draws_among_kept_captions():
    import random
    meta = {"caption": "web", "captions": [{"text": "web", "origin": "web"},
                                           {"text": "syn", "origin": "synthetic"}]}
    seen = {pick_caption("web", meta, random.Random(i)) for i in range(30)}
    assert seen == {"web", "syn"}
    assert pick_caption("txt only", None, random.Random(0)) == "txt only"
    assert pick_caption("", {"caption": ""}, random.Random(0)) is None


def test_bad_image_becomes_counted_error(tmp_path):
    write_toy_shards(tmp_path, 4, corrupt=1)
    ds = ShardDataset(tmp_path, load_size=40)
    batch = collate([ds[i] for i in range(4)])
    assert len(batch["captions"]) == 3 and len(batch["errors"]) == 1
    assert "00000000" in batch["errors"][0] and "does not decode" in batch["errors"][0]


def test_sampler_splits_global_batches_across_ranks():
    single = list(EpochSampler(40, 8, seed=3))
    r0 = list(EpochSampler(40, 4, rank=0, world=2, seed=3))
    r1 = list(EpochSampler(40, 4, rank=1, world=2, seed=3))
    assert len(single) == len(r0) == 5
    for s, a, b in zip(single, r0, r1):
        assert s == a + b
    resumed = EpochSampler(40, 8, seed=3)
    resumed.set_epoch(0, start_batch=2)
    assert list(resumed) == single[2:]


def test_gpu_augment_crops_match_across_worker_split():
    imgs = torch.randint(0, 255, (8, 3, 40, 40), dtype=torch.uint8)
    full = gpu_augment(imgs, 32, generator=torch.Generator().manual_seed(5))
    half = gpu_augment(imgs[4:], 32, generator=torch.Generator().manual_seed(5), offset=4, total=8)
    assert full.shape == (8, 3, 32, 32)
    assert torch.allclose(full[4:], half)
    # no flip: an image whose left half is bright stays bright on the left after cropping
    img = torch.zeros(1, 3, 40, 40, dtype=torch.uint8)
    img[..., :20] = 255
    out = gpu_augment(img.repeat(16, 1, 1, 1), 32, scale=(0.9, 1.0))
    assert (out[..., :, :8].mean((1, 2, 3)) > out[..., :, -8:].mean((1, 2, 3))).all()
