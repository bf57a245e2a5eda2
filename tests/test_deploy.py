"""deploy/: the files parse and name the project's real entry points, versions and recipe keys.
(No Docker engine or Kubernetes here: the image build itself is not tested.)"""
from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

import pytest
import ray
import yaml

from pipeline.cli import build_parser
from pipeline.config import recipe_from_dict

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_dockerfile_installs_like_the_makefile():
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^FROM ", text, re.M)
    assert re.search(r"^ARG VARIANT=cpu$", text, re.M)
    assert "cpu)" in text and "cuda)" in text
    torch_spec = re.search(r"^TORCH_SPEC \?= (.+)$", (ROOT / "Makefile").read_text(), re.M).group(1).strip()
    assert f'ARG TORCH_SPEC="{torch_spec}"' in text
    # torch pair first, then the project (never the other way round)
    assert text.index("${TORCH_SPEC}") < text.index("pip install .")
    # every package the wheel ships is copied into the image
    for pattern in _pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]:
        pkg = pattern.rstrip("*")
        assert re.search(rf"^COPY {pkg} ", text, re.M), f"Dockerfile does not copy {pkg}/"
        assert (ROOT / pkg).is_dir()
    assert "pipeline.cli" in text and '"mmcurate"' in text
    assert _pyproject()["project"]["scripts"]["mmcurate"] == "pipeline.cli:main"


def _raycluster() -> tuple[dict, dict]:
    docs = [d for d in yaml.safe_load_all((DEPLOY / "raycluster.yaml").read_text()) if d]
    by_kind = {d["kind"]: d for d in docs}
    return by_kind["RayCluster"], by_kind["PersistentVolumeClaim"]


def test_raycluster_manifest():
    rc, pvc = _raycluster()
    assert rc["apiVersion"] == "ray.io/v1"
    assert rc["spec"]["rayVersion"] == ray.__version__
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    groups = {g["groupName"]: g for g in rc["spec"]["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu"}
    gpu = groups["gpu"]
    c = gpu["template"]["spec"]["containers"][0]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == gpu["rayStartParams"]["num-gpus"] == "1"
    assert c["image"].endswith(":cuda") and groups["cpu"]["template"]["spec"]["containers"][0]["image"].endswith(":cpu")
    assert "nvidia.com/gpu" not in groups["cpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    pods = [rc["spec"]["headGroupSpec"]["template"], *[g["template"] for g in groups.values()]]
    for pod in pods:  # one shared file system for the column store, on every node
        mounts = {m["mountPath"]: m["name"] for m in pod["spec"]["containers"][0]["volumeMounts"]}
        vols = {v["name"]: v for v in pod["spec"]["volumes"]}
        assert vols[mounts["/shared"]]["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]


def test_ray_up_cluster_yaml():
    cfg = yaml.safe_load((DEPLOY / "cluster.yaml").read_text())
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types
    assert any(t["resources"].get("GPU", 0) >= 1 for t in types.values())
    assert any(t["resources"].get("CPU", 0) >= 1 and not t["resources"].get("GPU") for t in types.values())
    assert "-v /shared:/shared" in cfg["docker"]["run_options"]
    assert any("ray start --head" in c for c in cfg["head_start_ray_commands"])
    assert any("--address=$RAY_HEAD_IP:6379" in c for c in cfg["worker_start_ray_commands"])


def _readme() -> str:
    return (DEPLOY / "README.md").read_text()


def test_readme_recipe_uses_real_keys():
    blocks = re.findall(r"```yaml\n(.*?)```", _readme(), re.S)
    assert blocks
    for b in blocks:
        recipe = recipe_from_dict(yaml.safe_load(b), "deploy/README.md")
        assert recipe.executor == "ray"


def _commands(prefix: str) -> list[list[str]]:
    text = _readme().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if prefix in line and not line.startswith("|"):
            cmd = line[line.index(prefix):].strip("`")
            out.append(shlex.split(cmd)[1:])
    return out


@pytest.mark.parametrize("sub", ["run", "train"])
def test_readme_commands_parse_with_the_real_cli(sub):
    cmds = [c for c in _commands("mmcurate ") if c and c[0] == sub]
    assert cmds, f"deploy/README.md shows no `mmcurate {sub}` command"
    parser = build_parser()
    for argv in cmds:
        args = parser.parse_args(argv)
        assert args.ray_address == "auto"
        if sub == "train":
            assert args.use_gpu and args.num_workers


def test_readme_is_honest_about_storage_and_docker():
    text = " ".join(_readme().split())
    # Object stores are supported; the guide says how a shard commits there and warns off FUSE.
    assert "s3://" in text and "AWS_ENDPOINT_URL" in text and "marker" in text and "FUSE" in text
    assert "not** supported" not in text
    assert "No Docker engine" in text or "no Docker engine" in text
    assert "failed_shards.json" in text and "shard_error" in text
